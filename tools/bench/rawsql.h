/*
 * The relay's claim and mark-delivered statements, copied in shape from
 * src/store_pg.c (S_CLAIM, S_DELIVERED), on a connection of our own: the
 * SQL ceiling of one relay with none of its logic around it. Results are
 * read in binary, as the relay reads them.
 */
#ifndef BENCH_RAWSQL_H
#define BENCH_RAWSQL_H

#include <libpq-fe.h>

/* Column positions of a claim result (the relay's COLS). */
enum { RAW_C_ID, RAW_C_SEQ, RAW_C_TOPIC, RAW_C_KEY, RAW_C_HEADERS, RAW_C_BODY, RAW_C_NCOLS = 14 };

/* Prepare both statements for qtable; 0 or -1. */
int rawsql_prepare(PGconn *c, const char *qtable);
/* Claim up to limit rows for lock_id; *out is the result (rows may be 0),
 * caller PQclear()s it. 0 or -1. */
int rawsql_claim(PGconn *c, const char *lock_id, long limit, PGresult **out);
/* Mark every row of a claim result delivered; 0 or -1 (also when fewer
 * rows changed than were claimed). */
int rawsql_mark(PGconn *c, const PGresult *claimed);
/* The textual uuid of row i of a claim result (binary id). */
void rawsql_id(const PGresult *claimed, int i, char out[37]);

#endif
