/*
 * Admin-connection helpers. Preloading generates rows in the server (no
 * per-row round trip) yet goes through the same CHECK constraint as every
 * enqueue, so a preloaded table is the one the relay would see in
 * production, only faster to build.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "util.h"

#define PRELOAD_CHUNK 50000 /* rows per INSERT: bounded transactions, visible progress */

/* Notices ("drop cascades to ...") are not results: keep stderr for ours. */
static void
quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *
db_connect(const char *conninfo, const char *what)
{
    PGconn *c = PQconnectdb(conninfo);
    char msg[512];

    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        bench_err("%s: cannot connect to PostgreSQL: %s", what, msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

static void
report(PGconn *c, const char *sql, PGresult *r)
{
    const char *m = r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c);
    char msg[512];

    snprintf(msg, sizeof(msg), "%s", m != NULL && *m ? m : PQerrorMessage(c));
    msg[strcspn(msg, "\n")] = '\0';
    bench_err("PostgreSQL: %.120s: %s", sql, msg);
}

int
db_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

    if (!ok)
        report(c, sql, r);
    PQclear(r);
    return ok ? 0 : -1;
}

int
db_scalar(PGconn *c, const char *sql, long long *out)
{
    PGresult *r = PQexec(c, sql);
    int rc = -1;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1 || PQnfields(r) < 1) {
        report(c, sql, r);
        goto done;
    }
    *out = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    rc = 0;
done:
    PQclear(r);
    return rc;
}

char *
db_qident(PGconn *c, const char *name)
{
    char *q = PQescapeIdentifier(c, name, strlen(name)), *out;

    if (q == NULL)
        return NULL;
    out = strdup(q);
    PQfreemem(q);
    return out;
}

char *
db_qtable(PGconn *c, const char *schema)
{
    char *qs = db_qident(c, schema), *qt = db_qident(c, BENCH_TABLE), *out = NULL;
    size_t len;

    if (qs != NULL && qt != NULL) {
        len = strlen(qs) + strlen(qt) + 2;
        if ((out = malloc(len)) != NULL)
            snprintf(out, len, "%s.%s", qs, qt);
    }
    free(qs);
    free(qt);
    return out;
}

void
db_headers_json(long headers, char *out, size_t len)
{
    size_t o = 0;
    long i;

    o += (size_t)snprintf(out, len, "{");
    for (i = 1; i <= headers && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s\"bench-h%ld\":\"value-%ld\"", i > 1 ? "," : "",
                              i, i);
    if (o < len)
        snprintf(out + o, len - o, "}");
}

int
db_preload(PGconn *c, const char *qtable, const char *topic, long long first, long long n,
           long body_size, long headers)
{
    char sql[1024], hdrs[4096], from[24], to[24], size[24];
    const char *params[5] = {topic, hdrs, size, from, to};
    long long done = 0, chunk;
    int64_t t0 = bench_now_us();
    PGresult *r;

    db_headers_json(headers, hdrs, sizeof(hdrs));
    snprintf(size, sizeof(size), "%ld", body_size);
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s (id, topic, msg_key, headers, body)"
             " SELECT gen_random_uuid(), $1, 'bench', $2::jsonb,"
             " convert_to(i::text || ' ' || repeat('x', greatest($3::int - length(i::text) - 1,"
             " 0)), 'UTF8')"
             " FROM generate_series($4::bigint, $5::bigint) AS i",
             qtable);
    while (done < n) {
        if (bench_stopping())
            return -1;
        chunk = n - done < PRELOAD_CHUNK ? n - done : PRELOAD_CHUNK;
        snprintf(from, sizeof(from), "%lld", first + done);
        snprintf(to, sizeof(to), "%lld", first + done + chunk - 1);
        r = PQexecParams(c, sql, 5, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            report(c, "preload INSERT ... SELECT generate_series", r);
            PQclear(r);
            return -1;
        }
        PQclear(r);
        done += chunk;
        if (n > PRELOAD_CHUNK * 4 && done % (PRELOAD_CHUNK * 4) == 0)
            bench_info("preloaded %lld of %lld", done, n);
    }
    snprintf(sql, sizeof(sql), "ANALYZE %s", qtable);
    if (db_exec(c, sql) != 0)
        return -1;
    bench_info("preloaded %lld messages of %ld bytes in %.2f s", n, body_size,
               (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

static int
set_user_triggers(PGconn *c, const char *qtable, int enable)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "ALTER TABLE %s %s TRIGGER USER", qtable,
             enable ? "ENABLE" : "DISABLE");
    return db_exec(c, sql);
}

