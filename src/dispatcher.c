/*
 * The dispatcher: claim -> publish -> mark over the Store and Broker
 * interfaces, plus the lock-check and cleanup jobs. Pure logic: no system
 * calls, no globals, time comes from the caller.
 * Invariants: every claimed record gets exactly one mark; a record whose
 * publish was acknowledged is only ever marked DELIVERED; an unreachable
 * broker charges no attempt; a batch whose marks failed is kept and its
 * marks re-applied before anything new is claimed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/dispatcher.h"
#include "validate.h"

#define LOCK_ID_MAX 128
#define ERR_BACKOFF_MIN_MS 100
#define ERR_BACKOFF_MAX_MS 10000
#define CLEANUP_AGAIN_MS 100 /* pause between retention batches while more is due */

struct outbox_dispatcher {
    outbox_store_t *store;
    outbox_broker_t *broker;
    outbox_dispatcher_settings_t s;
    char lock_id[LOCK_ID_MAX];
    uint64_t rng;

    bool run_process, run_lock_check, run_cleanup;
    bool started;
    bool more;     /* the last claim was a full batch */
    bool empty;    /* the last process pass claimed nothing */
    bool unmarked; /* batch/res/marks hold marks not yet applied */
    int64_t next_process, next_lock_check, next_cleanup;
    int64_t gap;      /* delay before the poll after next while nothing is found */
    int64_t last_gap; /* delay chosen after the last pass */
    int errors;       /* consecutive failed process passes, for backoff */
    int lc_errors;    /* consecutive failed lock checks (the keeper has no process job) */
    int cl_errors;    /* consecutive failed cleanups */

    outbox_batch_t batch;
    outbox_pub_result_t *res;
    outbox_mark_t *marks;
    char (*reasons)[sizeof(((outbox_pub_result_t *)0)->error) + 32];
    size_t cap;
    /* scratch for publishing a subset of the batch (per-key waves, dead
     * letters): the subset's records, results and batch indices */
    outbox_record_t *sub_recs;
    outbox_pub_result_t *sub_res;
    size_t *sub_idx, *wave, *prev;
    const char **sub_why;
    struct keyed {
        const char *key;
        size_t i;
    } * keyed;
    char *dead_subject; /* NULL: no dead-letter copies */

    outbox_dispatcher_observer_fn observe;
    void *observe_arg;

    outbox_dispatcher_counters_t c;
    char err[512];
};

#define OBSERVE(d, ev, n)                                                                          \
    do {                                                                                           \
        if ((d)->observe != NULL)                                                                  \
            (d)->observe((d)->observe_arg, (ev), (n), NULL, NULL);                                 \
    } while (0)

void
outbox_dispatcher_set_observer(outbox_dispatcher_t *d, outbox_dispatcher_observer_fn fn, void *arg)
{
    d->observe = fn;
    d->observe_arg = arg;
}

void
outbox_dispatcher_settings_default(outbox_dispatcher_settings_t *s)
{
    memset(s, 0, sizeof(*s));
    s->process_interval_ms = 1000;
    s->linger_ms = 50;
    s->lock_check_interval_ms = 15 * 1000;
    s->max_lock_time_ms = 60 * 1000;
    s->cleanup_interval_ms = 60 * 60 * 1000;
    s->retention_ms = 24LL * 3600 * 1000;
    s->dead_retention_ms = 30LL * 24 * 3600 * 1000;
    s->batch_size = 500;
    s->cleanup_batch = 10000;
    s->retry.max_attempts = 10;
    s->retry.initial_ms = 1000;
    s->retry.multiplier = 2.0;
    s->retry.max_ms = 60 * 1000;
    s->retry.jitter = 0.2;
    s->crash_limit = 3;
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
            return OUTBOX_ERR_CONFIG;                                                              \
        }                                                                                          \
    } while (0)

