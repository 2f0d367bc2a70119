/*
 * The Store on PostgreSQL (libpq). Every operation is one prepared statement
 * (one round trip) in autocommit; statements are prepared once per
 * connection and again after a reconnect. A call that finds the connection
 * bad reconnects first; a call that loses it returns UNREACHABLE and drops
 * it. Results are read in binary, so bodies arrive as raw bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uuid/uuid.h>

#include "pg_util.h"

/* Type OIDs (pg_type.dat) for the statements' parameters. */
#define INT8OID 20
#define INT4OID 23
#define TEXTOID 25
#define JSONBOID 3802
#define UUIDARRAYOID 2951

/* Microseconds between 1970-01-01 and PostgreSQL's 2000-01-01 epoch. */
#define PG_EPOCH_US INT64_C(946684800000000)

/* Longest delay/retention we pass to the server; beyond it interval
 * arithmetic would overflow (about 317 years). */
#define MAX_MS INT64_C(10000000000000)

#define COLS                                                                                       \
    "id, seq, topic, msg_key, headers, body, state, attempts, created_on, locked_on, "             \
    "processed_on, last_attempt_on, locked_by, last_error, crashes"
enum {
    C_ID,
    C_SEQ,
    C_TOPIC,
    C_KEY,
    C_HEADERS,
    C_BODY,
    C_STATE,
    C_ATTEMPTS,
    C_CREATED_ON,
    C_LOCKED_ON,
    C_PROCESSED_ON,
    C_LAST_ATTEMPT_ON,
    C_LOCKED_BY,
    C_LAST_ERROR,
    C_CRASHES,
    C_NCOLS
};

enum {
    S_CLAIM_ORDERED,
    S_BY_LOCK,
    S_DELIVERED,
    S_DELIVERED_DELETE,
    S_MARK,
    S_MARK_TX,
    S_STALE,
    S_UNLOCK,
    S_CRASHED,
    S_FLAG,
    S_TERMINATE,
    S_PURGE,
    S_COUNT
};

/*
 * @T@ is the quoted table, @L@ its listeners table. The claim locks its
 * candidates in a MATERIALIZED CTE evaluated exactly once: a plain `id IN
 * (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` may be rescanned on the inner
 * side of a nested loop, and each rescan skips the rows it already locked
 * and locks n new ones. Only candidates are ever updated, so never more
 * than n rows. A suspect (crashes > 0: its worker died holding it) is
 * claimed alone, so that a poison record, crashing again, blames only
 * itself and its innocent batch mates are cleared one by one.
 */
#define NEW_CRASHES "(CASE WHEN $3 > 0 AND $3 = $4 THEN crashes + 1 ELSE greatest(crashes, 1) END)"
/* Per-key ordering: a keyed row is a candidate only when the head of its
 * key (its oldest pending row, one probe of the key index) is free and due,
 * so a key held by another relay or waiting for a retry is passed over and
 * never fills the batch. A lateral join, so that PostgreSQL can memoize the
 * probe per key (it does not without statistics, after a bulk load).
 * The window w stops the scan after max(16 x batch, 4096) rows that are due
 * and not of a key waiting for a retry: a claim that finds little, every
 * key's head being held by other relays, costs that many rows, not the
 * whole backlog, and rows past it are claimed as the window moves; a
 * waiting key's rows (and rows waiting themselves) never fill the window,
 * so however many there are, the keys behind them go on. The window's
 * rows are joined back to the table to be locked (the LIMIT of the locking
 * scan is the bound, and a locked row is checked again as it is now); the
 * join pulls from the window only until the batch is full, so the common
 * claim reads a batch, not a window. */
#define OUTBOX_CLAIM_WINDOW_PER_ROW "16"
#define OUTBOX_CLAIM_WINDOW_MIN "4096"
#define ORDERED_CANDIDATES                                                                         \
    "WITH c AS MATERIALIZED ("                                                                     \
    " SELECT t.id, t.seq, t.msg_key, t.crashes FROM (SELECT t.id, t.seq, t.msg_key, t.locked_by,"  \
    " hd.locked_by IS NULL AS free FROM @T@ t LEFT JOIN LATERAL (SELECT h.locked_by,"              \
    " h.next_attempt_at FROM @T@ h WHERE h.state = 0 AND h.msg_key = t.msg_key"                    \
    " ORDER BY h.seq LIMIT 1) hd ON true"                                                          \
    " WHERE t.state = 0 AND t.next_attempt_at <= now() AND (t.msg_key IS NULL"                     \
    " OR hd.locked_by IS NOT NULL OR hd.next_attempt_at <= now())"                                 \
    " ORDER BY t.seq LIMIT greatest(" OUTBOX_CLAIM_WINDOW_PER_ROW                                  \
    " * $2, " OUTBOX_CLAIM_WINDOW_MIN ")) w JOIN @T@ t ON t.id = w.id"                             \
    " WHERE w.locked_by IS NULL AND (w.msg_key IS NULL OR w.free)"                                 \
    " AND t.state = 0 AND t.locked_by IS NULL AND t.next_attempt_at <= now()"                      \
    " ORDER BY w.seq LIMIT $2 FOR UPDATE OF t SKIP LOCKED),"
#define CLAIM_UPDATE                                                                               \
    " p AS (SELECT id FROM s UNION ALL SELECT id FROM ok WHERE NOT EXISTS (SELECT 1 FROM s)),"     \
    " u AS (UPDATE @T@ AS t SET locked_by = $1, locked_on = now() FROM p"                          \
    " WHERE t.id = p.id RETURNING t.*)"                                                            \
    " SELECT " COLS " FROM u ORDER BY seq"

/* The transaction-scoped claim (per-key ordering off): row locks of an
 * open transaction are the claim, held until the mark's COMMIT. No row is
 * written to claim it, a dead relay's locks vanish with its session, and
 * SKIP LOCKED keeps relays apart. A cursor: each FETCH locks only the rows
 * it returns, never more than asked. Rows locked_by a relay of the per-key
 * kind are left alone. */
#define CLAIM_DECLARE                                                                              \
    "DECLARE outbox_claim NO SCROLL CURSOR FOR SELECT " COLS " FROM @T@"                           \
    " WHERE state = 0 AND locked_by IS NULL AND next_attempt_at <= now()"                          \
    " ORDER BY seq FOR UPDATE SKIP LOCKED"

