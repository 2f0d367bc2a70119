/*
 * The worker loop: connect (with backoff), tick the dispatcher, sleep in
 * poll() on the signal pipe (and, for the keeper, the release pipe) until
 * the next job is due, never longer than a heartbeat period. On stop the
 * batch in flight finishes (bounded by publish_timeout and
 * statement_timeout), every lock this worker holds is released, and the
 * connections are closed. Errors are logged when they change, not per pass.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "outbox/broker.h"
#include "outbox/dispatcher.h"
#include "outbox/store.h"
#include "signals.h"
#include "worker.h"

#define CONNECT_BACKOFF_MIN_MS 250
#define CONNECT_BACKOFF_MAX_MS 15000
#define REPEAT_LOG_MS 30000
#define HEARTBEAT_MS 1000
#define RELEASE_BUF 8192

typedef struct worker {
    const outbox_worker_spec_t *spec;
    outbox_config_t cfg; /* shallow copy of spec->cfg */
    outbox_store_t *store;
    outbox_broker_t *broker;
    outbox_dispatcher_t *d;
    outbox_pg_waker_t *waker; /* NULL: none (poll mode, or down: retried) */
    int64_t waker_retry_at, waker_backoff_ms, waker_armed_at;
    bool waker_down; /* its loss is logged once, its return once */
    outbox_stats_slot_t *slot;
    int64_t backoff_ms;
    int64_t claim_started_ms, publish_started_ms, published_ms;
    uint64_t reconnects, releases_freed;
    bool connected_once, ready;
    char last_err[600];
    int64_t last_err_at;
    bool stop;
    /* keeper: release requests read but not yet applied */
    char rbuf[RELEASE_BUF];
    size_t rlen;
    bool release_eof;
} worker_t;

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* a and b equal but for their numbers ("185 of 185 records", ports...) */
static bool
same_shape(const char *a, const char *b)
{
    for (;;) {
        bool da = *a >= '0' && *a <= '9', db = *b >= '0' && *b <= '9';

        if (da != db)
            return false;
        if (da) {
            while (*a >= '0' && *a <= '9')
                a++;
            while (*b >= '0' && *b <= '9')
                b++;
            continue;
        }
        if (*a != *b)
            return false;
        if (*a == '\0')
            return true;
        a++;
        b++;
    }
}

/* Log a failure once, again only if it changes (numbers aside) or keeps
 * going for long. */