int
outbox_dispatcher_settings_validate(const outbox_dispatcher_settings_t *s, char *err, size_t errlen)
{
    CHECK(s->process_interval_ms > 0, "process_interval must be greater than zero");
    CHECK(s->linger_ms >= 0, "linger must be 0 or more");
    CHECK(s->lock_check_interval_ms > 0, "lock_check_interval must be greater than zero");
    CHECK(s->max_lock_time_ms > 0, "max_lock_time must be greater than zero");
    CHECK(s->cleanup_interval_ms > 0, "cleanup_interval must be greater than zero");
    CHECK(s->batch_size >= 1 && s->batch_size <= 10000,
          "batch_size must be between 1 and 10000 (got %d)", (int)s->batch_size);
    CHECK(s->cleanup_batch >= 1 && s->cleanup_batch <= 1000000,
          "cleanup_batch must be between 1 and 1000000 (got %d)", (int)s->cleanup_batch);
    CHECK(s->retention_ms <= 0 || s->retention_ms >= s->max_lock_time_ms,
          "retention (%lld ms) is shorter than max_lock_time (%lld ms); 0 deletes a record "
          "when it is delivered",
          (long long)s->retention_ms, (long long)s->max_lock_time_ms);
    CHECK(s->dead_retention_ms < 0 || s->dead_retention_ms >= s->max_lock_time_ms,
          "dead_retention (%lld ms) is shorter than max_lock_time (%lld ms)",
          (long long)s->dead_retention_ms, (long long)s->max_lock_time_ms);
    CHECK(s->retry.max_attempts >= 0, "max_attempts must be 0 (unlimited) or more");
    CHECK(s->retry.initial_ms > 0, "retry_initial must be greater than zero");
    CHECK(s->retry.multiplier >= 1.0 && s->retry.multiplier <= 100.0,
          "retry_multiplier must be between 1 and 100");
    CHECK(s->retry.max_ms >= s->retry.initial_ms, "retry_max must be at least retry_initial");
    CHECK(s->retry.jitter >= 0.0 && s->retry.jitter <= 1.0, "retry_jitter must be between 0 and 1");
    CHECK(s->dead_letter_subject == NULL || s->dead_letter_subject[0] == '\0' ||
              outbox_subject_valid(s->dead_letter_subject),
          "dead_letter_subject '%.100s' is not a valid NATS subject (no spaces, wildcards or "
          "empty tokens)",
          s->dead_letter_subject);
    CHECK(s->crash_limit == 0 || s->crash_limit >= 2,
          "crash_limit must be 0 (never) or at least 2 (got %d): a record's batch mates are "
          "charged one crash before they are retried alone",
          (int)s->crash_limit);
    return OUTBOX_OK;
}

