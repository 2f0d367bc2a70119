/*
 * outboxbench's PostgreSQL chores on one admin connection: the bench
 * schema's life (dropped at the end), truncation between runs, server-side
 * preloading, pending counts and the table's user triggers. Each failing
 * call prints one line naming the statement and the server's reason.
 */
#ifndef BENCH_DB_H
#define BENCH_DB_H

#include <libpq-fe.h>

#define BENCH_TABLE "outbox"

/* Connect; NULL with an error naming what when it fails. */
PGconn *db_connect(const char *conninfo, const char *what);

/* Run sql (no parameters); 0 or -1. */
int db_exec(PGconn *c, const char *sql);
/* First column of the first row as an integer; 0 or -1. */
int db_scalar(PGconn *c, const char *sql, long long *out);

/* "schema"."outbox" and the schema alone, quoted; caller frees. */
char *db_qtable(PGconn *c, const char *schema);
char *db_qident(PGconn *c, const char *name);

/* Insert n messages server side (INSERT ... SELECT generate_series, in
 * chunks), so each row passes the table's CHECK validation like any other.
 * Body: the decimal index from first, a space, 'x' padding to body_size
 * bytes; headers bench-h1..hN. Then ANALYZE, as autovacuum would have. */
int db_preload(PGconn *c, const char *qtable, const char *topic, long long first, long long n,
               long body_size, long headers);

/* Add n DELIVERED rows (state 1, processed_on now()), generated server side
 * like db_preload() in chunks of DB_DELIVERED_CHUNK, a progress line per
 * chunk. The table's user triggers are disabled for the load: they only
 * validate what a producer inserts and would double a 10M-row load, and no
 * relay ever reads these rows' topic or headers. No ANALYZE: the caller
 * runs VACUUM ANALYZE once the table is complete. 0 or -1. */
#define DB_DELIVERED_CHUNK 250000
int db_preload_delivered(PGconn *c, const char *qtable, const char *topic, long long n,
                         long body_size, long headers);

/* pg_total_relation_size of the table (heap, indexes, TOAST). */
int db_table_bytes(PGconn *c, const char *qtable, long long *out);

/* Empty the table between measurements: DELETE, then VACUUM without
 * truncation, not TRUNCATE. TRUNCATE gives the table new files and the
 * next checkpoint unlinks the old ones; the file system's work on those
 * (ext4 online discard) then stalled commits' fsyncs: in trials on this
 * project's CI VM, 300-2300 commits/s after TRUNCATE + CHECKPOINT against a
 * steady 2700-2900 after DELETE + VACUUM + CHECKPOINT. 0 or -1. */
int db_empty(PGconn *c, const char *qtable);

/* CHECKPOINT, so the next measurement starts with no dirty pages of the
 * previous one. Needs superuser or pg_checkpoint: without, says so once
 * and carries on (returns 0 either way). */
int db_checkpoint(PGconn *c);

/* Pending rows (state 0). */
int db_pending(PGconn *c, const char *qtable, long long *out);

/* Number of user (non-internal) triggers on the table. */
int db_user_triggers(PGconn *c, const char *qtable, long long *out);

/* The headers object bench-h1: value-1, ... as JSON text. */
void db_headers_json(long headers, char *out, size_t len);

#endif