int
db_preload_delivered(PGconn *c, const char *qtable, const char *topic, long long n, long body_size,
                     long headers)
{
    char sql[1024], hdrs[4096], count[24], size[24];
    const char *params[4] = {topic, hdrs, size, count};
    long long done = 0, chunk;
    int64_t t0 = bench_now_us();
    double el;
    PGresult *r;
    int rc = -1;

    db_headers_json(headers, hdrs, sizeof(hdrs));
    snprintf(size, sizeof(size), "%ld", body_size);
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s (topic, msg_key, headers, body, state, processed_on)"
             " SELECT $1, 'bench', $2::jsonb,"
             " convert_to(i::text || ' ' || repeat('x', greatest($3::int - length(i::text) - 1,"
             " 0)), 'UTF8'), 1, now()"
             " FROM generate_series(1, $4::bigint) AS i",
             qtable);
    if (set_user_triggers(c, qtable, 0) != 0)
        return -1;
    while (done < n) {
        if (bench_stopping())
            goto done;
        chunk = n - done < DB_DELIVERED_CHUNK ? n - done : DB_DELIVERED_CHUNK;
        snprintf(count, sizeof(count), "%lld", chunk);
        r = PQexecParams(c, sql, 4, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            report(c, "delivered rows INSERT ... SELECT generate_series", r);
            PQclear(r);
            goto done;
        }
        PQclear(r);
        done += chunk;
        el = (double)(bench_now_us() - t0) / 1e6;
        bench_info("delivered rows: %lld of %lld added in %.0f s (~%.0f s to go)", done, n, el,
                   el / (double)done * (double)(n - done));
    }
    rc = 0;
done:
    if (set_user_triggers(c, qtable, 1) != 0)
        rc = -1;
    return rc;
}

int
db_table_bytes(PGconn *c, const char *qtable, long long *out)
{
    char sql[512], *lit;
    int rc;

    if ((lit = PQescapeLiteral(c, qtable, strlen(qtable))) == NULL)
        return -1;
    snprintf(sql, sizeof(sql), "SELECT pg_total_relation_size(%s::regclass)", lit);
    PQfreemem(lit);
    rc = db_scalar(c, sql, out);
    return rc;
}

int
db_checkpoint(PGconn *c)
{
    static int warned;
    PGresult *r = PQexec(c, "CHECKPOINT");

    if (PQresultStatus(r) != PGRES_COMMAND_OK && !warned) {
        const char *why = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

        warned = 1;
        bench_info("CHECKPOINT refused (%s): measurements may include earlier runs' writes",
                   why != NULL ? why : "no reason given");
    }
    PQclear(r);
    return 0;
}

int
db_empty(PGconn *c, const char *qtable)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "DELETE FROM %s", qtable);
    if (db_exec(c, sql) != 0)
        return -1;
    snprintf(sql, sizeof(sql), "VACUUM (TRUNCATE false) %s", qtable);
    return db_exec(c, sql);
}

int
db_pending(PGconn *c, const char *qtable, long long *out)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE state = 0", qtable);
    return db_scalar(c, sql, out);
}

int
db_user_triggers(PGconn *c, const char *qtable, long long *out)
{
    char sql[512], *lit;

    if ((lit = PQescapeLiteral(c, qtable, strlen(qtable))) == NULL)
        return -1;
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
             lit);
    PQfreemem(lit);
    return db_scalar(c, sql, out);
}