int
outbox_dispatcher_create(outbox_dispatcher_t **out, outbox_store_t *store, outbox_broker_t *broker,
                         const outbox_dispatcher_settings_t *s, const char *lock_id, uint64_t seed,
                         char *err, size_t errlen)
{
    outbox_dispatcher_t *d;
    int rc;

    if ((rc = outbox_dispatcher_settings_validate(s, err, errlen)) != OUTBOX_OK)
        return rc;
    if (lock_id == NULL || lock_id[0] == '\0' || strlen(lock_id) >= LOCK_ID_MAX) {
        snprintf(err, errlen, "lock id must be 1 to %d characters", LOCK_ID_MAX - 1);
        return OUTBOX_ERR_CONFIG;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        goto nomem;
    d->cap = (size_t)s->batch_size;
    d->res = calloc(d->cap, sizeof(*d->res));
    d->marks = calloc(d->cap, sizeof(*d->marks));
    d->reasons = calloc(d->cap, sizeof(*d->reasons));
    d->sub_recs = calloc(d->cap, sizeof(*d->sub_recs));
    d->sub_res = calloc(d->cap, sizeof(*d->sub_res));
    d->sub_idx = calloc(d->cap, sizeof(*d->sub_idx));
    d->wave = calloc(d->cap, sizeof(*d->wave));
    d->prev = calloc(d->cap, sizeof(*d->prev));
    d->sub_why = calloc(d->cap, sizeof(*d->sub_why));
    d->keyed = calloc(d->cap, sizeof(*d->keyed));
    if (d->keyed == NULL || d->res == NULL || d->marks == NULL || d->reasons == NULL ||
        d->sub_recs == NULL || d->sub_res == NULL || d->sub_idx == NULL || d->wave == NULL ||
        d->prev == NULL || d->sub_why == NULL)
        goto nomem;
    if (s->dead_letter_subject != NULL && s->dead_letter_subject[0] != '\0' &&
        (d->dead_subject = strdup(s->dead_letter_subject)) == NULL)
        goto nomem;
    d->store = store;
    d->broker = broker;
    d->s = *s;
    d->s.dead_letter_subject = d->dead_subject;
    snprintf(d->lock_id, sizeof(d->lock_id), "%s", lock_id);
    d->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
    d->run_process = d->run_lock_check = d->run_cleanup = true;
    outbox_batch_init(&d->batch);
    *out = d;
    return OUTBOX_OK;
nomem:
    outbox_dispatcher_destroy(d);
    snprintf(err, errlen, "out of memory creating the dispatcher");
    return OUTBOX_ERR_NOMEM;
}

void
outbox_dispatcher_destroy(outbox_dispatcher_t *d)
{
    if (d == NULL)
        return;
    outbox_batch_free(&d->batch);
    free(d->res);
    free(d->marks);
    free(d->reasons);
    free(d->sub_recs);
    free(d->sub_res);
    free(d->sub_idx);
    free(d->wave);
    free(d->prev);
    free(d->sub_why);
    free(d->keyed);
    free(d->dead_subject);
    free(d);
}

void
outbox_dispatcher_set_jobs(outbox_dispatcher_t *d, bool process, bool lock_check, bool cleanup)
{
    d->run_process = process;
    d->run_lock_check = lock_check;
    d->run_cleanup = cleanup;
}

int64_t
outbox_retry_delay_ms(const outbox_retry_policy_t *p, int32_t attempt)
{
    double delay;

    if (attempt < 1)
        attempt = 1;
    delay = (double)p->initial_ms * pow(p->multiplier, (double)(attempt - 1));
    if (!isfinite(delay) || delay > (double)p->max_ms)
        return p->max_ms;
    return (int64_t)delay;
}

/* xorshift64*: jitter only, no need for more. */
static double
rand01(outbox_dispatcher_t *d)
{
    d->rng ^= d->rng >> 12;
    d->rng ^= d->rng << 25;
    d->rng ^= d->rng >> 27;
    return (double)((d->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void
fail(outbox_dispatcher_t *d, const char *what, const char *why)
{
    snprintf(d->err, sizeof(d->err), "%s: %s", what, why[0] ? why : "failed");
}

/* Decide each record's mark from its publish result. */
static void
build_marks(outbox_dispatcher_t *d)
{
    const outbox_retry_policy_t *p = &d->s.retry;
    size_t i;

    for (i = 0; i < d->batch.n; i++) {
        const outbox_record_t *r = &d->batch.recs[i];
        const outbox_pub_result_t *res = &d->res[i];
        outbox_mark_t *m = &d->marks[i];
        int32_t attempts = r->attempts + 1;

        memset(m, 0, sizeof(*m));
        m->id = r->id;
        switch (res->status) {
        case OUTBOX_PUB_OK:
            m->kind = OUTBOX_MARK_DELIVERED;
            d->c.delivered++;
            d->c.duplicates += res->duplicate;
            d->c.bytes += r->msg.body_len;
            break;
        case OUTBOX_PUB_NOT_SENT:
            m->kind = OUTBOX_MARK_RELEASE;
            d->c.released++;
            break;
        case OUTBOX_PUB_DEFERRED: {
            /* Not the record's fault: no attempt charged, but out of the
             * way for a while so it does not hold up every batch. */
            int64_t delay = outbox_retry_delay_ms(p, r->attempts + 1);

            m->kind = OUTBOX_MARK_RETRY;
            m->retry_delay_ms = delay - (int64_t)((double)delay * p->jitter * rand01(d));
            m->error = res->error[0] ? res->error : "no verdict from the broker";
            d->c.deferred++;
            break;
        }
        case OUTBOX_PUB_PERMANENT:
            m->kind = OUTBOX_MARK_DEAD;
            m->charge = 1;
            m->error = res->error[0] ? res->error : "permanent publish failure";
            d->c.failed++;
            d->c.dead++;
            break;
        case OUTBOX_PUB_TRANSIENT:
        default:
            m->charge = 1;
            d->c.failed++;
            /* >=, not ==: a cap lowered below a record's attempts still stops it */
            if (p->max_attempts > 0 && attempts >= p->max_attempts) {
                m->kind = OUTBOX_MARK_DEAD;
                snprintf(d->reasons[i], sizeof(d->reasons[i]), "max attempts (%d) reached: %s",
                         (int)p->max_attempts, res->error[0] ? res->error : "publish failed");
                m->error = d->reasons[i];
                d->c.dead++;
            } else {
                int64_t delay = outbox_retry_delay_ms(p, attempts);

                m->kind = OUTBOX_MARK_RETRY;
                m->retry_delay_ms = delay - (int64_t)((double)delay * p->jitter * rand01(d));
                m->error = res->error[0] ? res->error : "publish failed";
                d->c.retried++;
            }
            break;
        }
    }
}

/* Publish the batch records listed in sub_idx[0..m); results into res. */
static int
publish_subset(outbox_dispatcher_t *d, size_t m)
{
    size_t k;
    int rc;

    for (k = 0; k < m; k++)
        d->sub_recs[k] = d->batch.recs[d->sub_idx[k]];
    rc = outbox_broker_publish(d->broker, d->sub_recs, m, d->sub_res);
    for (k = 0; k < m; k++)
        d->res[d->sub_idx[k]] = d->sub_res[k];
    return rc;
}

/* Does record i's outcome let the next record of its key go: delivered,
 * or dead (out of the sequence) now? A death waiting for its dead-letter
 * copy may yet turn into a retry (dead_letters()): not settled before the
 * batch after, when the record is dead for sure. */
static bool
settles(const outbox_dispatcher_t *d, size_t i)
{
    outbox_pub_status_t st = d->res[i].status;
    int32_t max = d->s.retry.max_attempts;
    bool dies = st == OUTBOX_PUB_PERMANENT ||
                (st == OUTBOX_PUB_TRANSIENT && max > 0 && d->batch.recs[i].attempts + 1 >= max);

    return st == OUTBOX_PUB_OK || (dies && d->dead_subject == NULL);
}

static int
keyed_cmp(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    int c = strcmp(x->key, y->key);

    return c != 0 ? c : (x->i > y->i) - (x->i < y->i);
}

/*
 * Per-key ordering: the store hands over whole per-key prefixes in seq
 * order; publish them in waves, the k-th record of every key in wave k, a
 * wave only once the previous one is acknowledged. A record whose
 * predecessor did not settle (retrying, not sent) is held back unsent, so
 * a failing record holds back only its own key.
 */
static int
publish_ordered(outbox_dispatcher_t *d)
{
    size_t n = d->batch.n, i, j, m = 0, w, maxwave = 0;
    int rc, first = OUTBOX_OK;

    for (i = 0; i < n; i++) {
        d->wave[i] = 0;
        d->prev[i] = SIZE_MAX;
        if (d->batch.recs[i].msg.key != NULL) {
            d->keyed[m].key = d->batch.recs[i].msg.key;
            d->keyed[m++].i = i;
        }
    }
    qsort(d->keyed, m, sizeof(*d->keyed), keyed_cmp);
    for (j = 1; j < m; j++) {
        if (strcmp(d->keyed[j].key, d->keyed[j - 1].key) != 0)
            continue;
        i = d->keyed[j].i;
        d->prev[i] = d->keyed[j - 1].i;
        d->wave[i] = d->wave[d->prev[i]] + 1;
        if (d->wave[i] > maxwave)
            maxwave = d->wave[i];
    }
    for (w = 0; w <= maxwave; w++) {
        m = 0;
        for (i = 0; i < n; i++) {
            if (d->wave[i] != w)
                continue;
            if (d->prev[i] != SIZE_MAX && !settles(d, d->prev[i])) {
                d->c.held_back++;
                snprintf(d->res[i].error, sizeof(d->res[i].error),
                         "held back: an earlier record of its key did not go");
                continue; /* stays NOT_SENT: released, uncharged */
            }
            d->sub_idx[m++] = i;
        }
        if (m == 0)
            continue;
        rc = publish_subset(d, m);
        if (rc != OUTBOX_OK && first == OUTBOX_OK)
            first = rc;
        if (rc == OUTBOX_ERR_UNREACHABLE)
            break; /* the later waves stay NOT_SENT */
    }
    return first;
}

/*
 * Dead-letter copies of the records this batch makes dead. A copy that can
 * never go (invalid subject, stream limit) leaves the record dead with the
 * reason noted; one that failed for now turns the death into a retry, so
 * no death goes unannounced.
 */
static void
dead_letters(outbox_dispatcher_t *d)
{
    char why[sizeof(d->reasons[0])];
    size_t i, k, m = 0;

    if (d->dead_subject == NULL)
        return;
    for (i = 0; i < d->batch.n; i++) {
        if (d->marks[i].kind != OUTBOX_MARK_DEAD)
            continue;
        d->sub_idx[m] = i;
        d->sub_recs[m] = d->batch.recs[i];
        d->sub_why[m++] = d->marks[i].error;
    }
    if (m == 0)
        return;
    outbox_broker_publish_dead(d->broker, d->dead_subject, d->sub_recs, d->sub_why, m, d->sub_res);
    for (k = 0; k < m; k++) {
        outbox_mark_t *mk = &d->marks[d->sub_idx[k]];
        const outbox_pub_result_t *r = &d->sub_res[k];

        i = d->sub_idx[k];
        if (r->status == OUTBOX_PUB_OK) {
            d->c.dead_letters++;
        } else if (r->status == OUTBOX_PUB_PERMANENT) {
            snprintf(why, sizeof(why), "%s; no dead-letter copy: %s", mk->error, r->error);
            memcpy(d->reasons[i], why, sizeof(why));
            mk->error = d->reasons[i];
        } else {
            int64_t delay = outbox_retry_delay_ms(&d->s.retry, d->batch.recs[i].attempts + 1);

            snprintf(why, sizeof(why), "dead-letter copy failed, will retry: %s", r->error);
            memcpy(d->reasons[i], why, sizeof(why));
            mk->kind = OUTBOX_MARK_RETRY;
            mk->error = d->reasons[i];
            mk->retry_delay_ms = delay - (int64_t)((double)delay * d->s.retry.jitter * rand01(d));
            d->c.dead--;
            d->c.retried++;
        }
    }
}

static int
apply_marks(outbox_dispatcher_t *d)
{
    int rc = outbox_store_mark(d->store, d->lock_id, d->marks, d->batch.n, NULL);

    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        d->unmarked = true;
        fail(d, "marking a batch failed (kept, will retry)", d->store->err);
        return rc;
    }
    d->unmarked = false;
    if (d->observe != NULL) {
        size_t i;

        for (i = 0; i < d->batch.n; i++)
            if (d->marks[i].kind == OUTBOX_MARK_DEAD)
                d->observe(d->observe_arg, OUTBOX_EV_DEAD, i, &d->batch.recs[i], d->marks[i].error);
    }
    outbox_batch_reset(&d->batch);
    return OUTBOX_OK;
}

int
outbox_dispatcher_process(outbox_dispatcher_t *d, size_t *claimed)
{
    size_t i, n;
    int rc, prc;

    if (claimed != NULL)
        *claimed = 0;
    d->empty = false;
    if (d->unmarked) {
        n = d->batch.n;
        /* Never claim more while published records wait for their marks. */
        if ((rc = apply_marks(d)) != OUTBOX_OK)
            return rc;
        OBSERVE(d, OUTBOX_EV_MARKED, n);
        d->more = true;
        return OUTBOX_OK;
    }
    OBSERVE(d, OUTBOX_EV_CLAIM, 0);
    rc = outbox_store_claim(d->store, d->lock_id, d->s.batch_size, &d->batch);
    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        fail(d, "claim failed", d->store->err);
        outbox_batch_reset(&d->batch);
        return rc;
    }
    d->more = d->batch.n >= (size_t)d->s.batch_size;
    d->empty = d->batch.n == 0;
    if (claimed != NULL)
        *claimed = d->batch.n;
    if (d->batch.n == 0)
        return OUTBOX_OK;
    d->c.batches++;
    d->c.claimed += d->batch.n;
    d->c.last_batch_size = d->batch.n;

    OBSERVE(d, OUTBOX_EV_PUBLISH, d->batch.n);
    /* A broker that forgets a result must not turn into a delivery. */
    for (i = 0; i < d->batch.n; i++) {
        d->res[i].status = OUTBOX_PUB_NOT_SENT;
        d->res[i].duplicate = false;
        d->res[i].error[0] = '\0';
    }
    prc = d->s.per_key_order ? publish_ordered(d)
                             : outbox_broker_publish(d->broker, d->batch.recs, d->batch.n, d->res);
    if (prc != OUTBOX_OK) {
        d->c.publish_errors++;
        d->more = false;
        fail(d, "publish failed", d->broker->err);
    }
    OBSERVE(d, OUTBOX_EV_PUBLISHED, d->batch.n);
    build_marks(d);
    dead_letters(d);
    n = d->batch.n;
    if ((rc = apply_marks(d)) != OUTBOX_OK)
        return rc;
    OBSERVE(d, OUTBOX_EV_MARKED, n);
    return prc == OUTBOX_OK ? OUTBOX_OK : prc;
}

int
outbox_dispatcher_check_locks(outbox_dispatcher_t *d, int64_t *released)
{
    int64_t n = 0;
    int rc = outbox_store_clear_stale_locks(d->store, d->s.max_lock_time_ms, &n);

    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        fail(d, "lock check failed", d->store->err);
        return rc;
    }
    d->c.locks_freed += (uint64_t)n;
    if (n > 0)
        OBSERVE(d, OUTBOX_EV_LOCKS_FREED, (size_t)n);
    if (released != NULL)
        *released = n;
    return OUTBOX_OK;
}

int
outbox_dispatcher_cleanup(outbox_dispatcher_t *d, int64_t *deleted)
{
    int64_t n = 0;
    int rc;

    rc = outbox_store_purge(d->store, d->s.retention_ms, d->s.dead_retention_ms, d->s.cleanup_batch,
                            &n);
    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        fail(d, "cleanup failed", d->store->err);
        return rc;
    }
    d->c.purged += (uint64_t)n;
    if (deleted != NULL)
        *deleted = n;
    return OUTBOX_OK;
}

