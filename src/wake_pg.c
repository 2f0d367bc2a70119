/*
 * The wake-up listener: one extra PostgreSQL connection per relay worker
 * that LISTENs on its table's channel. Armed, the worker's lock id is a row
 * of <table>_listeners and the flag <table>_idle holds the number of such
 * rows, so producers' inserts notify; disarmed (busy), the flag drops and
 * producers only read it. Arm and disarm serialize on an advisory lock so
 * the flag matches the table; re-arming re-asserts it (a keeper that freed
 * a dead worker's row, or a racing reconcile, is corrected within one idle
 * poll). Invariant: armed == the row exists as far as this session knows;
 * any failure leaves the caller to destroy the waker (the row goes with
 * the session, pruned by the lock check) and make a new one.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/store.h"
#include "pg_util.h"

struct outbox_pg_waker {
    PGconn *conn;
    char *lock_id;
    char *sql_arm, *sql_disarm;
    bool armed;
};

static int
exec_cmd(outbox_pg_waker_t *w, const char *what, const char *sql, char *err, size_t errlen)
{
    PGresult *res = PQexec(w->conn, sql);
    int rc = OUTBOX_OK;

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = outbox_pg_status(w->conn, res);
        outbox_pg_error(err, errlen, what, w->conn, res);
    }
    PQclear(res);
    return rc;
}

/* One transaction: take the table's wake-up advisory lock, run change
 * (a format with the listeners table and the quoted lock id), set the flag
 * to the number of listeners. malloc'd; NULL on NOMEM. */
static char *
flag_sql(const char *channel, const char *qidle_lit, const char *qlisteners, const char *change,
         const char *lock_lit)
{
    char body[512], *out;
    size_t n;
    unsigned long long h = 0;
    long long key;
    const char *p;

    for (p = channel; *p != '\0'; p++)
        h = h * 31 + (unsigned char)*p; /* any stable number: the lock's name */
    key = (long long)(h >> 1);          /* in bigint range */
    snprintf(body, sizeof(body), change, qlisteners, lock_lit);
    n = strlen(body) + strlen(qlisteners) + strlen(qidle_lit) + 256;
    if ((out = malloc(n)) == NULL)
        return NULL;
    snprintf(out, n,
             "BEGIN; SELECT pg_advisory_xact_lock(%lld); %s; "
             "SELECT setval(%s, (SELECT count(*) FROM %s)); COMMIT",
             key, body, qidle_lit, qlisteners);
    return out;
}