static void
report(worker_t *w, const char *what, const char *why)
{
    char line[sizeof(w->last_err)];
    int64_t t = now_ms();

    snprintf(line, sizeof(line), "%s: %s", what, why);
    if (same_shape(line, w->last_err) && t - w->last_err_at < REPEAT_LOG_MS)
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

/* Publish the dispatcher's totals into the stats slot. */
static void
publish_counters(worker_t *w)
{
    uint64_t v[OUTBOX_STATS_NCOUNTERS];
    const outbox_dispatcher_counters_t *c;

    if (w->slot == NULL || w->d == NULL)
        return;
    c = outbox_dispatcher_counters(w->d);
    memset(v, 0, sizeof(v));
    v[OUTBOX_STAT_BATCHES] = c->batches;
    v[OUTBOX_STAT_CLAIMED] = c->claimed;
    v[OUTBOX_STAT_DELIVERED] = c->delivered;
    v[OUTBOX_STAT_FAILED] = c->failed;
    v[OUTBOX_STAT_RETRIED] = c->retried;
    v[OUTBOX_STAT_DEAD] = c->dead;
    v[OUTBOX_STAT_RELEASED] = c->released;
    v[OUTBOX_STAT_DUPLICATES] = c->duplicates;
    v[OUTBOX_STAT_PUBLISH_ERRORS] = c->publish_errors;
    v[OUTBOX_STAT_DB_ERRORS] = c->db_errors;
    v[OUTBOX_STAT_RECONNECTS] = w->reconnects + (w->store != NULL ? w->store->reconnects : 0) +
                                (w->broker != NULL ? w->broker->reconnects : 0);
    v[OUTBOX_STAT_BYTES] = c->bytes;
    v[OUTBOX_STAT_LOCKS_FREED] = c->locks_freed + w->releases_freed;
    v[OUTBOX_STAT_PURGED] = c->purged;
    v[OUTBOX_STAT_DEAD_LETTERS] = c->dead_letters;
    v[OUTBOX_STAT_HELD_BACK] = c->held_back;
    v[OUTBOX_STAT_DEFERRED] = c->deferred;
    outbox_stats_set_counters(w->slot, v);
}

static void
set_state(worker_t *w, unsigned st)
{
    if (w->slot != NULL)
        outbox_stats_set_state(w->slot, st);
}

static void
observe(void *arg, outbox_dispatcher_event_t ev, size_t n, const outbox_record_t *rec,
        const char *why)
{
    worker_t *w = arg;

    switch (ev) {
    case OUTBOX_EV_CLAIM:
        w->claim_started_ms = now_ms();
        set_state(w, OUTBOX_WS_CLAIMING);
        break;
    case OUTBOX_EV_PUBLISH:
        w->publish_started_ms = now_ms();
        if (w->slot != NULL) {
            /* before any message leaves: a crash from here on is counted
             * against these records */
            int64_t lo, hi;

            outbox_dispatcher_inflight(w->d, &lo, &hi);
            atomic_store_explicit(&w->slot->inflight_lo, lo, memory_order_release);
            atomic_store_explicit(&w->slot->inflight_hi, hi, memory_order_release);
        }
        set_state(w, OUTBOX_WS_PUBLISHING);
        break;
    case OUTBOX_EV_MARKED:
        /* Right after the marks commit, so a kill -9 loses next to nothing. */
        if (w->slot != NULL) {
            atomic_store_explicit(&w->slot->inflight_lo, 0, memory_order_release);
            atomic_store_explicit(&w->slot->inflight_hi, 0, memory_order_release);
        }
        publish_counters(w);
        if (w->slot != NULL && n > 0)
            outbox_stats_batch(w->slot, n, (uint64_t)(now_ms() - w->claim_started_ms) * 1000);
        set_state(w, OUTBOX_WS_IDLE);
        log_debug("batch of %zu marked in %lld ms (claim %lld, publish %lld, mark %lld)", n,
                  (long long)(now_ms() - w->claim_started_ms),
                  (long long)(w->publish_started_ms - w->claim_started_ms),
                  (long long)(w->published_ms - w->publish_started_ms),
                  (long long)(now_ms() - w->published_ms));
        break;
    case OUTBOX_EV_DEAD:
        /* rare by nature; an operator must be able to see them without SQL */
        log_warn("record %s (topic %s) parked as dead: %s", rec->id, rec->msg.topic,
                 why != NULL ? why : "?");
        break;
    case OUTBOX_EV_PUBLISHED: w->published_ms = now_ms(); break;
    case OUTBOX_EV_LOCKS_FREED:
        log_info("lock check: freed %zu records locked for longer than max_lock_time", n);
        break;
    }
}

/* The longest time between a publish of a record and its re-publish: a
 * retry after an ack that was lost (retry_max), or a relay that died with
 * it claimed (freed at once by the keeper, or after max_lock_time plus a
 * lock-check period when the whole relay died); plus the publish itself. */
static int64_t
dedupe_span_ms(const outbox_config_t *c)
{
    int64_t crash = c->max_lock_time_ms + c->lock_check_interval_ms;

    return (c->retry_max_ms > crash ? c->retry_max_ms : crash) + c->publish_timeout_ms;
}

static void
warn_cb(void *arg, const char *text)
{
    (void)arg;
    log_warn("%s", text);
}

static int
connect_all(worker_t *w)
{
    char err[8192]; /* a schema check names every object missing */
    int rc;
    bool relay = w->spec->role == OUTBOX_ROLE_RELAY;

    if (w->store == NULL) {
        char appname[OUTBOX_PG_APPNAME_MAX + 1];
        outbox_pg_options_t o = {
            .conninfo = w->cfg.db,
            .schema = w->cfg.schema,
            .table = w->cfg.table,
            .statement_timeout_ms = (int)w->cfg.statement_timeout_ms,
            .per_key_order = w->cfg.per_key_order != 0,
            .delete_delivered = w->cfg.retention_ms == 0,
            .batch_bytes = w->cfg.batch_bytes,
            .idle_tx_timeout_ms = (int)w->cfg.max_lock_time_ms,
            .application_name = appname,
        };

        outbox_pg_appname(w->spec->lock_id, appname);

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
        if (w->connected_once)
            w->reconnects++;
    }
    if (relay && w->broker == NULL) {
        outbox_nats_options_t o = {
            .url = w->cfg.nats_url,
            .mode = (outbox_nats_mode_t)w->cfg.nats_mode,
            .publish_timeout_ms = w->cfg.publish_timeout_ms,
            .connect_timeout_ms = w->cfg.connect_timeout_ms,
            .name = w->spec->lock_id,
            .dedupe_span_ms = dedupe_span_ms(&w->cfg),
            .warn = warn_cb,
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
        w->broker = outbox_fault_wrap_broker(w->broker);
        if (w->connected_once)
            w->reconnects++;
    }
    if (w->d == NULL) {
        outbox_dispatcher_settings_t s;

        outbox_config_dispatcher_settings(&w->cfg, &s);
        err[0] = '\0';
        rc =
            outbox_dispatcher_create(&w->d, w->store, w->broker, &s, w->spec->lock_id,
                                     (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)w, err, sizeof(err));
        if (rc != OUTBOX_OK) {
            log_error("dispatcher: %s", err);
            return rc == OUTBOX_ERR_CONFIG ? 2 : 1;
        }
        /* Lock check and retention run in the keeper only. */
        outbox_dispatcher_set_jobs(w->d, relay, !relay, !relay);
        outbox_dispatcher_set_observer(w->d, observe, w);
        if (relay)
            log_info("relaying %s.%s to NATS (%s mode), lock id %s, batch %lld", w->cfg.schema,
                     w->cfg.table, w->cfg.nats_mode == OUTBOX_NATS_CORE ? "core" : "jetstream",
                     w->spec->lock_id, (long long)w->cfg.batch_size);
        else
            log_info("keeper for %s.%s: lock check every %llds, retention every %llds",
                     w->cfg.schema, w->cfg.table, (long long)(w->cfg.lock_check_interval_ms / 1000),
                     (long long)(w->cfg.cleanup_interval_ms / 1000));
        if (!relay) {
            /* Once per keeper start: a trigger disabled by hand, say, does
             * not stop the relay, but costs validation and wake-ups. */
            outbox_pg_options_t o = {
                .conninfo = w->cfg.db, .schema = w->cfg.schema, .table = w->cfg.table};

            if (outbox_pg_schema_check(&o, err, sizeof(err)) == OUTBOX_ERR_SCHEMA)
                log_warn("schema: %s", err);
        }
    }
    w->connected_once = true;
    return 0;
}

/* The next wake-up connection attempt: capped exponential backoff, reset
 * once the listener has armed. */
static void
waker_backoff(worker_t *w)
{
    w->waker_backoff_ms = w->waker_backoff_ms == 0 ? CONNECT_BACKOFF_MIN_MS
                          : w->waker_backoff_ms * 2 > CONNECT_BACKOFF_MAX_MS
                              ? CONNECT_BACKOFF_MAX_MS
                              : w->waker_backoff_ms * 2;
    w->waker_retry_at = now_ms() + w->waker_backoff_ms;
}

/* The wake-up connection: (re)made with capped backoff; on success one
 * claim pass runs at once, since notifications sent meanwhile are gone. */
static void
waker_connect(worker_t *w)
{
    outbox_pg_options_t o = {
        .conninfo = w->cfg.db,
        .schema = w->cfg.schema,
        .table = w->cfg.table,
        .statement_timeout_ms = (int)w->cfg.statement_timeout_ms,
    };
    char err[512];
    int64_t t = now_ms();

    if (w->waker != NULL || w->spec->role != OUTBOX_ROLE_RELAY || w->cfg.wakeup != 0 ||
        t < w->waker_retry_at)
        return;
    err[0] = '\0';
    if (outbox_pg_waker_create(&w->waker, &o, w->spec->lock_id, err, sizeof(err)) != OUTBOX_OK) {
        if (!w->waker_down)
            log_warn("wake-up connection failed (polling until it is back): %s", err);
        w->waker_down = true;
        waker_backoff(w);
        return;
    }
    /* "back" (and the backoff reset) once it has armed: a connection that
     * fails at once (its table dropped, say) must not cycle every 250 ms */
    if (w->d != NULL)
        outbox_dispatcher_wake(w->d);
}

static void
waker_drop(worker_t *w, const char *why)
{
    /* logged apart from the relay's own failures: its recovery is its own */
    if (!w->waker_down)
        log_warn("wake-up connection lost (polling until it is back): %s", why);
    w->waker_down = true;
    outbox_pg_waker_destroy(w->waker);
    w->waker = NULL;
    waker_backoff(w);
}

/* After a pass: idle -> arm (then one more pass, so a row committed just
 * before the arm is not left to the poll); busy -> disarm, so producers
 * stop notifying. Returns true when a pass must run at once. */
static bool
waker_update(worker_t *w)
{
    char err[512];

    if (w->waker == NULL || w->d == NULL)
        return false;
    if (outbox_dispatcher_idle(w->d)) {
        bool was = outbox_pg_waker_armed(w->waker);
        int64_t t = now_ms();

        /* armed: re-assert the flag once a poll period (a dead worker's
         * registration removed meanwhile must not leave it wrong) */
        if (was && t - w->waker_armed_at < w->cfg.process_interval_ms)
            return false;
        if (outbox_pg_waker_arm(w->waker, err, sizeof(err)) != OUTBOX_OK) {
            waker_drop(w, err);
            return false;
        }
        w->waker_armed_at = t;
        w->waker_backoff_ms = 0;
        if (w->waker_down)
            log_info("wake-up connection back");
        w->waker_down = false;
        if (was)
            return false;
        outbox_dispatcher_wake(w->d);
        return true;
    }
    if (outbox_pg_waker_armed(w->waker) &&
        outbox_pg_waker_disarm(w->waker, err, sizeof(err)) != OUTBOX_OK)
        waker_drop(w, err);
    return false;
}

static void
teardown(worker_t *w)
{
    outbox_pg_waker_destroy(w->waker);
    w->waker = NULL;
    if (w->d != NULL) {
        publish_counters(w);
        if (w->spec->role == OUTBOX_ROLE_RELAY && outbox_dispatcher_release(w->d) != OUTBOX_OK)
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

/* Keeper: read release requests; apply each complete line in order. A
 * request whose statement fails stays queued for the next pass. */
static void
apply_releases(worker_t *w)
{
    char *nl, *sp;
    ssize_t n;
    int64_t freed, parked;

    if (w->spec->release_fd < 0)
        return;
    while (!w->release_eof && w->rlen < sizeof(w->rbuf)) {
        n = read(w->spec->release_fd, w->rbuf + w->rlen, sizeof(w->rbuf) - w->rlen);
        if (n > 0) {
            w->rlen += (size_t)n;
            continue;
        }
        if (n == 0)
            w->release_eof = true;
        else if (errno != EAGAIN && errno != EINTR)
            log_warn("reading lock-release requests failed: %s", strerror(errno));
        break;
    }
    while (w->d != NULL && (nl = memchr(w->rbuf, '\n', w->rlen)) != NULL) {
        uint64_t seq;
        int64_t lo, hi;
        char *p;

        *nl = '\0';
        /* "<request seq> <lo> <hi> <lock id>" */
        seq = strtoull(w->rbuf, &p, 10);
        lo = strtoll(p, &p, 10);
        hi = strtoll(p, &p, 10);
        sp = *p == ' ' && p[1] != '\0' ? p : NULL;
        if (sp != NULL) {
            freed = parked = 0;
            if (outbox_dispatcher_release_crashed(w->d, sp + 1, lo, hi, &freed, &parked) !=
                OUTBOX_OK) {
                *nl = '\n';
                report(w, "releasing the locks of a dead worker failed",
                       outbox_dispatcher_last_error(w->d));
                return;
            }
            if (freed > 0)
                log_info("released %lld records still locked by %s (a crash counted against "
                         "each)",
                         (long long)freed, sp + 1);
            if (parked > 0)
                log_warn("%lld of them dead: worker died while processing them %lld times "
                         "(`outboxd dead list --error 'worker died'`)",
                         (long long)parked, (long long)w->cfg.crash_limit);
            if (w->slot != NULL)
                outbox_stats_heartbeat(w->slot); /* one statement per request */
            w->releases_freed += (uint64_t)freed;
            if (w->slot != NULL)
                atomic_store_explicit(&w->slot->release_acked, seq, memory_order_release);
        }
        w->rlen -= (size_t)(nl + 1 - w->rbuf);
        memmove(w->rbuf, nl + 1, w->rlen);
    }
    if (w->rlen == sizeof(w->rbuf))
        w->rlen = 0; /* a line longer than the buffer: not ours, drop it */
}

/* Sleep until timeout or a signal; handle what arrived. */
static void
wait_and_handle(worker_t *w, int64_t timeout_ms)
{
    struct pollfd pfd[3] = {{.fd = outbox_signals_fd(), .events = POLLIN},
                            {.fd = w->release_eof ? -1 : w->spec->release_fd, .events = POLLIN},
                            {.fd = outbox_pg_waker_fd(w->waker), .events = POLLIN}};
    int flags;

    if (timeout_ms > HEARTBEAT_MS)
        timeout_ms = HEARTBEAT_MS;
    if (timeout_ms > 0 && poll(pfd, 3, (int)timeout_ms) > 0 && pfd[2].fd >= 0 &&
        (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        char err[512];
        bool notified = false;

        if (outbox_pg_waker_consume(w->waker, &notified, err, sizeof(err)) != OUTBOX_OK)
            waker_drop(w, err);
        else if (notified && w->d != NULL)
            outbox_dispatcher_wake(w->d);
    }
    flags = outbox_signals_take();
    if (w->spec->role == OUTBOX_ROLE_KEEPER && w->spec->parent != 0) {
        /* The supervisor stops the keeper last, with USR2, once the relays
         * have drained; a TERM/INT to the whole group must not end it
         * first. Orphaned, it stops on anything. */
        if ((flags & OUTBOX_SIG_RESTART) ||
            ((flags & OUTBOX_SIG_STOP) && getppid() != w->spec->parent))
            w->stop = true;
    } else if (flags & OUTBOX_SIG_STOP) {
        w->stop = true;
    }
    if (flags & OUTBOX_SIG_REOPEN)
        outbox_log_reopen();
    if (w->spec->parent != 0 && getppid() != w->spec->parent) {
        log_warn("supervisor (pid %d) is gone: stopping", (int)w->spec->parent);
        w->stop = true;
    }
    if (w->slot != NULL)
        outbox_stats_heartbeat(w->slot);
}

int
outbox_worker_run(const outbox_worker_spec_t *spec)
{
    worker_t *w;
    int64_t wait;
    int rc, code = 0;

    if ((w = calloc(1, sizeof(*w))) == NULL) {
        log_error("out of memory starting a worker");
        return 1;
    }
    w->spec = spec;
    w->cfg = *spec->cfg;
    w->slot = spec->slot;
    /* A terminal's Ctrl-C or systemd reaches both the supervisor and us, and
     * the supervisor then sends its own TERM: that one must not cut the
     * drain short. The supervisor escalates with SIGKILL when it must. */
    outbox_signals_second_stop_exits(0);
    if (outbox_signals_install() != 0) {
        free(w);
        return 1;
    }
    outbox_signals_block(0); /* the supervisor execs us with them blocked */
    if (w->slot != NULL)
        outbox_stats_heartbeat(w->slot);
    w->backoff_ms = CONNECT_BACKOFF_MIN_MS;
    while (!w->stop) {
        rc = connect_all(w);
        if (rc > 0) {
            code = rc;
            break;
        }
        if (rc < 0) {
            wait_and_handle(w, w->backoff_ms);
            w->backoff_ms = w->backoff_ms * 2 > CONNECT_BACKOFF_MAX_MS ? CONNECT_BACKOFF_MAX_MS
                                                                       : w->backoff_ms * 2;
            continue;
        }
        w->backoff_ms = CONNECT_BACKOFF_MIN_MS;
        apply_releases(w);
        waker_connect(w);
        rc = outbox_dispatcher_tick(w->d, now_ms(), &wait);
        publish_counters(w);
        set_state(w, OUTBOX_WS_IDLE);
        if (rc != OUTBOX_OK) {
            report(w, spec->role == OUTBOX_ROLE_RELAY ? "relay pass failed" : "keeper pass failed",
                   outbox_dispatcher_last_error(w->d));
        } else if (!outbox_dispatcher_failing(w->d)) {
            recovered(w);
            if (!w->ready && w->slot != NULL) {
                /* connected to both servers and one pass done */
                outbox_stats_set_state(w->slot, OUTBOX_WS_IDLE);
                outbox_stats_set_ready(w->slot);
            }
            w->ready = true;
        }
        if (spec->release_fd >= 0 && w->rlen > 0 && wait > 100)
            wait = 100; /* a queued release failed: retry soon */
        if (waker_update(w))
            wait = 0;
        if (w->waker == NULL && w->waker_retry_at != 0 && wait > w->waker_retry_at - now_ms())
            wait = w->waker_retry_at - now_ms(); /* reconnect it on time */
        wait_and_handle(w, wait);
    }
    set_state(w, OUTBOX_WS_STOPPING);
    if (spec->role == OUTBOX_ROLE_RELAY)
        log_info("stopping: releasing locks of %s", spec->lock_id);
    if (w->d != NULL && spec->role == OUTBOX_ROLE_RELAY) {
        const outbox_dispatcher_counters_t *c = outbox_dispatcher_counters(w->d);

        log_info("totals: %llu batches, %llu delivered, %llu retried, %llu dead, %llu released, "
                 "%llu deferred",
                 (unsigned long long)c->batches, (unsigned long long)c->delivered,
                 (unsigned long long)c->retried, (unsigned long long)c->dead,
                 (unsigned long long)c->released, (unsigned long long)c->deferred);
    }
    if (spec->role == OUTBOX_ROLE_KEEPER)
        apply_releases(w); /* last requests (workers killed at drain) */
    teardown(w);
    free(w);
    log_info("stopped");
    return code;
}