int
outbox_dispatcher_release_crashed(outbox_dispatcher_t *d, const char *lock_id, int64_t lo,
                                  int64_t hi, int64_t *released, int64_t *parked)
{
    int64_t n = 0, dead = 0;
    int rc = outbox_store_release_crashed(d->store, lock_id, lo, hi, d->s.crash_limit, &n, &dead);

    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        fail(d, "releasing a dead relay's records failed", d->store->err);
        return rc;
    }
    d->c.locks_freed += (uint64_t)n;
    d->c.dead += (uint64_t)dead;
    if (released != NULL)
        *released = n;
    if (parked != NULL)
        *parked = dead;
    return OUTBOX_OK;
}

int
outbox_dispatcher_release(outbox_dispatcher_t *d)
{
    int rc;

    if (d->unmarked && (rc = apply_marks(d)) != OUTBOX_OK)
        return rc;
    rc = outbox_store_clear_locks_by_lock_id(d->store, d->lock_id, NULL);
    if (rc != OUTBOX_OK) {
        d->c.db_errors++;
        fail(d, "releasing locks failed", d->store->err);
    }
    return rc;
}

/*
 * Delay before the next process pass. A full batch: none. Work found: the
 * linger starts, polls 1 ms apart doubling (traffic that goes on is caught
 * by a poll, never needing a wake-up). Nothing found: the gap keeps
 * doubling up to process_interval; once it exceeds the linger the job is
 * idle (outbox_dispatcher_idle).
 */
