/*
 * The Dispatcher: the relay's logic over one Store and one Broker, with the
 * three periodic jobs (process, lock check, cleanup) and the retry policy.
 * It makes no system calls and keeps no globals: time is passed in by the
 * caller (a monotonic clock in ms, used only to schedule jobs), so an
 * application can embed it in its own loop and tests can drive it.
 */
#ifndef OUTBOX_DISPATCHER_H
#define OUTBOX_DISPATCHER_H

#include <stdbool.h>
#include <stdint.h>

#include "outbox/broker.h"
#include "outbox/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct outbox_retry_policy {
    int32_t max_attempts; /* a record is dead once attempts >= this; 0 = unlimited */
    int64_t initial_ms;   /* delay after the first failure */
    double multiplier;    /* delay grows by this factor per further failure */
    int64_t max_ms;       /* delay cap */
    double jitter;        /* 0..1: delay is scaled by a random factor in [1-j, 1] */
} outbox_retry_policy_t;

typedef struct outbox_dispatcher_settings {
    int64_t process_interval_ms;    /* idle poll period */
    int64_t linger_ms;              /* after work, re-poll at 1 ms doubling while the gap is
                                       <= this; then idle (0: straight to process_interval;
                                       a linger >= process_interval never idles) */
    int64_t lock_check_interval_ms; /* how often stale locks are freed */
    int64_t max_lock_time_ms;       /* a lock older than this is stale */
    int64_t cleanup_interval_ms;    /* how often retention runs */
    int64_t retention_ms;           /* DELIVERED rows kept this long; < 0 forever */
    int64_t dead_retention_ms;      /* dead rows kept this long; < 0 forever */
    int32_t batch_size;             /* records per claim */
    int32_t cleanup_batch;          /* rows per retention delete */
    outbox_retry_policy_t retry;
    int32_t crash_limit;             /* worker deaths holding a record before it is dead
                                        (0: never; else >= 2, so innocent batch mates,
                                        retried alone after one crash, never reach it) */
    bool per_key_order;              /* publish each key's records in seq order (the store
                                        must claim per-key prefixes: outbox_pg_options_t) */
    const char *dead_letter_subject; /* NULL/"": none; else every record made dead is
                                        also published there (copied at create) */
} outbox_dispatcher_settings_t;

/* Documented defaults: 1 s, 50 ms, 15 s, 1 min, 1 h, 24 h, 30 d, 500, 10000;
 * retry: 10 attempts, 1 s, x2, 1 min cap, jitter 0.2; crash limit 3; no
 * per-key ordering; no dead-letter subject. */
void outbox_dispatcher_settings_default(outbox_dispatcher_settings_t *s);
/* OUTBOX_OK, or OUTBOX_ERR_CONFIG with one line naming the setting. */
int outbox_dispatcher_settings_validate(const outbox_dispatcher_settings_t *s, char *err,
                                        size_t errlen);

/* Monotonic counters; a pass only ever adds to them. */
typedef struct outbox_dispatcher_counters {
    uint64_t batches; /* claims that returned >= 1 record */
    uint64_t claimed;
    uint64_t delivered;
    uint64_t failed;         /* publish failures charged an attempt */
    uint64_t retried;        /* of which rescheduled */
    uint64_t dead;           /* parked as MAX_ATTEMPTS_REACHED */
    uint64_t released;       /* returned unsent (broker down) */
    uint64_t duplicates;     /* acknowledged as duplicate by the stream */
    uint64_t publish_errors; /* broker-level failures (unreachable) */
    uint64_t db_errors;      /* store operations that failed */
    uint64_t bytes;          /* body bytes acknowledged */
    uint64_t locks_freed;    /* stale locks cleared by the lock check */
    uint64_t purged;         /* rows deleted by retention */
    uint64_t dead_letters;   /* dead-letter copies acknowledged */
    uint64_t held_back;      /* per-key ordering: released unsent behind a failed record */
    uint64_t deferred;       /* sent without a verdict: retried later, uncharged */
    uint64_t last_batch_size;
} outbox_dispatcher_counters_t;

typedef struct outbox_dispatcher outbox_dispatcher_t;

/* store and broker are borrowed and must outlive the dispatcher. lock_id is
 * copied. seed feeds the retry jitter. OUTBOX_OK, OUTBOX_ERR_CONFIG (bad
 * settings or empty lock id, reason in err) or OUTBOX_ERR_NOMEM. */
int outbox_dispatcher_create(outbox_dispatcher_t **out, outbox_store_t *store,
                             outbox_broker_t *broker, const outbox_dispatcher_settings_t *s,
                             const char *lock_id, uint64_t seed, char *err, size_t errlen);
