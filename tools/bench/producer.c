/*
 * Producer threads. The measured transaction is what an application does:
 * BEGIN; B x enqueue; COMMIT, each a round trip. The optional pg_notify is
 * sent in the same round trip as COMMIT, so notify-every-commit measures
 * the notification's cost at commit (PostgreSQL serializes notifying
 * commits on one lock) and not an extra round trip.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "db.h"
#include "outbox/outbox.h"
#include "producer.h"
#include "util.h"

#define MAX_HEADERS 64
#define LATE_US 1000

typedef struct shared {
    const producer_cfg_t *cfg;
    pthread_cond_t cond; /* with mu: ready count and go flag */
    int ready, go;
    int64_t start_us, deadline_us;
    atomic_size_t next_tx;
    atomic_int abort;
    pthread_mutex_t mu; /* first_error, totals */
    char first_error[600];
    uint64_t commits, msgs, late;
    int64_t max_lag_us, last_end_us;
    int64_t *tx_us; /* every thread's transaction durations, merged at its end */
    size_t ntx_us;
} shared_t;

typedef struct worker {
    shared_t *sh;
    int no;
    PGconn *conn;
    char *enq_sql;
    char hdr_json[2048];
    char names[MAX_HEADERS][16], values[MAX_HEADERS][16];
    outbox_header_t hdrs[MAX_HEADERS];
    char *body;
    size_t body_cap;
    uint64_t commits, msgs, late;
    int64_t max_lag_us, end_us;
    int64_t *tx_us;
    size_t ntx_us, tx_cap;
} worker_t;

static void
fail(worker_t *w, const char *what, const char *why)
{
    shared_t *sh = w->sh;
    char msg[512];

    snprintf(msg, sizeof(msg), "%s", why != NULL ? why : "");
    msg[strcspn(msg, "\n")] = '\0';
    pthread_mutex_lock(&sh->mu);
    if (sh->first_error[0] == '\0')
        snprintf(sh->first_error, sizeof(sh->first_error), "producer connection %d: %s: %s", w->no,
                 what, msg);
    pthread_mutex_unlock(&sh->mu);
    atomic_store(&sh->abort, 1);
}

/* Body of message idx into w->body; returns its length. */
static size_t
fill_body(worker_t *w, uint64_t idx)
{
    const producer_cfg_t *c = w->sh->cfg;
    int n = snprintf(w->body, w->body_cap, "%llu ", (unsigned long long)idx);
    size_t len = (size_t)c->body_size > (size_t)n ? (size_t)c->body_size : (size_t)n;

    memset(w->body + n, 'x', len - (size_t)n);
    return len;
}

static int exec_cmd(worker_t *w, const char *sql, const char *expect_tag);
static int enqueue(worker_t *w, uint64_t idx);

/* One enqueue rolled back before the clock starts: a new backend compiles
 * the PL/pgSQL validator and plans its statements on first use, which
 * would otherwise be charged to the first measured transactions. */
static int
warm_up(worker_t *w)
{
    if (exec_cmd(w, "BEGIN", NULL) != 0 || enqueue(w, 0) != 0)
        return -1;
    return exec_cmd(w, "ROLLBACK", NULL);
}