static int64_t
next_gap(outbox_dispatcher_t *d)
{
    int64_t pi = d->s.process_interval_ms;

    if (d->more)
        return d->last_gap = 0;
    if (!d->empty) {
        if (d->s.linger_ms == 0) { /* one more pass at once, then idle */
            d->gap = pi;
            return d->last_gap = 0;
        }
        d->gap = 1;
    } else if (d->gap <= 0) {
        d->gap = pi; /* nothing found since the start */
    }
    d->last_gap = d->gap;
    d->gap = d->gap * 2 < pi ? d->gap * 2 : pi;
    return d->last_gap;
}

static int64_t
error_backoff(int errors)
{
    int64_t ms = ERR_BACKOFF_MIN_MS;
    int i;

    for (i = 1; i < errors && ms < ERR_BACKOFF_MAX_MS; i++)
        ms *= 2;
    return ms < ERR_BACKOFF_MAX_MS ? ms : ERR_BACKOFF_MAX_MS;
}

int
outbox_dispatcher_tick(outbox_dispatcher_t *d, int64_t now, int64_t *wait_ms)
{
    int64_t next = INT64_MAX, n;
    int rc, first = OUTBOX_OK;

    if (!d->started) {
        d->started = true;
        d->next_process = d->next_lock_check = d->next_cleanup = now;
    }
    if (d->run_process && now >= d->next_process) {
        rc = outbox_dispatcher_process(d, NULL);
        if (rc != OUTBOX_OK) {
            d->errors++;
            d->next_process = now + error_backoff(d->errors);
            first = rc;
        } else {
            d->errors = 0;
            d->next_process = now + next_gap(d);
        }
    }
    if (d->run_lock_check && now >= d->next_lock_check) {
        rc = outbox_dispatcher_check_locks(d, NULL);
        d->lc_errors = rc == OUTBOX_OK ? 0 : d->lc_errors + 1;
        d->next_lock_check =
            now + (rc == OUTBOX_OK ? d->s.lock_check_interval_ms : error_backoff(d->lc_errors));
        if (first == OUTBOX_OK)
            first = rc;
    }
    if (d->run_cleanup && now >= d->next_cleanup) {
        n = 0;
        rc = outbox_dispatcher_cleanup(d, &n);
        d->cl_errors = rc == OUTBOX_OK ? 0 : d->cl_errors + 1;
        if (rc != OUTBOX_OK)
            d->next_cleanup = now + ERR_BACKOFF_MAX_MS;
        else if (n >= d->s.cleanup_batch)
            d->next_cleanup = now + CLEANUP_AGAIN_MS;
        else
            d->next_cleanup = now + d->s.cleanup_interval_ms;
        if (first == OUTBOX_OK)
            first = rc;
    }
    if (d->run_process && d->next_process < next)
        next = d->next_process;
    if (d->run_lock_check && d->next_lock_check < next)
        next = d->next_lock_check;
    if (d->run_cleanup && d->next_cleanup < next)
        next = d->next_cleanup;
    if (wait_ms != NULL)
        *wait_ms = next == INT64_MAX ? d->s.process_interval_ms : (next > now ? next - now : 0);
    return first;
}

