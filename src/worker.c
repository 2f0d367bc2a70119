/*
 * The worker loop: connect (with backoff), tick the dispatcher, sleep in
 * poll() on the signal pipe until the next job is due. On stop the batch in
 * flight finishes (each pass is bounded by publish_timeout and
 * statement_timeout), every lock this worker holds is released, and the
 * connections are closed. Errors are logged when they change, not per pass.
 */
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "outbox/broker.h"
#include "outbox/dispatcher.h"
#include "outbox/store.h"
#include "signals.h"
#include "worker.h"

#define CONNECT_BACKOFF_MIN_MS 250
#define CONNECT_BACKOFF_MAX_MS 15000
#define REPEAT_LOG_MS 30000

typedef struct worker {
    const outbox_worker_spec_t *spec;
    outbox_config_t cfg; /* own copy after a reload; else a shallow copy */
    bool cfg_owned;
    outbox_store_t *store;
    outbox_broker_t *broker;
    outbox_dispatcher_t *d;
    int64_t backoff_ms;
    char last_err[600];
    int64_t last_err_at;
    bool stop;
} worker_t;

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Log a failure once, again only if it changes or keeps going for long. */
static void
report(worker_t *w, const char *what, const char *why)
{
    char line[sizeof(w->last_err)];
    int64_t t = now_ms();

    snprintf(line, sizeof(line), "%s: %s", what, why);
    if (strcmp(line, w->last_err) == 0 && t - w->last_err_at < REPEAT_LOG_MS)
        return;
    log_warn("%s", line);
    snprintf(w->last_err, sizeof(w->last_err), "%s", line);
    w->last_err_at = t;
}

static void
recovered(worker_t *w)
{
    if (w->last_err[0] != '\0') {
        log_info("recovered after: %s", w->last_err);
        w->last_err[0] = '\0';
    }
}

static int
connect_all(worker_t *w)
{
    char err[512];
    int rc;

    if (w->store == NULL) {
        outbox_pg_options_t o = {
            .conninfo = w->cfg.db,
            .schema = w->cfg.schema,
            .table = w->cfg.table,
            .statement_timeout_ms = (int)w->cfg.statement_timeout_ms,
        };

        err[0] = '\0';
        rc = outbox_pg_store_create(&w->store, &o, err, sizeof(err));
        if (rc == OUTBOX_ERR_CONFIG) {
            log_error("db: %s", err);
            return 2;
        }
        if (rc == OUTBOX_ERR_SCHEMA) {
            log_error("db: %s", err);
            return 1;
        }
        if (rc != OUTBOX_OK) {
            report(w, "connecting to PostgreSQL failed", err);
            return -1;
        }
    }
    if (w->broker == NULL) {
        outbox_nats_options_t o = {
            .url = w->cfg.nats_url,
            .mode = (outbox_nats_mode_t)w->cfg.nats_mode,
            .publish_timeout_ms = w->cfg.publish_timeout_ms,
            .connect_timeout_ms = w->cfg.connect_timeout_ms,
            .name = w->spec->lock_id,
        };

        err[0] = '\0';
        /* cnats starts threads here: they inherit a mask without our signals */
        outbox_signals_block(1);
        rc = outbox_nats_broker_create(&w->broker, &o, err, sizeof(err));
        outbox_signals_block(0);
        if (rc == OUTBOX_ERR_CONFIG) {
            log_error("nats: %s", err);
            return 2;
        }
        if (rc != OUTBOX_OK) {
            report(w, "connecting to NATS failed", err);
            return -1;
        }
    }
    if (w->d == NULL) {
        outbox_dispatcher_settings_t s;

        outbox_config_dispatcher_settings(&w->cfg, &s);
        err[0] = '\0';
        rc = outbox_dispatcher_create(&w->d, w->store, w->broker, &s, w->spec->lock_id,
                                      (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)w, err,
                                      sizeof(err));
        if (rc != OUTBOX_OK) {
            log_error("dispatcher: %s", err);
            return rc == OUTBOX_ERR_CONFIG ? 2 : 1;
        }
        log_info("relaying %s.%s to NATS (%s mode), lock id %s, batch %lld", w->cfg.schema,
                 w->cfg.table, w->cfg.nats_mode == OUTBOX_NATS_CORE ? "core" : "jetstream",
                 w->spec->lock_id, (long long)w->cfg.batch_size);
    }
    return 0;
}