int
outbox_pg_waker_create(outbox_pg_waker_t **out, const outbox_pg_options_t *opt, const char *lock_id,
                       char *err, size_t errlen)
{
    outbox_pg_names_t n = {0};
    outbox_pg_waker_t *w = NULL;
    char ch[OUTBOX_PG_CHANNEL_LEN + 1], listen[64], *ql = NULL, *qi = NULL, *lit = NULL,
                                                    *qil = NULL;
    int rc;

    *out = NULL;
    if ((rc = outbox_pg_names_init(&n, opt->schema, opt->table, err, errlen)) != OUTBOX_OK)
        return rc;
    outbox_pg_channel(n.schema, n.table, ch);
    if ((w = calloc(1, sizeof(*w))) == NULL ||
        (ql = outbox_pg_qualify(n.schema, n.table, "_listeners")) == NULL ||
        (qi = outbox_pg_qualify(n.schema, n.table, "_idle")) == NULL ||
        (w->lock_id = strdup(lock_id)) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = OUTBOX_ERR_NOMEM;
        goto fail;
    }
    if ((rc = outbox_pg_connect(&w->conn, opt->conninfo, err, errlen)) != OUTBOX_OK)
        goto fail;
    if ((lit = PQescapeLiteral(w->conn, lock_id, strlen(lock_id))) == NULL ||
        (qil = PQescapeLiteral(w->conn, qi, strlen(qi))) == NULL ||
        (w->sql_arm = flag_sql(ch, qil, ql,
                               "INSERT INTO %s (lock_id) VALUES (%s) ON CONFLICT "
                               "(lock_id) DO UPDATE SET backend_pid = "
                               "pg_backend_pid(), since = now()",
                               lit)) == NULL ||
        (w->sql_disarm = flag_sql(ch, qil, ql, "DELETE FROM %s WHERE lock_id = %s", lit)) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = OUTBOX_ERR_NOMEM;
        goto fail;
    }
    snprintf(listen, sizeof(listen), "LISTEN \"%s\"", ch);
    if ((rc = exec_cmd(w, "LISTEN", listen, err, errlen)) != OUTBOX_OK)
        goto fail;
    if (opt->statement_timeout_ms > 0) {
        char set[64];

        snprintf(set, sizeof(set), "SET statement_timeout = %d", opt->statement_timeout_ms);
        if ((rc = exec_cmd(w, "set statement_timeout", set, err, errlen)) != OUTBOX_OK)
            goto fail;
    }
    if (PQsetnonblocking(w->conn, 1) != 0) {
        snprintf(err, errlen, "wake-up connection: cannot make it non-blocking");
        rc = OUTBOX_ERR_UNREACHABLE;
        goto fail;
    }
    free(ql);
    free(qi);
    PQfreemem(lit);
    PQfreemem(qil);
    outbox_pg_names_free(&n);
    *out = w;
    return OUTBOX_OK;
fail:
    free(ql);
    free(qi);
    PQfreemem(lit);
    PQfreemem(qil);
    outbox_pg_names_free(&n);
    outbox_pg_waker_destroy(w);
    return rc;
}

int
outbox_pg_waker_fd(const outbox_pg_waker_t *w)
{
    return w != NULL && w->conn != NULL ? PQsocket(w->conn) : -1;
}

bool
outbox_pg_waker_armed(const outbox_pg_waker_t *w)
{
    return w != NULL && w->armed;
}

int
outbox_pg_waker_arm(outbox_pg_waker_t *w, char *err, size_t errlen)
{
    int rc;

    if ((rc = exec_cmd(w, "arming the wake-up", w->sql_arm, err, errlen)) == OUTBOX_OK)
        w->armed = true;
    return rc;
}

int
outbox_pg_waker_disarm(outbox_pg_waker_t *w, char *err, size_t errlen)
{
    int rc;

    if (!w->armed)
        return OUTBOX_OK;
    if ((rc = exec_cmd(w, "disarming the wake-up", w->sql_disarm, err, errlen)) == OUTBOX_OK)
        w->armed = false;
    return rc;
}

int
outbox_pg_waker_consume(outbox_pg_waker_t *w, bool *notified, char *err, size_t errlen)
{
    PGnotify *nt;

    *notified = false;
    /* A readable socket that yields nothing but EOF is a dead connection:
     * report it, so the caller drops it instead of polling it in a loop. */
    if (PQconsumeInput(w->conn) == 0 || PQstatus(w->conn) != CONNECTION_OK) {
        outbox_pg_error(err, errlen, "wake-up connection", w->conn, NULL);
        return OUTBOX_ERR_UNREACHABLE;
    }
    while ((nt = PQnotifies(w->conn)) != NULL) {
        *notified = true;
        PQfreemem(nt);
    }
    return OUTBOX_OK;
}

void
outbox_pg_waker_destroy(outbox_pg_waker_t *w)
{
    char err[256];

    if (w == NULL)
        return;
    if (w->conn != NULL && w->armed && PQstatus(w->conn) == CONNECTION_OK) {
        PQsetnonblocking(w->conn, 0);
        outbox_pg_waker_disarm(w, err, sizeof(err));
    }
    PQfinish(w->conn);
    free(w->lock_id);
    free(w->sql_arm);
    free(w->sql_disarm);
    free(w);
}