void
outbox_dispatcher_wake(outbox_dispatcher_t *d)
{
    d->next_process = INT64_MIN;
}

bool
outbox_dispatcher_failing(const outbox_dispatcher_t *d)
{
    return d->errors > 0 || d->lc_errors > 0 || d->cl_errors > 0;
}

bool
outbox_dispatcher_idle(const outbox_dispatcher_t *d)
{
    return d->empty && d->last_gap > d->s.linger_ms;
}

void
outbox_dispatcher_inflight(const outbox_dispatcher_t *d, int64_t *lo, int64_t *hi)
{
    size_t i;

    *lo = *hi = 0;
    for (i = 0; i < d->batch.n; i++) {
        if (*lo == 0 || d->batch.recs[i].seq < *lo)
            *lo = d->batch.recs[i].seq;
        if (d->batch.recs[i].seq > *hi)
            *hi = d->batch.recs[i].seq;
    }
}

const outbox_dispatcher_counters_t *
outbox_dispatcher_counters(const outbox_dispatcher_t *d)
{
    return &d->c;
}

const char *
outbox_dispatcher_last_error(const outbox_dispatcher_t *d)
{
    return d->err;
}

const char *
outbox_dispatcher_lock_id(const outbox_dispatcher_t *d)
{
    return d->lock_id;
}