void outbox_dispatcher_destroy(outbox_dispatcher_t *d); /* NULL ok */

/* Choose which periodic jobs tick() runs (all three by default). A pool runs
 * lock check and cleanup in one process only. */
void outbox_dispatcher_set_jobs(outbox_dispatcher_t *d, bool process, bool lock_check,
                                bool cleanup);

/* What a pass did, reported to an observer (live stats, logs). */
typedef enum outbox_dispatcher_event {
    OUTBOX_EV_CLAIM = 0,   /* a claim is about to be sent; n = 0 */
    OUTBOX_EV_PUBLISH,     /* n records claimed, about to publish */
    OUTBOX_EV_MARKED,      /* n records' marks written; counters are up to date */
    OUTBOX_EV_DEAD,        /* rec was parked as dead (its mark is written); why = reason */
    OUTBOX_EV_LOCKS_FREED, /* the lock check freed n stale locks */
    OUTBOX_EV_PUBLISHED    /* n records' publish results are in; marks come next */
} outbox_dispatcher_event_t;
/* rec and why are NULL but for OUTBOX_EV_DEAD; both borrowed for the call. */
typedef void (*outbox_dispatcher_observer_fn)(void *arg, outbox_dispatcher_event_t ev, size_t n,
                                              const outbox_record_t *rec, const char *why);
/* Called synchronously from the jobs; fn NULL removes it. */
void outbox_dispatcher_set_observer(outbox_dispatcher_t *d, outbox_dispatcher_observer_fn fn,
                                    void *arg);

/*
 * One process pass: first re-apply marks left over by a store failure, then
 * claim a batch, publish it, mark every record in one statement. *claimed
 * (may be NULL) = records claimed. OUTBOX_OK; OUTBOX_ERR_UNREACHABLE when
 * the broker is down (records released uncharged); a store error status
 * when the database failed (marks kept and retried next pass).
 */
int outbox_dispatcher_process(outbox_dispatcher_t *d, size_t *claimed);
int outbox_dispatcher_check_locks(outbox_dispatcher_t *d, int64_t *released);
int outbox_dispatcher_cleanup(outbox_dispatcher_t *d, int64_t *deleted);
/* Give back every lock this dispatcher holds (clean stop). */
int outbox_dispatcher_release(outbox_dispatcher_t *d);
/* Another relay, lock_id, died with the records of seqs [lo, hi] in flight
 * (0, 0: unknown): free its records, counting the crash against each
 * (crash_limit). Counted as locks_freed and dead. */
int outbox_dispatcher_release_crashed(outbox_dispatcher_t *d, const char *lock_id, int64_t lo,
                                      int64_t hi, int64_t *released, int64_t *parked);
/* The seq range of the batch being published ([0, 0] between batches): a
 * supervisor keeps it where it outlives the process (stats slot), so the
 * crash of this relay can be counted against those records. */
void outbox_dispatcher_inflight(const outbox_dispatcher_t *d, int64_t *lo, int64_t *hi);

/*
 * Run the jobs due at now_ms (monotonic ms). *wait_ms = time until the next
 * job is due: 0 when the last claim was a full batch (more is waiting).
 * Returns the first error status met, after running every due job.
 */
int outbox_dispatcher_tick(outbox_dispatcher_t *d, int64_t now_ms, int64_t *wait_ms);
/* Did the last run of any job fail (it is waiting out a backoff)? A tick
 * that ran nothing returns OK: this tells a recovery from a pause. */
bool outbox_dispatcher_failing(const outbox_dispatcher_t *d);
/* Make the process job due now (a wake-up saw new rows). */
void outbox_dispatcher_wake(outbox_dispatcher_t *d);
/* Has the process job gone idle: the last pass found nothing and the
 * linger after the last work is over? A caller with a wake-up mechanism
 * then arms it (and wakes the dispatcher for one pass, to catch rows that
 * committed before the arming). */
bool outbox_dispatcher_idle(const outbox_dispatcher_t *d);

/* Retry delay for a record failing its attempt-th time (1-based), before
 * jitter; exposed for tests and documentation. */
int64_t outbox_retry_delay_ms(const outbox_retry_policy_t *p, int32_t attempt);

const outbox_dispatcher_counters_t *outbox_dispatcher_counters(const outbox_dispatcher_t *d);
const char *outbox_dispatcher_last_error(const outbox_dispatcher_t *d);
const char *outbox_dispatcher_lock_id(const outbox_dispatcher_t *d);

#ifdef __cplusplus
}
#endif
#endif