/* The marks of $2 (a JSON array) applied to their rows; a WHERE follows. */
#define MARK_SET                                                                                   \
    "UPDATE @T@ AS t SET"                                                                          \
    " state = CASE m.kind WHEN 0 THEN 1 WHEN 2 THEN 2 ELSE t.state END,"                           \
    " processed_on = CASE WHEN m.kind IN (0, 2) THEN now() ELSE t.processed_on END,"               \
    " locked_by = NULL, locked_on = NULL,"                                                         \
    " attempts = t.attempts + CASE WHEN m.kind = 3 THEN 0 ELSE m.charge END,"                      \
    " last_attempt_on = CASE WHEN m.kind <> 3 AND m.charge > 0 THEN now()"                         \
    " ELSE t.last_attempt_on END,"                                                                 \
    " last_error = CASE WHEN m.kind IN (1, 2) AND m.err IS NOT NULL THEN m.err"                    \
    " ELSE t.last_error END,"                                                                      \
    " next_attempt_at = CASE WHEN m.kind = 1 THEN now() + m.delay_ms::float8 *"                    \
    " interval '1 millisecond' ELSE t.next_attempt_at END"                                         \
    " FROM jsonb_to_recordset($2) AS m(id uuid, kind int, charge int,"                             \
    " delay_ms bigint, err text)"

