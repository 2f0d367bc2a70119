/*
 * The wake-up listener: one extra PostgreSQL connection per relay worker
 * that LISTENs on its table's channel. While armed, the worker's lock id is
 * a row of <table>_listeners and every INSERT statement into the outbox
 * notifies; disarmed (busy), producers only probe that table. Invariant:
 * armed == the row exists as far as this session knows; any failure leaves
 * the caller to destroy the waker (the row goes with the session, pruned by
 * the lock check) and make a new one.
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
exec_cmd(outbox_pg_waker_t *w, const char *what, const char *sql, int nparams, char *err,
         size_t errlen)
{
    const char *params[1] = {w->lock_id};
    PGresult *res = nparams > 0 ? PQexecParams(w->conn, sql, 1, NULL, params, NULL, NULL, 0)
                                : PQexec(w->conn, sql);
    int rc = OUTBOX_OK;

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = outbox_pg_status(w->conn, res);
        outbox_pg_error(err, errlen, what, w->conn, res);
    }
    PQclear(res);
    return rc;
}

static char *
build(const char *prefix, const char *qname, const char *suffix)
{
    size_t n = strlen(prefix) + strlen(qname) + strlen(suffix) + 1;
    char *p = malloc(n);

    if (p != NULL)
        snprintf(p, n, "%s%s%s", prefix, qname, suffix);
    return p;
}

int
outbox_pg_waker_create(outbox_pg_waker_t **out, const outbox_pg_options_t *opt, const char *lock_id,
                       char *err, size_t errlen)
{
    outbox_pg_names_t n = {0};
    outbox_pg_waker_t *w = NULL;
    char ch[OUTBOX_PG_CHANNEL_LEN + 1], listen[64], *ql = NULL;
    int rc;

    *out = NULL;
    if ((rc = outbox_pg_names_init(&n, opt->schema, opt->table, err, errlen)) != OUTBOX_OK)
        return rc;
    if ((w = calloc(1, sizeof(*w))) == NULL ||
        (ql = outbox_pg_qualify(n.schema, n.table, "_listeners")) == NULL ||
        (w->lock_id = strdup(lock_id)) == NULL ||
        (w->sql_arm = build("INSERT INTO ", ql,
                            " (lock_id) VALUES ($1) ON CONFLICT (lock_id) DO UPDATE SET"
                            " backend_pid = pg_backend_pid(), since = now()")) == NULL ||
        (w->sql_disarm = build("DELETE FROM ", ql, " WHERE lock_id = $1")) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = OUTBOX_ERR_NOMEM;
        goto fail;
    }
    if ((rc = outbox_pg_connect(&w->conn, opt->conninfo, err, errlen)) != OUTBOX_OK)
        goto fail;
    outbox_pg_channel(n.schema, n.table, ch);
    snprintf(listen, sizeof(listen), "LISTEN \"%s\"", ch);
    if ((rc = exec_cmd(w, "LISTEN", listen, 0, err, errlen)) != OUTBOX_OK)
        goto fail;
    if (opt->statement_timeout_ms > 0) {
        char set[64];

        snprintf(set, sizeof(set), "SET statement_timeout = %d", opt->statement_timeout_ms);
        if ((rc = exec_cmd(w, "set statement_timeout", set, 0, err, errlen)) != OUTBOX_OK)
            goto fail;
    }
    if (PQsetnonblocking(w->conn, 1) != 0) {
        snprintf(err, errlen, "wake-up connection: cannot make it non-blocking");
        rc = OUTBOX_ERR_UNREACHABLE;
        goto fail;
    }
    free(ql);
    outbox_pg_names_free(&n);
    *out = w;
    return OUTBOX_OK;
fail:
    free(ql);
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

    if (w->armed)
        return OUTBOX_OK;
    if ((rc = exec_cmd(w, "arming the wake-up", w->sql_arm, 1, err, errlen)) == OUTBOX_OK)
        w->armed = true;
    return rc;
}

int
outbox_pg_waker_disarm(outbox_pg_waker_t *w, char *err, size_t errlen)
{
    int rc;

    if (!w->armed)
        return OUTBOX_OK;
    if ((rc = exec_cmd(w, "disarming the wake-up", w->sql_disarm, 1, err, errlen)) == OUTBOX_OK)
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
