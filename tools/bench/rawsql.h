/*
 * The relay's own claim and mark-delivered, through liboutbox's PostgreSQL
 * Store (the very statements and round trips of src/store_pg.c), with none
 * of the dispatcher's logic around them: the SQL ceiling of one relay.
 */
#ifndef BENCH_RAWSQL_H
#define BENCH_RAWSQL_H

#include <stdbool.h>

#include "outbox/store.h"

typedef struct rawsql rawsql_t;

/* A store on schema.outbox; delete_delivered as the relay's retention 0.
 * 0 or -1 (error printed). */
int rawsql_open(rawsql_t **out, const char *conninfo, const char *schema, bool delete_delivered);
void rawsql_close(rawsql_t *r); /* NULL ok */
/* Claim up to limit records; *batch is valid until the next call. 0 or -1. */
int rawsql_claim(rawsql_t *r, long limit, const outbox_batch_t **batch);
/* Mark every record of the last claim delivered (commits the claim). 0 or -1. */
int rawsql_mark(rawsql_t *r);

#endif