static const struct {
    const char *name;
    int nparams;
    Oid types[4];
    const char *sql;
} stmts[S_COUNT] = {
    /* Per-key ordering: of the candidates, a keyed one is kept only when
     * the candidates hold every pending row of its key up to the newest one
     * taken (none in flight elsewhere, waiting for a retry or skipped), so
     * a key is never published by two relays at once nor out of order. A
     * suspect goes alone only when it heads its key. */
    [S_CLAIM_ORDERED] = {"outbox_claim_ordered",
                         2,
                         {TEXTOID, INT4OID},
                         ORDERED_CANDIDATES
                         " k AS (SELECT msg_key, max(seq) AS mx, count(*) AS n FROM c"
                         " WHERE msg_key IS NOT NULL GROUP BY msg_key),"
                         " ok AS (SELECT * FROM c WHERE msg_key IS NULL OR msg_key IN"
                         " (SELECT k.msg_key FROM k WHERE k.n = (SELECT count(*) FROM @T@ e"
                         " WHERE e.state = 0 AND e.msg_key = k.msg_key AND e.seq <= k.mx))),"
                         " s AS (SELECT id FROM ok o WHERE crashes > 0 AND (msg_key IS NULL OR"
                         " seq = (SELECT min(seq) FROM ok o2 WHERE o2.msg_key = o.msg_key))"
                         " ORDER BY seq LIMIT 1)," CLAIM_UPDATE},
    [S_BY_LOCK] = {"outbox_by_lock",
                   1,
                   {TEXTOID},
                   /* every mark clears the lock: only pending rows hold one, and
                    * the filter keeps this on the pending index */
                   "SELECT " COLS " FROM @T@ WHERE state = 0 AND locked_by = $1 ORDER BY seq"},
    /* Fast path when every mark is DELIVERED with one charge. */
    [S_DELIVERED] = {"outbox_delivered",
                     2,
                     {UUIDARRAYOID, INT4OID},
                     "UPDATE @T@ SET state = 1, processed_on = now(), locked_by = NULL,"
                     " locked_on = NULL, attempts = attempts + $2, last_attempt_on ="
                     " CASE WHEN $2 > 0 THEN now() ELSE last_attempt_on END"
                     " WHERE id = ANY($1) AND state = 0"},
    /* Delivered with retention 0: the row goes at once (one in-place
     * change instead of a new row version). */
    [S_DELIVERED_DELETE] = {"outbox_delivered_delete",
                            1,
                            {UUIDARRAYOID},
                            "DELETE FROM @T@ WHERE id = ANY($1) AND state = 0"},
    /* kind: 0 DELIVERED, 1 RETRY, 2 DEAD, 3 RELEASE (outbox_mark_kind_t). */
    [S_MARK] = {"outbox_mark",
                2,
                {TEXTOID, JSONBOID},
                MARK_SET " WHERE t.id = m.id AND t.state = 0 AND (m.kind = 0 OR t.locked_by = $1"
                         " OR t.locked_by IS NULL)"},
    /* Inside the claim transaction: the row locks are ours. */
    [S_MARK_TX] = {"outbox_mark_tx",
                   2,
                   {TEXTOID, JSONBOID},
                   MARK_SET " WHERE t.id = m.id AND t.state = 0 AND $1::text IS NOT NULL"},
    /* Only pending rows: a row leaves PENDING through mark, which clears
     * its lock, and a lock on any other row would not matter. The filter
     * lets this periodic scan use the pending index. */
    [S_STALE] = {"outbox_stale",
                 1,
                 {INT8OID},
                 /* also forgets wake-up listeners whose session is gone (a
                  * worker killed -9): producers would notify for nobody */
                 "WITH gone AS (DELETE FROM @L@ l WHERE NOT EXISTS (SELECT 1 FROM"
                 " pg_stat_activity a WHERE a.pid = l.backend_pid))"
                 " UPDATE @T@ SET locked_by = NULL, locked_on = NULL WHERE state = 0"
                 " AND locked_by IS NOT NULL"
                 " AND locked_on < now() - $1::float8 * interval '1 millisecond'"},
    [S_UNLOCK] = {"outbox_unlock",
                  1,
                  {TEXTOID},
                  "WITH gone AS (DELETE FROM @L@ WHERE lock_id = $1)"
                  " UPDATE @T@ SET locked_by = NULL, locked_on = NULL WHERE state = 0"
                  " AND locked_by = $1"},
    /* A relay died holding these rows: free them, count the crash, park
     * those at the limit ($2 > 0). The SET expressions see the old row. Its
     * rows are those locked_by it (per-key kind) or, claimed by a
     * transaction, those of the seq range [$3, $4] it had in flight that
     * no live relay holds now. A crash counts fully only against a record
     * that was alone in flight ($3 = $4); a batch's records become suspects
     * (crashes at least 1) and are retried alone: however many relays a
     * poison record kills before that, its batch mates never near the
     * limit. */
    [S_CRASHED] = {"outbox_crashed",
                   4,
                   {TEXTOID, INT4OID, INT8OID, INT8OID},
                   "WITH gone AS (DELETE FROM @L@ WHERE lock_id = $1)"
                   " UPDATE @T@ SET locked_by = NULL, locked_on = NULL, crashes = " NEW_CRASHES ","
                   " state = CASE WHEN $2 > 0 AND " NEW_CRASHES " >= $2 THEN 2 ELSE state END,"
                   " processed_on = CASE WHEN $2 > 0 AND " NEW_CRASHES " >= $2 THEN now()"
                   " ELSE processed_on END,"
                   " last_error = CASE WHEN $2 > 0 AND " NEW_CRASHES " >= $2 THEN"
                   " 'worker died while processing (' || " NEW_CRASHES " || ' times)'"
                   " ELSE last_error END"
                   " WHERE id IN (SELECT id FROM @T@ WHERE state = 0 AND (locked_by = $1 OR"
                   " (locked_by IS NULL AND seq BETWEEN $3 AND $4)) FOR UPDATE SKIP LOCKED)"
                   " RETURNING state"},
    /* The wake-up flag = the number of registered idle listeners, after
     * the registrations of dead workers were removed. */
    [S_FLAG] = {"outbox_flag", 0, {0}, "SELECT setval('@I@', (SELECT count(*) FROM @L@))"},
    /* pg_terminate_backend(pid, timeout) waits for each to be gone. */
    [S_TERMINATE] = {"outbox_terminate",
                     1,
                     {TEXTOID},
                     "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                     " WHERE application_name = $1 AND pid <> pg_backend_pid()"},
    /* A NULL retention keeps that kind: the comparison is never true. The
     * ids come from an InitPlan evaluated once, so at most $3 rows go. */
    [S_PURGE] = {"outbox_purge",
                 3,
                 {INT8OID, INT8OID, INT4OID},
                 "DELETE FROM @T@ WHERE state <> 0 AND id = ANY(ARRAY("
                 "(SELECT id FROM @T@ WHERE state = 1 AND processed_on < now() -"
                 " $1::float8 * interval '1 millisecond' ORDER BY processed_on LIMIT $3)"
                 " UNION ALL "
                 "(SELECT id FROM @T@ WHERE state = 2 AND processed_on < now() -"
                 " $2::float8 * interval '1 millisecond' ORDER BY processed_on LIMIT $3)"
                 " LIMIT $3))"},
};

typedef struct pg_store {
    outbox_store_t base;
    PGconn *conn; /* NULL while disconnected */
    char *conninfo;
    outbox_pg_names_t names;
    char *qlisteners; /* "schema"."table_listeners" */
    int statement_timeout_ms, idle_tx_timeout_ms;
    char *application_name;
    bool per_key_order;    /* column claim (locked_by); else the transaction claim */
    bool delete_delivered; /* retention 0: a delivered row is deleted */
    bool in_tx;            /* a claim transaction is open (its rows are locked) */
    int64_t batch_bytes;   /* transaction claim: stop once the bodies reach this (0: no) */
    int64_t row_bytes;     /* body bytes per row of the last batch: sizes the FETCH */
    char *sql_declare;     /* the claim cursor */
    bool end_pending;      /* an empty claim's COMMIT was sent, its result not read */
    char *sql[S_COUNT];
} pg_store_t;

static int
fail(pg_store_t *s, int rc, const char *fmt, const char *arg)
{
    snprintf(s->base.err, sizeof(s->base.err), fmt, arg);
    return rc;
}

/* tmpl with every occurrence of key replaced by val; NULL on NOMEM; caller
 * frees. */
static char *
subst_key(const char *tmpl, const char *key, const char *val)
{
    size_t n = 0, len, klen = strlen(key);
    const char *p;
    char *out, *o;

    for (p = tmpl; (p = strstr(p, key)) != NULL; p += klen)
        n++;
    len = strlen(tmpl) + n * strlen(val) + 1;
    if ((out = malloc(len)) == NULL)
        return NULL;
    for (o = out, p = tmpl; *p != '\0';) {
        if (strncmp(p, key, klen) == 0) {
            o = stpcpy(o, val);
            p += klen;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* tmpl with @T@ = the quoted table, @L@ = its listeners table and @I@ =
 * its idle flag (a quoted name, used inside a string literal: quotes of
 * the name doubled). */
static char *
subst(const char *tmpl, const char *qt, const char *ql, const char *qi)
{
    char *a = subst_key(tmpl, "@T@", qt), *b, *c;

    if (a == NULL || ql == NULL)
        return a;
    b = subst_key(a, "@L@", ql);
    free(a);
    if (b == NULL || qi == NULL)
        return b;
    c = subst_key(b, "@I@", qi);
    free(b);
    return c;
}

/* Drop a connection that failed; the next call reconnects. */
static void
drop(pg_store_t *s)
{
    PQfinish(s->conn);
    s->conn = NULL;
    s->in_tx = false; /* the server rolls it back */
    s->end_pending = false;
}

/* Report a failed result in s->base.err and return its status. */
static int
failed(pg_store_t *s, const char *what, PGresult *res)
{
    int rc = outbox_pg_status(s->conn, res);

    outbox_pg_error(s->base.err, sizeof(s->base.err), what, s->conn, res);
    PQclear(res);
    if (rc == OUTBOX_ERR_UNREACHABLE)
        drop(s);
    return rc;
}

/* Connect, set the timeout, check the schema version, prepare. */
static int
open_conn(pg_store_t *s)
{
    PGresult *res = NULL;
    char *sql = NULL;
    char buf[256];
    int i, rc, version;

    rc = outbox_pg_connect_as(&s->conn, s->conninfo, s->application_name, s->base.err,
                              sizeof(s->base.err));
    if (rc != OUTBOX_OK)
        return rc;
    /* synchronous_commit off: a mark's COMMIT does not wait for the WAL
     * flush (the producers' commits do). A crash of the database may lose
     * the last marks; those records are published again under the same id
     * and the stream drops the copies. */
    {
        /* jit off: the per-key claim's estimate passes jit_above_cost on
         * a large table, and compiling took 25 ms of a 4 ms claim. For the
         * per-key claim, only index scans and nested loops: without
         * statistics (a bulk load before autovacuum's ANALYZE) the planner
         * picked a bitmap scan and a sort of every pending row for its
         * window, and a hash join would read the whole table; every
         * statement of such a session reads a few rows by index. */
        snprintf(buf, sizeof(buf),
                 "SET statement_timeout = %d; SET idle_in_transaction_session_timeout = %d; "
                 "SET synchronous_commit = off; SET jit = off%s",
                 s->statement_timeout_ms, s->idle_tx_timeout_ms,
                 s->per_key_order ? "; SET enable_bitmapscan = off; SET enable_hashjoin = off; "
                                    "SET enable_mergejoin = off"
                                  : "");
        res = PQexec(s->conn, buf);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rc = failed(s, "set statement_timeout", res);
            goto done;
        }
        PQclear(res);
    }
    if ((sql = subst("SELECT max(version) FROM @T@", s->names.qmigrations, NULL, NULL)) == NULL) {
        rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
        goto done;
    }
    res = PQexec(s->conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = failed(s, "schema version", res);
        if (rc == OUTBOX_ERR_SCHEMA)
            fail(s, rc, "%s is not there: run `outboxd migrate`", s->names.qmigrations);
        goto done;
    }
    version = PQgetisnull(res, 0, 0) ? 0 : atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (version != OUTBOX_SCHEMA_VERSION) {
        snprintf(s->base.err, sizeof(s->base.err),
                 "%s is at schema version %d, this build needs %d%s", s->names.qtable, version,
                 OUTBOX_SCHEMA_VERSION,
                 version < OUTBOX_SCHEMA_VERSION ? ": run `outboxd migrate`" : "");
        rc = OUTBOX_ERR_SCHEMA;
        goto done;
    }
    for (i = 0; i < S_COUNT; i++) {
        res = PQprepare(s->conn, stmts[i].name, s->sql[i], stmts[i].nparams, stmts[i].types);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rc = failed(s, stmts[i].name, res);
            if (rc == OUTBOX_ERR_SCHEMA) {
                /* an object of the schema dropped by hand */
                size_t n = strlen(s->base.err);

                snprintf(s->base.err + n, sizeof(s->base.err) - n,
                         "; the schema was changed by hand? `outboxd migrate` names what is "
                         "missing, `outboxd migrate --repair` creates it again");
            }
            goto done;
        }
        PQclear(res);
    }
    rc = OUTBOX_OK;
done:
    free(sql);
    if (rc != OUTBOX_OK)
        drop(s);
    return rc;
}

/* A usable connection: re-made if lost; the result of an empty claim's
 * COMMIT, sent without waiting, read first. */
static int
ready(pg_store_t *s)
{
    PGresult *res;
    int rc;

    if (s->conn != NULL && s->end_pending) {
        s->end_pending = false;
        while ((res = PQgetResult(s->conn)) != NULL)
            PQclear(res); /* a COMMIT of nothing: its outcome changes nothing */
    }
    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
        drop(s);
        if ((rc = open_conn(s)) != OUTBOX_OK)
            return rc;
        s->base.reconnects++;
    }
    return OUTBOX_OK;
}

/* One step of a pipeline: a prepared statement (st >= 0, binary results)
 * or a fixed SQL text without parameters. */
typedef struct step {
    int st;
    const char *sql;
    const char *const *values;
    int binary; /* sql: results in binary (a FETCH of the claim cursor) */
} step_t;

/*
 * Run steps in one round trip (libpq pipeline mode). The result of step
 * keep (-1: none) goes to *out; every step must succeed. On failure the
 * open transaction, if any, is aborted: the session is rolled back (or
 * dropped when it is gone).
 */
static int
pipeline(pg_store_t *s, const step_t *steps, int n, int keep, PGresult **out)
{
    PGresult *res;
    ExecStatusType es;
    int i, rc = OUTBOX_OK, bad = -1;

    if (PQenterPipelineMode(s->conn) != 1)
        return fail(s, OUTBOX_ERR_UNREACHABLE, "%s", "cannot enter pipeline mode");
    for (i = 0; i < n; i++) {
        int ok = steps[i].st >= 0 ? PQsendQueryPrepared(s->conn, stmts[steps[i].st].name,
                                                        stmts[steps[i].st].nparams, steps[i].values,
                                                        NULL, NULL, 1)
                                  : PQsendQueryParams(s->conn, steps[i].sql, 0, NULL, NULL, NULL,
                                                      NULL, steps[i].binary);

        if (!ok)
            break;
    }
    if (i < n || PQpipelineSync(s->conn) != 1) {
        outbox_pg_error(s->base.err, sizeof(s->base.err), "send", s->conn, NULL);
        drop(s);
        return OUTBOX_ERR_UNREACHABLE;
    }
    for (i = 0; i < n; i++) {
        if ((res = PQgetResult(s->conn)) == NULL)
            break;
        es = PQresultStatus(res);
        if (es != PGRES_TUPLES_OK && es != PGRES_COMMAND_OK) {
            if (bad < 0) {
                bad = i;
                rc = outbox_pg_status(s->conn, res);
                outbox_pg_error(s->base.err, sizeof(s->base.err),
                                steps[i].st >= 0 ? stmts[steps[i].st].name : steps[i].sql, s->conn,
                                es == PGRES_PIPELINE_ABORTED ? NULL : res);
            }
            PQclear(res);
        } else if (i == keep && bad < 0) {
            *out = res;
        } else {
            PQclear(res);
        }
        while ((res = PQgetResult(s->conn)) != NULL) /* end of this step */
            PQclear(res);
    }
    /* the sync point */
    while ((res = PQgetResult(s->conn)) != NULL) {
        es = PQresultStatus(res);
        PQclear(res);
        if (es == PGRES_PIPELINE_SYNC)
            break;
    }
    if (i < n || PQexitPipelineMode(s->conn) != 1 || PQstatus(s->conn) != CONNECTION_OK) {
        if (bad < 0) {
            outbox_pg_error(s->base.err, sizeof(s->base.err), "pipeline", s->conn, NULL);
            rc = OUTBOX_ERR_UNREACHABLE;
        }
        if (keep >= 0 && *out != NULL) {
            PQclear(*out);
            *out = NULL;
        }
        drop(s);
        return rc != OUTBOX_OK ? rc : OUTBOX_ERR_UNREACHABLE;
    }
    if (bad >= 0) {
        if (keep >= 0 && *out != NULL) {
            PQclear(*out);
            *out = NULL;
        }
        if (s->in_tx) {
            res = PQexec(s->conn, "ROLLBACK");
            PQclear(res);
            s->in_tx = false;
        }
        if (rc == OUTBOX_ERR_UNREACHABLE)
            drop(s);
    }
    return rc;
}

/* End the claim transaction without waiting (an empty claim). */
static void
end_later(pg_store_t *s)
{
    s->in_tx = false;
    if (PQsendQuery(s->conn, "COMMIT") == 1)
        s->end_pending = true;
    else
        drop(s);
}

/* Roll the claim transaction back (stop, or marks that cannot apply). */
static void
rollback(pg_store_t *s)
{
    PGresult *res;

    if (!s->in_tx || s->conn == NULL)
        return;
    s->in_tx = false;
    res = PQexec(s->conn, "ROLLBACK");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        drop(s);
    PQclear(res);
}

/* Run prepared statement st; on success *out holds the result. */
static int
exec(pg_store_t *s, int st, const char *const *values, const int *lengths, PGresult **out)
{
    PGresult *res;
    ExecStatusType es;
    int rc;

    if ((rc = ready(s)) != OUTBOX_OK)
        return rc;
    res = PQexecPrepared(s->conn, stmts[st].name, stmts[st].nparams, values, lengths, NULL, 1);
    es = PQresultStatus(res);
    if (es != PGRES_TUPLES_OK && es != PGRES_COMMAND_OK)
        return failed(s, stmts[st].name, res);
    *out = res;
    return OUTBOX_OK;
}

/* Rows affected by a command result; the result is freed. */
static int64_t
affected(PGresult *res)
{
    int64_t n = strtoll(PQcmdTuples(res), NULL, 10);

    PQclear(res);
    return n;
}

static uint64_t
be(const char *p, int len)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    int i;

    for (i = 0; i < len; i++)
        v = (v << 8) | u[i];
    return v;
}