static int
setup(worker_t *w)
{
    const producer_cfg_t *c = w->sh->cfg;
    char fn[64], *qs = NULL, *qf = NULL;
    PGresult *r;
    size_t len;
    long i;

    if ((w->conn = db_connect(c->conninfo, "producer")) == NULL) {
        fail(w, "connect", "see above");
        return -1;
    }
    w->body_cap = (size_t)c->body_size + 32;
    if ((w->body = malloc(w->body_cap)) == NULL) {
        fail(w, "setup", "out of memory");
        return -1;
    }
    db_headers_json(c->headers, w->hdr_json, sizeof(w->hdr_json));
    for (i = 0; i < c->headers && i < MAX_HEADERS; i++) {
        snprintf(w->names[i], sizeof(w->names[i]), "bench-h%ld", i + 1);
        snprintf(w->values[i], sizeof(w->values[i]), "value-%ld", i + 1);
        w->hdrs[i].name = w->names[i];
        w->hdrs[i].value = w->values[i];
    }
    if (c->api != BENCH_API_SQL)
        return warm_up(w);
    /* The migration names the function <table>_enqueue in the table's schema. */
    snprintf(fn, sizeof(fn), "%s_enqueue", BENCH_TABLE);
    qs = db_qident(w->conn, c->schema);
    qf = db_qident(w->conn, fn);
    len = (qs ? strlen(qs) : 0) + (qf ? strlen(qf) : 0) + 96;
    if (qs == NULL || qf == NULL || (w->enq_sql = malloc(len)) == NULL) {
        free(qs);
        free(qf);
        fail(w, "setup", "out of memory");
        return -1;
    }
    snprintf(w->enq_sql, len, "SELECT %s.%s($1::text, $2::text, $3::jsonb, $4::bytea)", qs, qf);
    free(qs);
    free(qf);
    r = PQprepare(w->conn, "enq", w->enq_sql, 4, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fail(w, "prepare outbox_enqueue", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    return warm_up(w);
}

static int
exec_cmd(worker_t *w, const char *sql, const char *expect_tag)
{
    PGresult *r = PQexec(w->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;

    if (!ok)
        fail(w, sql, PQresultErrorMessage(r));
    else if (expect_tag != NULL && strcmp(PQcmdStatus(r), expect_tag) != 0) {
        fail(w, sql, "transaction rolled back");
        ok = 0;
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static int
enqueue(worker_t *w, uint64_t idx)
{
    const producer_cfg_t *c = w->sh->cfg;
    size_t len = fill_body(w, idx);

    if (c->api == BENCH_API_SQL) {
        const char *values[4] = {c->topic, "bench", w->hdr_json, w->body};
        int lengths[4] = {0, 0, 0, (int)len}, formats[4] = {0, 0, 0, 1};
        PGresult *r = PQexecPrepared(w->conn, "enq", 4, values, lengths, formats, 0);
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK;

        if (!ok)
            fail(w, "outbox_enqueue (SQL)", PQresultErrorMessage(r));
        PQclear(r);
        return ok ? 0 : -1;
    } else {
        outbox_message_t m = {.topic = c->topic,
                              .key = "bench",
                              .headers = w->hdrs,
                              .nheaders = (size_t)c->headers,
                              .body = w->body,
                              .body_len = len};
        char id[OUTBOX_ID_LEN + 1], err[512];

        if (outbox_enqueue(w->conn, c->schema, BENCH_TABLE, &m, id, err, sizeof(err)) !=
            OUTBOX_OK) {
            fail(w, "outbox_enqueue (C API)", err);
            return -1;
        }
        return 0;
    }
}

/* Keep one transaction's duration; on out of memory the sample just stops
 * growing (the percentiles then cover the transactions kept). */
static void
keep_duration(worker_t *w, int64_t us)
{
    if (w->ntx_us == w->tx_cap) {
        size_t cap = w->tx_cap ? w->tx_cap * 2 : 4096;
        int64_t *p = realloc(w->tx_us, cap * sizeof(*p));

        if (p == NULL)
            return;
        w->tx_us = p;
        w->tx_cap = cap;
    }
    w->tx_us[w->ntx_us++] = us;
}

/* One transaction: messages tx*B .. tx*B+B-1. */
static int
transaction(worker_t *w, uint64_t tx)
{
    const producer_cfg_t *c = w->sh->cfg;
    uint64_t first = tx * (uint64_t)c->batch;
    int64_t now, begin = bench_now_us();
    long j;

    if (exec_cmd(w, "BEGIN", NULL) != 0)
        return -1;
    for (j = 0; j < c->batch; j++)
        if (enqueue(w, first + (uint64_t)j) != 0)
            return -1;
    if (c->sent_us != NULL) {
        now = bench_now_us();
        for (j = 0; j < c->batch; j++)
            atomic_store_explicit(&c->sent_us[first + (uint64_t)j], now, memory_order_relaxed);
    }
    if (exec_cmd(w, c->notify ? "SELECT pg_notify('bench', ''); COMMIT" : "COMMIT", "COMMIT") != 0)
        return -1;
    keep_duration(w, bench_now_us() - begin);
    w->commits++;
    w->msgs += (uint64_t)c->batch;
    return 0;
}

static void
run_flat(worker_t *w)
{
    shared_t *sh = w->sh;
    /* Index space per thread: bodies stay distinct, nobody reads them. */
    uint64_t tx = (uint64_t)w->no << 40;

    while (!atomic_load_explicit(&sh->abort, memory_order_relaxed) && !bench_stopping() &&
           bench_now_us() < sh->deadline_us) {
        if (transaction(w, tx++) != 0)
            return;
    }
}

static void
run_paced(worker_t *w)
{
    shared_t *sh = w->sh;
    const producer_cfg_t *c = sh->cfg;
    size_t tx;
    int64_t lag;

    while (!atomic_load_explicit(&sh->abort, memory_order_relaxed)) {
        tx = atomic_fetch_add(&sh->next_tx, 1);
        if (tx >= c->ntx)
            return;
        if (bench_sleep_until_us(sh->start_us + c->schedule[tx]) != 0)
            return;
        lag = bench_now_us() - (sh->start_us + c->schedule[tx]);
        if (lag > w->max_lag_us)
            w->max_lag_us = lag;
        if (lag > LATE_US)
            w->late++;
        if (transaction(w, tx) != 0)
            return;
    }
}

static void *
thread_main(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;

    setup(w); /* a failure sets abort; the gate below is still passed */
    pthread_mutex_lock(&sh->mu);
    sh->ready++;
    pthread_cond_broadcast(&sh->cond);
    while (!sh->go)
        pthread_cond_wait(&sh->cond, &sh->mu);
    pthread_mutex_unlock(&sh->mu);
    if (!atomic_load(&sh->abort)) {
        if (sh->cfg->schedule != NULL)
            run_paced(w);
        else
            run_flat(w);
    }
    w->end_us = bench_now_us();
    pthread_mutex_lock(&sh->mu);
    sh->commits += w->commits;
    sh->msgs += w->msgs;
    sh->late += w->late;
    if (w->max_lag_us > sh->max_lag_us)
        sh->max_lag_us = w->max_lag_us;
    if (w->end_us > sh->last_end_us)
        sh->last_end_us = w->end_us;
    if (w->ntx_us > 0) {
        int64_t *p = realloc(sh->tx_us, (sh->ntx_us + w->ntx_us) * sizeof(*p));

        if (p != NULL) {
            memcpy(p + sh->ntx_us, w->tx_us, w->ntx_us * sizeof(*p));
            sh->tx_us = p;
            sh->ntx_us += w->ntx_us;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    free(w->tx_us);
    PQfinish(w->conn);
    free(w->body);
    free(w->enq_sql);
    return NULL;
}

int
producer_run(const producer_cfg_t *c, producer_result_t *r)
{
    shared_t sh;
    worker_t *ws = NULL;
    pthread_t *tids = NULL;
    int i, started = 0, rc = -1;

    memset(r, 0, sizeof(*r));
    memset(&sh, 0, sizeof(sh));
    sh.cfg = c;
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cond, NULL);
    ws = calloc((size_t)c->connections, sizeof(*ws));
    tids = calloc((size_t)c->connections, sizeof(*tids));
    if (ws == NULL || tids == NULL) {
        bench_err("out of memory for %d producers", c->connections);
        goto done;
    }
    for (i = 0; i < c->connections; i++) {
        ws[i].sh = &sh;
        ws[i].no = i + 1;
        if (pthread_create(&tids[i], NULL, thread_main, &ws[i]) != 0) {
            snprintf(sh.first_error, sizeof(sh.first_error), "cannot start producer thread %d",
                     i + 1);
            atomic_store(&sh.abort, 1);
            break;
        }
        started++;
    }
    /* The clock starts once every connection is open and prepared. */
    pthread_mutex_lock(&sh.mu);
    while (sh.ready < started)
        pthread_cond_wait(&sh.cond, &sh.mu);
    sh.start_us = bench_now_us();
    sh.deadline_us = sh.start_us + (int64_t)(c->seconds * 1e6);
    sh.last_end_us = sh.start_us;
    sh.go = 1;
    pthread_cond_broadcast(&sh.cond);
    pthread_mutex_unlock(&sh.mu);
    for (i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    r->commits = sh.commits;
    r->msgs = sh.msgs;
    r->late = sh.late;
    r->max_lag_us = sh.max_lag_us;
    r->elapsed_s = (double)(sh.last_end_us - sh.start_us) / 1e6;
    stats_summarize(sh.tx_us, sh.ntx_us, &r->tx);
    if (sh.first_error[0] != '\0')
        bench_err("%s", sh.first_error);
    else if (bench_stopping())
        bench_err("interrupted");
    else
        rc = 0;
done:
    pthread_cond_destroy(&sh.cond);
    pthread_mutex_destroy(&sh.mu);
    free(sh.tx_us);
    free(ws);
    free(tids);
    return rc;
}
