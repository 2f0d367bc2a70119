/*
 * Private helpers shared by the libpq files (store_pg.c, migrate_pg.c,
 * enqueue_pg.c): names, connection, error classification, migration SQL.
 * Only these files include <libpq-fe.h>. Nothing here ever prints a
 * conninfo string, so no password reaches a log line.
 */
#ifndef OUTBOX_PG_UTIL_H
#define OUTBOX_PG_UTIL_H

#include <stddef.h>

#include <libpq-fe.h>

#include "outbox/store.h"

#define OUTBOX_PG_DEFAULT_SCHEMA "public"
#define OUTBOX_PG_DEFAULT_TABLE "outbox"

/* Longest names accepted: PostgreSQL truncates identifiers at 63 bytes, and
 * "<table>_migrations" (the longest derived name) must stay below that. */
#define OUTBOX_PG_SCHEMA_MAX 63
#define OUTBOX_PG_TABLE_MAX 52

/* Quoted, schema-qualified names of one outbox table and its companions. */
typedef struct outbox_pg_names {
    const char *schema, *table; /* raw, borrowed (defaults applied) */
    char *qschema;              /* "schema" */
    char *qtable;               /* "schema"."table" */
    char *qmigrations;          /* "schema"."table_migrations" */
} outbox_pg_names_t;

/* Check and quote schema/table (NULL = defaults). OUTBOX_ERR_CONFIG with a
 * reason in err for an empty or over-long name, OUTBOX_ERR_NOMEM. */
int outbox_pg_names_init(outbox_pg_names_t *n, const char *schema, const char *table, char *err,
                         size_t errlen);
void outbox_pg_names_free(outbox_pg_names_t *n);

/* "schema"."table<suffix>" (schema NULL: just "table<suffix>"); NULL on
 * NOMEM; caller frees. */
char *outbox_pg_qualify(const char *schema, const char *table, const char *suffix);

/* Connect with conninfo (libpq conninfo or URI, expanded) plus relay
 * defaults the user did not set: connect_timeout=10, keepalives,
 * application_name=outboxd (fallback), client_encoding=UTF8. On failure
 * returns OUTBOX_ERR_CONFIG (unparsable conninfo) or OUTBOX_ERR_UNREACHABLE
 * and writes libpq's reason to err; *out stays NULL. */
int outbox_pg_connect(PGconn **out, const char *conninfo, char *err, size_t errlen);
/* As outbox_pg_connect, with application_name (unless conninfo sets its
 * own): how the keeper finds the sessions of a relay that died. */
int outbox_pg_connect_as(PGconn **out, const char *conninfo, const char *application_name,
                         char *err, size_t errlen);

/* Status for a failed result: from the SQLSTATE, or UNREACHABLE when the
 * connection is gone. res may be NULL (out of memory or lost connection). */
int outbox_pg_status(PGconn *conn, const PGresult *res);

/* One line "what: <server message> (SQLSTATE)" into err. */
void outbox_pg_error(char *err, size_t errlen, const char *what, PGconn *conn, const PGresult *res);

/* The wake-up channel of schema.table: "outbox_" + 16 hex digits of a
 * hash, short and safe as a NOTIFY channel whatever the names. */
#define OUTBOX_PG_CHANNEL_LEN 23
void outbox_pg_channel(const char *schema, const char *table, char out[OUTBOX_PG_CHANNEL_LEN + 1]);

/* outbox_pg_migration_sql() is declared in outbox/store.h (migrate_pg.c). */

#endif