static int64_t
col_time(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return (int64_t)be(PQgetvalue(res, row, col), 8) + PG_EPOCH_US;
}

static const char *
col_str(outbox_batch_t *b, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return outbox_batch_strdup(b, PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

/* Parse jsonb (binary: version byte 1, then text) into the batch. */
static int
fill_headers(outbox_batch_t *b, outbox_record_t *r, const char *p, int len)
{
    json_t *o = NULL, *v;
    outbox_header_t *h;
    const char *name;
    size_t i = 0;
    int rc = OUTBOX_ERR_PERMANENT;

    if (len < 1 || p[0] != 1)
        goto done;
    o = json_loadb(p + 1, (size_t)len - 1, JSON_REJECT_DUPLICATES, NULL);
    if (o == NULL || !json_is_object(o))
        goto done;
    if (json_object_size(o) == 0) {
        rc = OUTBOX_OK;
        goto done;
    }
    if ((h = outbox_batch_headers(b, json_object_size(o))) == NULL)
        goto done;
    json_object_foreach(o, name, v)
    {
        if (!json_is_string(v))
            goto done;
        h[i].name = outbox_batch_strdup(b, name, strlen(name));
        h[i].value = outbox_batch_strdup(b, json_string_value(v), json_string_length(v));
        if (h[i].name == NULL || h[i].value == NULL)
            goto done;
        i++;
    }
    r->msg.headers = h;
    r->msg.nheaders = i;
    rc = OUTBOX_OK;
done:
    json_decref(o);
    return rc;
}

/* Copy a result of COLS rows into out: size everything first, reserve once
 * (so arena pointers never move), then copy. */
static int
fill_many(pg_store_t *s, PGresult *const *results, int nres, int only, outbox_batch_t *out)
{
    size_t bytes = 0, nhdrs = 0, nrec = 0;
    int k, g = 0, i, c, len;
    PGresult *res;
    const char *p;
    outbox_record_t *r;
    uuid_t u;

    /* g: the row's index over all results; only >= 0 keeps that one row */
#define EACH_ROW                                                                                   \
    for (k = 0, g = 0; k < nres; k++)                                                              \
        for (res = results[k], i = 0; i < PQntuples(res); i++, g++)                                \
            if (only < 0 || g == only)
    for (k = 0; k < nres; k++)
        if (PQnfields(results[k]) != C_NCOLS)
            return fail(s, OUTBOX_ERR_SCHEMA, "%s has unexpected columns", s->names.qtable);
    EACH_ROW
    {
        nrec++;
        bytes += OUTBOX_ID_LEN + 1;
        for (c = C_TOPIC; c < C_NCOLS; c++)
            bytes += (size_t)PQgetlength(res, i, c) + 1;
        /* Decoded names and values (+ NUL) never outgrow their JSON text;
         * every header needs four quotes. */
        p = PQgetvalue(res, i, C_HEADERS);
        len = PQgetlength(res, i, C_HEADERS);
        for (c = 0; c < len; c++)
            nhdrs += p[c] == '"';
    }
    if (outbox_batch_reserve(out, nrec, nhdrs / 4, bytes) != OUTBOX_OK)
        return fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory for a batch");
    EACH_ROW
    {
        r = outbox_batch_push(out);
        if (PQgetlength(res, i, C_ID) != 16 || PQgetlength(res, i, C_SEQ) != 8)
            return fail(s, OUTBOX_ERR_SCHEMA, "%s has unexpected column types", s->names.qtable);
        memcpy(u, PQgetvalue(res, i, C_ID), 16);
        uuid_unparse_lower(u, r->id);
        r->seq = (int64_t)be(PQgetvalue(res, i, C_SEQ), 8);
        r->msg.topic = col_str(out, res, i, C_TOPIC);
        r->msg.key = col_str(out, res, i, C_KEY);
        if (r->msg.key != NULL && r->msg.key[0] == '\0')
            r->msg.key = NULL;
        len = PQgetlength(res, i, C_BODY);
        r->msg.body = outbox_batch_alloc(out, (size_t)len);
        if (r->msg.body != NULL)
            memcpy((void *)r->msg.body, PQgetvalue(res, i, C_BODY), (size_t)len);
        r->msg.body_len = (size_t)len;
        r->state = (outbox_state_t)(int16_t)be(PQgetvalue(res, i, C_STATE), 2);
        r->attempts = (int32_t)be(PQgetvalue(res, i, C_ATTEMPTS), 4);
        r->created_on = col_time(res, i, C_CREATED_ON);
        r->locked_on = col_time(res, i, C_LOCKED_ON);
        r->processed_on = col_time(res, i, C_PROCESSED_ON);
        r->last_attempt_on = col_time(res, i, C_LAST_ATTEMPT_ON);
        r->locked_by = col_str(out, res, i, C_LOCKED_BY);
        r->last_error = col_str(out, res, i, C_LAST_ERROR);
        r->crashes = (int32_t)be(PQgetvalue(res, i, C_CRASHES), 4);
        if (r->msg.topic == NULL || r->msg.body == NULL ||
            fill_headers(out, r, PQgetvalue(res, i, C_HEADERS), PQgetlength(res, i, C_HEADERS)) !=
                OUTBOX_OK)
            return fail(s, OUTBOX_ERR_PERMANENT, "record %s has unreadable headers", r->id);
    }
#undef EACH_ROW
    return OUTBOX_OK;
}

static int
fill(pg_store_t *s, PGresult *res, int only, outbox_batch_t *out)
{
    return fill_many(s, &res, 1, only, out);
}

/* The first suspect (crashes > 0) of the claim's results, as an index over
 * all their rows, -1 if none: it goes alone, its batch mates stay locked
 * but untouched until the COMMIT. */
static int
first_suspect(PGresult *const *results, int nres)
{
    int k, i, g = 0;

    for (k = 0; k < nres; k++)
        for (i = 0; i < PQntuples(results[k]); i++, g++)
            if (be(PQgetvalue(results[k], i, C_CRASHES), 4) != 0)
                return g;
    return -1;
}

#define CLAIM_FETCHES 16      /* most FETCHes one claim makes */
#define ROW_BYTES_MIN 64      /* least body bytes per row assumed */
#define ROW_BYTES_FIRST 65536 /* first batch: a few rows, then sized by what came */

static int64_t
body_bytes(const PGresult *res)
{
    int64_t n = 0;
    int i;

    for (i = 0; i < PQntuples(res); i++)
        n += PQgetlength(res, i, C_BODY);
    return n;
}

/*
 * Transaction claim: BEGIN, the claim cursor and its first FETCH in one
 * round trip; the cursor locks the rows as they are fetched, so a batch
 * bounded by batch_bytes leaves the rows it does not take to other relays.
 * Rows are fetched by the estimate of the last batches' body size; more
 * FETCHes (rarely) until the count or the bytes are reached. An empty
 * result ends the transaction without a wait.
 */
static int
claim_tx(pg_store_t *s, int limit, outbox_batch_t *out)
{
    PGresult *res[CLAIM_FETCHES];
    char fetch[48];
    step_t steps[3] = {{-1, "BEGIN", NULL, 0}, {-1, s->sql_declare, NULL, 0}, {-1, fetch, NULL, 1}};
    int64_t bytes = 0, per = s->row_bytes > ROW_BYTES_MIN ? s->row_bytes : ROW_BYTES_MIN;
    int nres = 0, total = 0, want, rc, k;

    want = s->batch_bytes > 0 && s->batch_bytes / per < limit ? (int)(s->batch_bytes / per) : limit;
    if (want < 1)
        want = 1;
    snprintf(fetch, sizeof(fetch), "FETCH %d FROM outbox_claim", want);
    if ((rc = ready(s)) != OUTBOX_OK)
        return rc;
    if (s->in_tx)
        rollback(s); /* a claim never marked: give it back */
    if (s->conn == NULL && (rc = ready(s)) != OUTBOX_OK)
        return rc;
    s->in_tx = true;
    res[0] = NULL;
    if ((rc = pipeline(s, steps, 3, 2, &res[0])) != OUTBOX_OK) {
        s->in_tx = false;
        return rc;
    }
    nres = 1;
    for (;;) {
        int got = PQntuples(res[nres - 1]);

        total += got;
        bytes += body_bytes(res[nres - 1]);
        if (got < want || total >= limit || nres == CLAIM_FETCHES ||
            (s->batch_bytes > 0 && bytes >= s->batch_bytes))
            break;
        per = total > 0 && bytes / total > ROW_BYTES_MIN ? bytes / total : ROW_BYTES_MIN;
        want = s->batch_bytes > 0 ? (int)((s->batch_bytes - bytes) / per) : limit - total;
        if (want > limit - total)
            want = limit - total;
        if (want < 1)
            want = 1;
        snprintf(fetch, sizeof(fetch), "FETCH %d FROM outbox_claim", want);
        res[nres] = PQexecParams(s->conn, fetch, 0, NULL, NULL, NULL, NULL, 1);
        if (PQresultStatus(res[nres]) != PGRES_TUPLES_OK) {
            rc = failed(s, "claim fetch", res[nres]);
            goto fail;
        }
        nres++;
    }
    if (total > 0)
        s->row_bytes = bytes / total;
    if (total == 0) {
        PQclear(res[0]);
        end_later(s);
        return OUTBOX_OK;
    }
    rc = fill_many(s, res, nres, first_suspect(res, nres), out);
    if (rc == OUTBOX_OK)
        goto done;
fail:
    outbox_batch_reset(out);
    rollback(s);
done:
    for (k = 0; k < nres; k++)
        PQclear(res[k]);
    return rc;
}

static int
pg_claim(outbox_store_t *base, const char *lock_id, int limit, outbox_batch_t *out)
{
    pg_store_t *s = (pg_store_t *)base;
    PGresult *res = NULL;
    const char *values[2];
    char lim[16];
    int rc;

    outbox_batch_reset(out);
    if (lock_id == NULL || lock_id[0] == '\0')
        return fail(s, OUTBOX_ERR_INVALID, "%s", "claim: empty lock id");
    if (limit <= 0)
        return OUTBOX_OK;
    if (!s->per_key_order)
        return claim_tx(s, limit, out);
    snprintf(lim, sizeof(lim), "%d", limit);
    values[0] = lock_id;
    values[1] = lim;
    if ((rc = exec(s, S_CLAIM_ORDERED, values, NULL, &res)) != OUTBOX_OK)
        return rc;
    /* Should the copy fail, the rows stay locked by lock_id until
     * clear_stale_locks or clear_locks_by_lock_id frees them. */
    rc = fill(s, res, -1, out);
    PQclear(res);
    if (rc != OUTBOX_OK)
        outbox_batch_reset(out);
    return rc;
}

static int
pg_get_by_lock_id(outbox_store_t *base, const char *lock_id, outbox_batch_t *out)
{
    pg_store_t *s = (pg_store_t *)base;
    PGresult *res = NULL;
    const char *values[1] = {lock_id};
    int rc;

    outbox_batch_reset(out);
    if (lock_id == NULL)
        return fail(s, OUTBOX_ERR_INVALID, "%s", "get_by_lock_id: NULL lock id");
    if ((rc = exec(s, S_BY_LOCK, values, NULL, &res)) != OUTBOX_OK)
        return rc;
    rc = fill(s, res, -1, out);
    PQclear(res);
    if (rc != OUTBOX_OK)
        outbox_batch_reset(out);
    return rc;
}

/* 1 if id is a textual uuid (8-4-4-4-12 hex digits). */
static int
id_ok(const char *id)
{
    int i;

    if (id == NULL || strlen(id) != OUTBOX_ID_LEN)
        return 0;
    for (i = 0; i < OUTBOX_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (id[i] != '-')
                return 0;
        } else if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f') ||
                     (id[i] >= 'A' && id[i] <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

/* A JSON string for an error text; bytes that are not UTF-8 become '?'
 * rather than losing the whole text. */
static json_t *
error_string(const char *e)
{
    json_t *j;
    char *copy;
    size_t i;

    if (e == NULL)
        return json_null();
    if ((j = json_string(e)) != NULL)
        return j;
    if ((copy = strdup(e)) == NULL)
        return NULL;
    for (i = 0; copy[i] != '\0'; i++) {
        if ((unsigned char)copy[i] >= 0x80)
            copy[i] = '?';
    }
    j = json_string(copy);
    free(copy);
    return j;
}

static int64_t
clamp_ms(int64_t ms)
{
    return ms < 0 ? 0 : ms > MAX_MS ? MAX_MS : ms;
}

/* "{id,id,...}" of the marks whose kind is (or is not) DELIVERED, into
 * *text (malloc'd); ids are checked, so no quoting is needed. */
static int
id_array(const outbox_mark_t *marks, size_t n, bool delivered, char **text, size_t *count)
{
    char *o;
    size_t i;

    *count = 0;
    if ((*text = o = malloc(n * (OUTBOX_ID_LEN + 1) + 3)) == NULL)
        return OUTBOX_ERR_NOMEM;
    *o++ = '{';
    for (i = 0; i < n; i++) {
        if ((marks[i].kind == OUTBOX_MARK_DELIVERED) != delivered)
            continue;
        if ((*count)++ > 0)
            *o++ = ',';
        o = stpcpy(o, marks[i].id);
    }
    *o++ = '}';
    *o = '\0';
    return OUTBOX_OK;
}

/* The marks (DELIVERED and RELEASE ones only when asked) as the JSON of
 * S_MARK; NULL text when there are none. */
static int
marks_json(pg_store_t *s, const outbox_mark_t *marks, size_t n, bool with_delivered,
           bool with_release, char **text)
{
    json_t *arr = json_array(), *m;
    size_t i, k = 0;
    int rc = OUTBOX_OK;

    *text = NULL;
    if (arr == NULL)
        return fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
    for (i = 0; i < n; i++) {
        if ((!with_delivered && marks[i].kind == OUTBOX_MARK_DELIVERED) ||
            (!with_release && marks[i].kind == OUTBOX_MARK_RELEASE))
            continue;
        m = json_pack("{s:s, s:i, s:i, s:I, s:o*}", "id", marks[i].id, "kind", (int)marks[i].kind,
                      "charge", (int)marks[i].charge, "delay_ms",
                      (json_int_t)clamp_ms(marks[i].retry_delay_ms), "err",
                      error_string(marks[i].error));
        if (m == NULL || json_array_append_new(arr, m) != 0) {
            rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
            goto done;
        }
        k++;
    }
    if (k > 0 && (*text = json_dumps(arr, JSON_COMPACT)) == NULL)
        rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
done:
    json_decref(arr);
    return rc;
}

/*
 * Inside the claim transaction: delivered rows updated (or deleted) by id,
 * the others by their JSON, and COMMIT, in one round trip. RELEASE needs no
 * statement: the COMMIT frees the row locks.
 */
static int
mark_tx(pg_store_t *s, const char *lock_id, const outbox_mark_t *marks, size_t n, int64_t *updated)
{
    char *ids = NULL, *json = NULL, charge[16] = "1";
    const char *dv[2] = {NULL, charge}, *mv[2] = {lock_id, NULL};
    step_t steps[3];
    PGresult *res = NULL;
    size_t ndelivered = 0, i;
    int nsteps = 0, rc;

    if ((rc = id_array(marks, n, true, &ids, &ndelivered)) != OUTBOX_OK ||
        (rc = marks_json(s, marks, n, false, false, &json)) != OUTBOX_OK) {
        rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
        goto done;
    }
    for (i = 0; i < n; i++)
        if (marks[i].kind == OUTBOX_MARK_DELIVERED) {
            snprintf(charge, sizeof(charge), "%d", (int)marks[i].charge);
            break;
        }
    dv[0] = ids;
    mv[1] = json;
    if (ndelivered > 0)
        steps[nsteps++] =
            (step_t){s->delete_delivered ? S_DELIVERED_DELETE : S_DELIVERED, NULL, dv, 0};
    if (json != NULL)
        steps[nsteps++] = (step_t){S_MARK_TX, NULL, mv, 0};
    steps[nsteps++] = (step_t){-1, "COMMIT", NULL, 0};
    rc = pipeline(s, steps, nsteps, -1, &res);
    s->in_tx = false;
    if (rc == OUTBOX_OK && updated != NULL)
        *updated = (int64_t)n;
done:
    free(ids);
    free(json);
    return rc;
}

static int
pg_mark(outbox_store_t *base, const char *lock_id, const outbox_mark_t *marks, size_t n,
        int64_t *updated)
{
    pg_store_t *s = (pg_store_t *)base;
    PGresult *res = NULL;
    char *text = NULL;
    const char *values[2];
    char charge[16] = "0";
    size_t i, count;
    int64_t rows;
    int rc, fast = 1;

    if (n == 0) {
        if (updated != NULL)
            *updated = 0;
        if (s->in_tx && s->conn != NULL)
            end_later(s);
        return OUTBOX_OK;
    }
    if (marks == NULL || lock_id == NULL)
        return fail(s, OUTBOX_ERR_INVALID, "%s", "mark: NULL marks or lock id");
    for (i = 0; i < n; i++) {
        if (!id_ok(marks[i].id))
            return fail(s, OUTBOX_ERR_INVALID, "mark: \"%.40s\" is not a record id",
                        marks[i].id != NULL ? marks[i].id : "(null)");
        if (marks[i].kind < OUTBOX_MARK_DELIVERED || marks[i].kind > OUTBOX_MARK_RELEASE)
            return fail(s, OUTBOX_ERR_INVALID, "mark: bad kind for %s", marks[i].id);
        if (marks[i].kind != OUTBOX_MARK_DELIVERED || marks[i].charge != marks[0].charge)
            fast = 0;
    }
    if (s->in_tx && s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK)
        return mark_tx(s, lock_id, marks, n, updated);
    /* Outside a claim transaction (the per-key kind, or marks kept across a
     * lost connection): DELIVERED applies whoever holds the row, the others
     * where locked_by = lock_id still holds or nobody's does (a transaction
     * claim, or a lock the lock check freed); a relay of the per-key kind
     * that took the row since keeps it. One statement per batch, but for
     * deleted deliveries beside other marks. */
    rows = 0;
    if (fast || s->delete_delivered) {
        if ((rc = id_array(marks, n, true, &text, &count)) != OUTBOX_OK) {
            rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
            goto done;
        }
        if (count > 0) {
            for (i = 0; i < n; i++)
                if (marks[i].kind == OUTBOX_MARK_DELIVERED) {
                    snprintf(charge, sizeof(charge), "%d", (int)marks[i].charge);
                    break;
                }
            values[0] = text;
            values[1] = charge;
            if ((rc = exec(s, s->delete_delivered ? S_DELIVERED_DELETE : S_DELIVERED, values, NULL,
                           &res)) != OUTBOX_OK)
                goto done;
            rows += affected(res); /* frees res */
        }
        free(text);
        text = NULL;
    }
    if (!fast && (rc = marks_json(s, marks, n, !s->delete_delivered, true, &text)) != OUTBOX_OK)
        goto done;
    if (text != NULL) {
        values[0] = lock_id;
        values[1] = text;
        if ((rc = exec(s, S_MARK, values, NULL, &res)) != OUTBOX_OK)
            goto done;
        rows += affected(res);
    }
    if (updated != NULL)
        *updated = rows;
done:
    free(text);
    return rc;
}

/* Run a statement whose result is a row count. */
static int
count_exec(pg_store_t *s, int st, const char *const *values, int64_t *count)
{
    PGresult *res = NULL;
    int rc;

    if ((rc = exec(s, st, values, NULL, &res)) == OUTBOX_OK) {
        int64_t n = affected(res); /* frees res */

        if (count != NULL)
            *count = n;
    }
    return rc;
}

/* After registrations of idle listeners were removed: the wake-up flag
 * follows (a live listener re-asserts it anyway within a poll period). */
static int
reconcile_flag(pg_store_t *s, int rc)
{
    PGresult *res = NULL;

    if (rc == OUTBOX_OK && exec(s, S_FLAG, NULL, NULL, &res) == OUTBOX_OK)
        PQclear(res);
    return rc;
}

static int
pg_clear_stale_locks(outbox_store_t *base, int64_t max_lock_ms, int64_t *released)
{
    char ms[24];
    const char *values[1] = {ms};

    snprintf(ms, sizeof(ms), "%lld", (long long)clamp_ms(max_lock_ms));
    return reconcile_flag((pg_store_t *)base,
                          count_exec((pg_store_t *)base, S_STALE, values, released));
}

static int
pg_clear_locks_by_lock_id(outbox_store_t *base, const char *lock_id, int64_t *released)
{
    const char *values[1] = {lock_id};

    if (lock_id == NULL)
        return fail((pg_store_t *)base, OUTBOX_ERR_INVALID, "%s", "clear_locks: NULL lock id");
    rollback((pg_store_t *)base); /* our own claim transaction, if one is open */
    return reconcile_flag((pg_store_t *)base,
                          count_exec((pg_store_t *)base, S_UNLOCK, values, released));
}

/* End the sessions a dead relay may have left (its host still up, the
 * server not yet aware): their transaction's row locks go with them. A
 * missing permission (another role) is not an error: the server ends them
 * by itself once it notices, or at idle_in_transaction_session_timeout. */
static int
terminate(pg_store_t *s, const char *lock_id)
{
    char name[OUTBOX_PG_APPNAME_MAX + 1];
    const char *values[1] = {name};
    PGresult *res = NULL;
    int rc;

    outbox_pg_appname(lock_id, name);
    rc = exec(s, S_TERMINATE, values, NULL, &res);
    if (rc == OUTBOX_OK)
        PQclear(res);
    return rc == OUTBOX_ERR_UNREACHABLE ? rc : OUTBOX_OK;
}

static int
pg_release_crashed(outbox_store_t *base, const char *lock_id, int64_t lo, int64_t hi,
                   int crash_limit, int64_t *released, int64_t *parked)
{
    pg_store_t *s = (pg_store_t *)base;
    PGresult *res = NULL;
    char lim[16], slo[24], shi[24];
    const char *values[4] = {lock_id, lim, slo, shi};
    int64_t dead = 0;
    int rc, i, rows;

    if (lock_id == NULL)
        return fail(s, OUTBOX_ERR_INVALID, "%s", "release_crashed: NULL lock id");
    snprintf(lim, sizeof(lim), "%d", crash_limit > 0 ? crash_limit : 0);
    snprintf(slo, sizeof(slo), "%lld", (long long)(lo > 0 ? lo : 1));
    snprintf(shi, sizeof(shi), "%lld", (long long)(lo > 0 ? hi : 0));
    if ((rc = terminate(s, lock_id)) != OUTBOX_OK ||
        (rc = exec(s, S_CRASHED, values, NULL, &res)) != OUTBOX_OK)
        return rc;
    rows = PQntuples(res);
    for (i = 0; i < rows; i++)
        dead += (int16_t)be(PQgetvalue(res, i, 0), 2) == OUTBOX_STATE_MAX_ATTEMPTS_REACHED;
    PQclear(res);
    reconcile_flag(s, OUTBOX_OK);
    if (released != NULL)
        *released = rows;
    if (parked != NULL)
        *parked = dead;
    return OUTBOX_OK;
}

static int
pg_purge(outbox_store_t *base, int64_t retention_ms, int64_t dead_retention_ms, int limit,
         int64_t *deleted)
{
    char ret[24], dead[24], lim[16];
    const char *values[3] = {NULL, NULL, lim};

    if (limit <= 0 || (retention_ms < 0 && dead_retention_ms < 0)) {
        if (deleted != NULL)
            *deleted = 0;
        return OUTBOX_OK;
    }
    if (retention_ms >= 0) {
        snprintf(ret, sizeof(ret), "%lld", (long long)clamp_ms(retention_ms));
        values[0] = ret;
    }
    if (dead_retention_ms >= 0) {
        snprintf(dead, sizeof(dead), "%lld", (long long)clamp_ms(dead_retention_ms));
        values[1] = dead;
    }
    snprintf(lim, sizeof(lim), "%d", limit);
    return count_exec((pg_store_t *)base, S_PURGE, values, deleted);
}

static void
pg_destroy(outbox_store_t *base)
{
    pg_store_t *s = (pg_store_t *)base;
    int i;

    rollback(s);
    PQfinish(s->conn);
    free(s->conninfo);
    free(s->application_name);
    free(s->sql_declare);
    free(s->qlisteners);
    outbox_pg_names_free(&s->names);
    for (i = 0; i < S_COUNT; i++)
        free(s->sql[i]);
    free(s);
}

static const outbox_store_ops_t pg_ops = {
    .claim = pg_claim,
    .get_by_lock_id = pg_get_by_lock_id,
    .mark = pg_mark,
    .clear_stale_locks = pg_clear_stale_locks,
    .clear_locks_by_lock_id = pg_clear_locks_by_lock_id,
    .release_crashed = pg_release_crashed,
    .purge = pg_purge,
    .destroy = pg_destroy,
};

int
outbox_pg_store_create(outbox_store_t **out, const outbox_pg_options_t *opt, char *err,
                       size_t errlen)
{
    pg_store_t *s;
    char *qidle = NULL, *qidle_lit = NULL;
    int rc, i;

    if (opt == NULL) {
        snprintf(err, errlen, "no options");
        return OUTBOX_ERR_CONFIG;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    s->base.ops = &pg_ops;
    s->statement_timeout_ms = opt->statement_timeout_ms;
    s->idle_tx_timeout_ms = opt->idle_tx_timeout_ms;
    s->per_key_order = opt->per_key_order;
    s->delete_delivered = opt->delete_delivered;
    s->batch_bytes = opt->batch_bytes;
    s->row_bytes = ROW_BYTES_FIRST;
    rc = outbox_pg_names_init(&s->names, opt->schema, opt->table, s->base.err, sizeof(s->base.err));
    if (rc != OUTBOX_OK)
        goto done;
    if ((opt->conninfo != NULL && (s->conninfo = strdup(opt->conninfo)) == NULL) ||
        (opt->application_name != NULL &&
         (s->application_name = strdup(opt->application_name)) == NULL) ||
        (s->qlisteners = outbox_pg_qualify(s->names.schema, s->names.table, "_listeners")) ==
            NULL ||
        (qidle = outbox_pg_qualify(s->names.schema, s->names.table, "_idle")) == NULL ||
        (qidle_lit = subst_key(qidle, "'", "''")) == NULL) {
        rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
        goto done;
    }
    free(qidle);
    qidle = qidle_lit;
    if ((s->sql_declare = subst(CLAIM_DECLARE, s->names.qtable, NULL, NULL)) == NULL) {
        rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
        goto done;
    }
    for (i = 0; i < S_COUNT; i++) {
        if ((s->sql[i] = subst(stmts[i].sql, s->names.qtable, s->qlisteners, qidle)) == NULL) {
            rc = fail(s, OUTBOX_ERR_NOMEM, "%s", "out of memory");
            goto done;
        }
    }
    rc = open_conn(s);
done:
    free(qidle);
    if (rc != OUTBOX_OK) {
        snprintf(err, errlen, "%s", s->base.err);
        pg_destroy(&s->base);
        return rc;
    }
    *out = &s->base;
    return OUTBOX_OK;
}