static void
teardown(worker_t *w)
{
    if (w->d != NULL) {
        if (outbox_dispatcher_release(w->d) != OUTBOX_OK)
            log_warn("could not release locks of %s (they expire after max_lock_time): %s",
                     w->spec->lock_id, outbox_dispatcher_last_error(w->d));
        outbox_dispatcher_destroy(w->d);
        w->d = NULL;
    }
    outbox_broker_destroy(w->broker);
    w->broker = NULL;
    outbox_store_destroy(w->store);
    w->store = NULL;
}

static void
reload(worker_t *w)
{
    outbox_config_t n;
    char err[512];

    if (w->spec->reload == NULL) {
        log_info("SIGHUP: no configuration file to re-read; logs reopened");
        outbox_log_reopen();
        return;
    }
    if (w->spec->reload(&n, err, sizeof(err), w->spec->reload_arg) != OUTBOX_OK) {
        log_error("reload rejected, keeping the running configuration: %s", err);
        return;
    }
    teardown(w);
    if (w->cfg_owned)
        outbox_config_free(&w->cfg);
    w->cfg = n;
    w->cfg_owned = true;
    outbox_log_set_level((int)w->cfg.log_level);
    if (outbox_log_open((int)w->cfg.log_level, w->cfg.log_file, NULL) != 0)
        log_error("log file %s: cannot open, logging to stderr", w->cfg.log_file);
    log_info("configuration reloaded");
}

/* Sleep until timeout or a signal; handle what arrived. */
static void
wait_and_handle(worker_t *w, int64_t timeout_ms)
{
    struct pollfd pfd = {.fd = outbox_signals_fd(), .events = POLLIN};
    int flags;

    if (timeout_ms > 0)
        poll(&pfd, 1, timeout_ms > 60000 ? 60000 : (int)timeout_ms);
    flags = outbox_signals_take();
    if (flags & OUTBOX_SIG_STOP)
        w->stop = true;
    if (flags & OUTBOX_SIG_REOPEN)
        outbox_log_reopen();
    if ((flags & OUTBOX_SIG_RELOAD) && !w->stop)
        reload(w);
}

int
outbox_worker_run(const outbox_worker_spec_t *spec)
{
    worker_t w;
    int64_t wait;
    int rc, code = 0;

    memset(&w, 0, sizeof(w));
    w.spec = spec;
    w.cfg = *spec->cfg;
    if (outbox_signals_install() != 0)
        return 1;
    w.backoff_ms = CONNECT_BACKOFF_MIN_MS;
    while (!w.stop) {
        rc = connect_all(&w);
        if (rc > 0) {
            code = rc;
            break;
        }
        if (rc < 0) {
            wait_and_handle(&w, w.backoff_ms);
            w.backoff_ms = w.backoff_ms * 2 > CONNECT_BACKOFF_MAX_MS ? CONNECT_BACKOFF_MAX_MS
                                                                     : w.backoff_ms * 2;
            continue;
        }
        w.backoff_ms = CONNECT_BACKOFF_MIN_MS;
        rc = outbox_dispatcher_tick(w.d, now_ms(), &wait);
        if (rc != OUTBOX_OK)
            report(&w, "relay pass failed", outbox_dispatcher_last_error(w.d));
        else
            recovered(&w);
        wait_and_handle(&w, wait);
    }
    log_info("stopping: releasing locks of %s", spec->lock_id);
    if (w.d != NULL) {
        const outbox_dispatcher_counters_t *c = outbox_dispatcher_counters(w.d);

        log_info("totals: %llu batches, %llu delivered, %llu retried, %llu dead, %llu released",
                 (unsigned long long)c->batches, (unsigned long long)c->delivered,
                 (unsigned long long)c->retried, (unsigned long long)c->dead,
                 (unsigned long long)c->released);
    }
    teardown(&w);
    if (w.cfg_owned)
        outbox_config_free(&w.cfg);
    log_info("stopped");
    return code;
}
