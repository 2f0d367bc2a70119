/*
 * Dispatcher logic against the mock Store and Broker: every state
 * transition, partial batch failures, the attempt cap, an unreachable
 * broker, store failures after publishing, the lock check, retention and
 * the job schedule. Each test fails when the rule it names is broken.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "outbox/dispatcher.h"
#include "outbox/mock.h"

typedef struct fx {
    outbox_mock_store_t *store;
    outbox_mock_broker_t *broker;
    outbox_dispatcher_t *d;
    outbox_dispatcher_settings_t s;
} fx_t;

static int
make(fx_t *f, int nrecs)
{
    int i;

    memset(f, 0, sizeof(*f));
    if (outbox_mock_store_create(&f->store) != OUTBOX_OK ||
        outbox_mock_broker_create(&f->broker) != OUTBOX_OK)
        return -1;
    f->store->now_ms = 1000000;
    for (i = 0; i < nrecs; i++) {
        char body[32];

        snprintf(body, sizeof(body), "body-%d", i);
        if (outbox_mock_store_add(f->store, "orders.created", "k", body) < 0)
            return -1;
    }
    outbox_dispatcher_settings_default(&f->s);
    f->s.retry.jitter = 0.0;
    return 0;
}

static void
start(fx_t *f)
{
    char err[256];

    assert_int_equal(outbox_dispatcher_create(&f->d, &f->store->base, &f->broker->base, &f->s,
                                              "relay-1", 42, err, sizeof(err)),
                     OUTBOX_OK);
}

static void
done(fx_t *f)
{
    outbox_dispatcher_destroy(f->d);
    outbox_store_destroy(&f->store->base);
    outbox_broker_destroy(&f->broker->base);
}

static outbox_pub_status_t
fail_third(const outbox_record_t *r, void *arg)
{
    (void)arg;
    return r->seq == 3 ? OUTBOX_PUB_TRANSIENT : OUTBOX_PUB_OK;
}

static outbox_pub_status_t
all_transient(const outbox_record_t *r, void *arg)
{
    (void)r;
    (void)arg;
    return OUTBOX_PUB_TRANSIENT;
}

static outbox_pub_status_t
permanent_second(const outbox_record_t *r, void *arg)
{
    (void)arg;
    return r->seq == 2 ? OUTBOX_PUB_PERMANENT : OUTBOX_PUB_OK;
}

static void
assert_no_locks(outbox_mock_store_t *m)
{
    size_t i;

    for (i = 0; i < m->n; i++)
        assert_string_equal(m->recs[i].locked_by, "");
}

static void
test_delivers_whole_batch_with_one_mark(void **state)
{
    fx_t f;
    size_t claimed = 0;
    (void)state;

    assert_int_equal(make(&f, 5), 0);
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 5);
    assert_int_equal(f.broker->calls, 1);
    assert_int_equal(f.store->calls_mark, 1);
    assert_int_equal(f.store->last_mark_n, 5);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 5);
    assert_int_equal(f.store->recs[0].processed_on_ms, f.store->now_ms);
    assert_int_equal(outbox_dispatcher_counters(f.d)->delivered, 5);
    assert_int_equal(outbox_dispatcher_counters(f.d)->bytes, 5 * strlen("body-0"));
    assert_no_locks(f.store);
    /* delivered records are never claimed again */
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 0);
    assert_int_equal(f.broker->calls, 1);
    done(&f);
}

static void
test_failure_in_middle_does_not_stop_batch(void **state)
{
    fx_t f;
    outbox_mock_record_t *r;
    (void)state;

    assert_int_equal(make(&f, 5), 0);
    f.broker->verdict = fail_third;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 4);
    assert_int_equal(f.store->calls_mark, 1);
    assert_int_equal(f.store->last_mark_n, 5);
    r = &f.store->recs[2];
    assert_int_equal(r->state, OUTBOX_STATE_PENDING);
    assert_int_equal(r->attempts, 1);
    assert_int_equal(r->last_attempt_ms, f.store->now_ms);
    assert_int_equal(r->next_attempt_ms, f.store->now_ms + f.s.retry.initial_ms);
    assert_string_equal(r->locked_by, "");
    assert_non_null(strstr(r->last_error, "verdict"));
    /* records 4 and 5 were published after the failure */
    assert_int_equal(f.broker->nsent, 4);
    assert_string_equal(f.broker->sent_ids[2], f.store->recs[3].id);
    assert_int_equal(outbox_dispatcher_counters(f.d)->retried, 1);
    done(&f);
}

static void
test_retry_waits_for_backoff(void **state)
{
    fx_t f;
    size_t claimed;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    f.broker->verdict = all_transient;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 1);
    /* not due yet: not claimed */
    f.store->now_ms += f.s.retry.initial_ms - 1;
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 0);
    f.store->now_ms += 1;
    f.broker->verdict = NULL;
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 1);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_DELIVERED);
    assert_int_equal(f.store->recs[0].attempts, 1);
    done(&f);
}

static void
test_attempt_cap_is_greater_or_equal(void **state)
{
    fx_t f;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    f.s.retry.max_attempts = 3;
    f.broker->verdict = all_transient;
    f.store->recs[0].attempts = 1; /* -> 2: retried */
    f.store->recs[1].attempts = 2; /* -> 3: dead */
    f.store->recs[2].attempts = 7; /* cap lowered below it: dead, not retried forever */
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_PENDING);
    assert_int_equal(f.store->recs[0].attempts, 2);
    assert_int_equal(f.store->recs[1].state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_int_equal(f.store->recs[1].attempts, 3);
    assert_non_null(strstr(f.store->recs[1].last_error, "max attempts (3) reached"));
    assert_int_equal(f.store->recs[2].state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_int_equal(outbox_dispatcher_counters(f.d)->dead, 2);
    assert_no_locks(f.store);
    done(&f);
}

static void
test_max_attempts_zero_is_unlimited(void **state)
{
    fx_t f;
    int i;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    f.s.retry.max_attempts = 0;
    f.s.retry.max_ms = 1000;
    f.broker->verdict = all_transient;
    start(&f);
    for (i = 0; i < 50; i++) {
        assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
        f.store->now_ms += 1000;
    }
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_PENDING);
    assert_int_equal(f.store->recs[0].attempts, 50);
    done(&f);
}

static void
test_permanent_failure_is_dead_at_once(void **state)
{
    fx_t f;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    f.broker->verdict = permanent_second;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(f.store->recs[1].state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_int_equal(f.store->recs[1].attempts, 1);
    assert_true(f.store->recs[1].last_error[0] != '\0');
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_DELIVERED);
    assert_int_equal(f.store->recs[2].state, OUTBOX_STATE_DELIVERED);
    done(&f);
}

typedef struct seen {
    int ev[16];
    size_t n[16];
    int nev;
    char dead_id[OUTBOX_ID_LEN + 1], dead_why[256];
    int deads;
    uint64_t delivered_at_marked; /* counters must be up to date at MARKED */
    outbox_dispatcher_t *d;
} seen_t;

static void
record_event(void *arg, outbox_dispatcher_event_t ev, size_t n, const outbox_record_t *rec,
             const char *why)
{
    seen_t *s = arg;

    if (s->nev < 16) {
        s->ev[s->nev] = (int)ev;
        s->n[s->nev++] = n;
    }
    if (ev == OUTBOX_EV_MARKED)
        s->delivered_at_marked = outbox_dispatcher_counters(s->d)->delivered;
    if (ev == OUTBOX_EV_DEAD) {
        assert_non_null(rec);
        assert_non_null(why);
        snprintf(s->dead_id, sizeof(s->dead_id), "%s", rec->id);
        snprintf(s->dead_why, sizeof(s->dead_why), "%s", why);
        s->deads++;
    } else {
        assert_null(rec);
    }
}

/* The observer sees claim -> publish -> marked, counters already counted at
 * MARKED, each dead record with its reason once its mark is written, and
 * freed stale locks; a failed mark reports nothing dead. */
static void
test_observer_sees_phases_dead_records_and_freed_locks(void **state)
{
    seen_t seen;
    fx_t f;
    (void)state;

    memset(&seen, 0, sizeof(seen));
    assert_int_equal(make(&f, 3), 0);
    f.broker->verdict = permanent_second;
    start(&f);
    seen.d = f.d;
    outbox_dispatcher_set_observer(f.d, record_event, &seen);
    f.store->fail_next = 1; /* the claim fails: only CLAIM is seen */
    f.store->fail_status = OUTBOX_ERR_UNREACHABLE;
    assert_int_not_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(seen.nev, 1);
    assert_int_equal(seen.ev[0], OUTBOX_EV_CLAIM);
    seen.nev = 0;
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(seen.nev, 5);
    assert_int_equal(seen.ev[0], OUTBOX_EV_CLAIM);
    assert_int_equal(seen.ev[1], OUTBOX_EV_PUBLISH);
    assert_int_equal(seen.n[1], 3);
    assert_int_equal(seen.ev[2], OUTBOX_EV_PUBLISHED);
    assert_int_equal(seen.n[2], 3);
    assert_int_equal(seen.ev[3], OUTBOX_EV_DEAD);
    assert_int_equal(seen.ev[4], OUTBOX_EV_MARKED);
    assert_int_equal(seen.n[4], 3);
    assert_int_equal(seen.delivered_at_marked, 2);
    assert_int_equal(seen.deads, 1);
    assert_string_equal(seen.dead_id, f.store->recs[1].id);
    assert_string_equal(seen.dead_why, f.store->recs[1].last_error);

    seen.nev = 0;
    strcpy(f.store->recs[0].locked_by, "dead-relay");
    f.store->recs[0].state = OUTBOX_STATE_PENDING;
    f.store->recs[0].locked_on_ms = f.store->now_ms - f.s.max_lock_time_ms - 1;
    assert_int_equal(outbox_dispatcher_check_locks(f.d, NULL), OUTBOX_OK);
    assert_int_equal(seen.nev, 1);
    assert_int_equal(seen.ev[0], OUTBOX_EV_LOCKS_FREED);
    assert_int_equal(seen.n[0], 1);
    done(&f);
}

static void
test_broker_down_charges_no_attempt(void **state)
{
    fx_t f;
    int i;
    size_t claimed;
    (void)state;

    assert_int_equal(make(&f, 4), 0);
    f.s.retry.max_attempts = 2;
    f.broker->down = true;
    start(&f);
    for (i = 0; i < 5; i++) {
        assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_ERR_UNREACHABLE);
        assert_int_equal(claimed, 4);
    }
    for (i = 0; i < 4; i++) {
        assert_int_equal(f.store->recs[i].state, OUTBOX_STATE_PENDING);
        assert_int_equal(f.store->recs[i].attempts, 0);
    }
    assert_no_locks(f.store);
    assert_int_equal(outbox_dispatcher_counters(f.d)->released, 20);
    assert_int_equal(outbox_dispatcher_counters(f.d)->publish_errors, 5);
    f.broker->down = false;
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 4);
    done(&f);
}

static outbox_pub_status_t
deferred_second(const outbox_record_t *r, void *arg)
{
    (void)arg;
    return r->seq == 2 ? OUTBOX_PUB_DEFERRED : OUTBOX_PUB_OK;
}

/* A record sent without a verdict (no PubAck in time, its stream not
 * answering) is not at fault: never charged, so never dead however long it
 * lasts, but set aside for the retry delay so it does not hold up the rest. */
static void
test_no_verdict_is_deferred_uncharged(void **state)
{
    fx_t f;
    int i;
    size_t claimed;
    outbox_mock_record_t *r;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    f.s.retry.max_attempts = 2;
    f.s.retry.jitter = 0;
    f.broker->verdict = deferred_second;
    start(&f);
    r = &f.store->recs[1];
    for (i = 0; i < 5; i++) {
        assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
        assert_int_equal(claimed, i == 0 ? 3 : 1);
        assert_int_equal(r->state, OUTBOX_STATE_PENDING);
        assert_int_equal(r->attempts, 0);
        assert_int_equal(r->next_attempt_ms, f.store->now_ms + f.s.retry.initial_ms);
        assert_non_null(strstr(r->last_error, "verdict"));
        /* not due before the delay */
        assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
        assert_int_equal(claimed, 0);
        f.store->now_ms += f.s.retry.initial_ms;
    }
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 2);
    assert_int_equal(outbox_dispatcher_counters(f.d)->deferred, 5);
    assert_int_equal(outbox_dispatcher_counters(f.d)->failed, 0);
    assert_int_equal(outbox_dispatcher_counters(f.d)->dead, 0);
    assert_no_locks(f.store);
    f.broker->verdict = NULL;
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(r->state, OUTBOX_STATE_DELIVERED);
    done(&f);
}

/* Arms the store failure from inside publish: the claim has already
 * succeeded, so the next store call (the mark) fails. */
static outbox_pub_status_t
ok_then_break_store(const outbox_record_t *r, void *arg)
{
    outbox_mock_store_t *m = arg;
    (void)r;
    m->fail_next = 1;
    return OUTBOX_PUB_OK;
}

static void
test_marks_retried_after_store_failure(void **state)
{
    fx_t f;
    size_t claimed;
    unsigned claims;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    f.s.retry.max_attempts = 1; /* a failure record would be dead at once */
    f.store->fail_status = OUTBOX_ERR_UNREACHABLE;
    f.broker->verdict = ok_then_break_store;
    f.broker->verdict_arg = f.store;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(claimed, 3);
    /* nothing changed in the store, nothing marked failed */
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_PENDING), 3);
    assert_int_equal(f.store->recs[0].attempts, 0);
    assert_int_equal(outbox_dispatcher_counters(f.d)->failed, 0);
    assert_int_equal(outbox_dispatcher_counters(f.d)->db_errors, 1);
    /* next pass re-applies the kept marks, without claiming or publishing */
    f.broker->verdict = NULL;
    claims = f.store->calls_claim;
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 0);
    assert_int_equal(f.store->calls_claim, claims);
    assert_int_equal(f.broker->calls, 1);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 3);
    assert_int_equal(f.store->recs[0].attempts, 0);
    assert_no_locks(f.store);
    done(&f);
}

static void
test_claim_failure_is_reported_and_nothing_published(void **state)
{
    fx_t f;
    (void)state;

    assert_int_equal(make(&f, 2), 0);
    start(&f);
    f.store->fail_next = 1;
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(f.broker->calls, 0);
    assert_non_null(strstr(outbox_dispatcher_last_error(f.d), "claim failed"));
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 2);
    done(&f);
}

static void
test_lock_check_frees_only_stale_locks(void **state)
{
    fx_t f;
    int64_t released = -1;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    start(&f);
    strcpy(f.store->recs[0].locked_by, "dead-relay");
    f.store->recs[0].locked_on_ms = f.store->now_ms - f.s.max_lock_time_ms - 1;
    strcpy(f.store->recs[1].locked_by, "live-relay");
    f.store->recs[1].locked_on_ms = f.store->now_ms - 10;
    assert_int_equal(outbox_dispatcher_check_locks(f.d, &released), OUTBOX_OK);
    assert_int_equal(released, 1);
    assert_string_equal(f.store->recs[0].locked_by, "");
    assert_string_equal(f.store->recs[1].locked_by, "live-relay");
    /* the freed record is claimable again; the live lock is not */
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_DELIVERED);
    assert_int_equal(f.store->recs[1].state, OUTBOX_STATE_PENDING);
    done(&f);
}

static void
test_retention_never_touches_pending(void **state)
{
    fx_t f;
    int64_t deleted = -1;
    int64_t day = 24LL * 3600 * 1000;
    (void)state;

    assert_int_equal(make(&f, 5), 0);
    f.store->now_ms = 400 * day;
    f.s.retention_ms = day;
    f.s.dead_retention_ms = 30 * day;
    start(&f);
    /* 0: ancient pending; 1: delivered 2 days ago; 2: delivered an hour ago;
     * 3: dead 2 days ago (kept, dead retention is longer); 4: dead 31 days ago */
    f.store->recs[0].processed_on_ms = 0;
    f.store->recs[1].state = OUTBOX_STATE_DELIVERED;
    f.store->recs[1].processed_on_ms = f.store->now_ms - 2 * day;
    f.store->recs[2].state = OUTBOX_STATE_DELIVERED;
    f.store->recs[2].processed_on_ms = f.store->now_ms - day / 24;
    f.store->recs[3].state = OUTBOX_STATE_MAX_ATTEMPTS_REACHED;
    f.store->recs[3].processed_on_ms = f.store->now_ms - 2 * day;
    f.store->recs[4].state = OUTBOX_STATE_MAX_ATTEMPTS_REACHED;
    f.store->recs[4].processed_on_ms = f.store->now_ms - 31 * day;
    assert_int_equal(outbox_dispatcher_cleanup(f.d, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 2);
    assert_int_equal(f.store->n, 3);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_PENDING);
    assert_int_equal(f.store->recs[0].seq, 1);
    assert_int_equal(f.store->recs[1].seq, 3);
    assert_int_equal(f.store->recs[2].seq, 4);
    done(&f);
}

static void
test_release_leaves_no_lock(void **state)
{
    fx_t f;
    outbox_batch_t b;
    (void)state;

    assert_int_equal(make(&f, 4), 0);
    start(&f);
    outbox_batch_init(&b);
    assert_int_equal(outbox_store_claim(&f.store->base, "relay-1", 3, &b), OUTBOX_OK);
    assert_int_equal(b.n, 3);
    strcpy(f.store->recs[3].locked_by, "relay-2");
    assert_int_equal(outbox_dispatcher_release(f.d), OUTBOX_OK);
    assert_string_equal(f.store->recs[0].locked_by, "");
    assert_string_equal(f.store->recs[2].locked_by, "");
    /* another relay's lock is not ours to clear */
    assert_string_equal(f.store->recs[3].locked_by, "relay-2");
    outbox_batch_free(&b);
    done(&f);
}

static outbox_pub_status_t
needs_headers(const outbox_record_t *r, void *arg)
{
    (void)arg;
    if (r->msg.nheaders != 2 || strcmp(r->msg.headers[1].name, "trace") != 0 ||
        strcmp(r->msg.headers[1].value, "abc") != 0 || strcmp(r->msg.key, "k") != 0)
        return OUTBOX_PUB_PERMANENT;
    return OUTBOX_PUB_OK;
}

static void
test_headers_and_key_reach_the_broker(void **state)
{
    fx_t f;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    assert_int_equal(outbox_mock_store_add_header(f.store, 0, "content-type", "text/plain"), 0);
    assert_int_equal(outbox_mock_store_add_header(f.store, 0, "trace", "abc"), 0);
    f.broker->verdict = needs_headers;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_DELIVERED);
    done(&f);
}

static void
test_batch_bound_and_order(void **state)
{
    fx_t f;
    size_t claimed;
    (void)state;

    assert_int_equal(make(&f, 7), 0);
    f.s.batch_size = 3;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 3);
    assert_string_equal(f.broker->sent_ids[0], f.store->recs[0].id);
    assert_string_equal(f.broker->sent_ids[2], f.store->recs[2].id);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 1);
    assert_int_equal(f.broker->nsent, 7);
    done(&f);
}

static void
test_tick_schedules_jobs(void **state)
{
    fx_t f;
    int64_t wait = -1, t = 5000;
    (void)state;

    assert_int_equal(make(&f, 5), 0);
    f.s.batch_size = 2;
    f.s.process_interval_ms = 100;
    f.s.linger_ms = 0;
    f.s.lock_check_interval_ms = 1000;
    f.s.max_lock_time_ms = 1000;
    f.s.retention_ms = 2000;
    f.s.dead_retention_ms = 2000;
    f.s.cleanup_interval_ms = 5000;
    start(&f);
    /* first tick runs all three jobs; a full batch means no wait */
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 1);
    assert_int_equal(f.store->calls_clear_stale, 1);
    assert_int_equal(f.store->calls_purge, 1);
    assert_int_equal(wait, 0);
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 3);
    /* a short batch with linger 0: one more pass at once, then idle */
    assert_int_equal(wait, 0);
    assert_false(outbox_dispatcher_idle(f.d));
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 4);
    assert_int_equal(wait, 100);
    assert_true(outbox_dispatcher_idle(f.d));
    assert_int_equal(outbox_dispatcher_tick(f.d, t + 50, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 4);
    assert_int_equal(wait, 50);
    /* a wake-up makes the process job due at once */
    outbox_dispatcher_wake(f.d);
    assert_int_equal(outbox_dispatcher_tick(f.d, t + 60, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 5);
    assert_int_equal(outbox_dispatcher_tick(f.d, t + 1000, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_clear_stale, 2);
    assert_int_equal(f.store->calls_purge, 1);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 5);
    /* jobs switched off do not run */
    outbox_dispatcher_set_jobs(f.d, true, false, false);
    assert_int_equal(outbox_dispatcher_tick(f.d, t + 100000, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_clear_stale, 2);
    assert_int_equal(f.store->calls_purge, 1);
    done(&f);
}

/* After work the process job lingers: re-polls 1 ms apart, doubling, so
 * traffic that goes on is caught without a wake-up; once the gap passes
 * the linger it is idle (a caller arms its wake-up) and the gap goes on
 * doubling to process_interval. New work starts the linger again. */
static void
test_linger_polls_then_idles(void **state)
{
    const int64_t gaps[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000};
    fx_t f;
    int64_t wait = -1, t = 0;
    size_t i;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    f.s.process_interval_ms = 1000;
    f.s.linger_ms = 50;
    start(&f);
    outbox_dispatcher_set_jobs(f.d, true, false, false);
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(f.store->calls_claim, 1);
    assert_int_equal(wait, 1);
    assert_false(outbox_dispatcher_idle(f.d)); /* it found the one record */
    for (i = 0; i < sizeof(gaps) / sizeof(gaps[0]); i++) {
        assert_int_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_OK);
        assert_int_equal(wait, gaps[i + 1 < sizeof(gaps) / sizeof(gaps[0]) ? i + 1 : i]);
        assert_true(outbox_dispatcher_idle(f.d) == (wait > 50));
    }
    /* a wake-up that finds nothing keeps the gap; one that finds work
     * starts the linger again */
    outbox_dispatcher_wake(f.d);
    assert_int_equal(outbox_dispatcher_tick(f.d, t += 10, &wait), OUTBOX_OK);
    assert_int_equal(wait, 1000);
    assert_true(outbox_dispatcher_idle(f.d));
    assert_true(outbox_mock_store_add(f.store, "a.b", "k", "x") >= 0);
    outbox_dispatcher_wake(f.d);
    assert_int_equal(outbox_dispatcher_tick(f.d, t += 10, &wait), OUTBOX_OK);
    assert_int_equal(wait, 1);
    assert_false(outbox_dispatcher_idle(f.d));
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 2);
    done(&f);
}

/* Per-key ordering: records of a key go in waves, one per position, and a
 * record behind a failed one of its key is held back unsent (released,
 * uncharged) while other keys and keyless records go on. A dead (permanent)
 * record does not hold its key back. The broker sees each key in seq order. */
static outbox_pub_status_t
fail_topic_x(const outbox_record_t *r, void *arg)
{
    (void)arg;
    if (strcmp(r->msg.topic, "x.fail") == 0)
        return OUTBOX_PUB_TRANSIENT;
    if (strcmp(r->msg.topic, "x.bad") == 0)
        return OUTBOX_PUB_PERMANENT;
    return OUTBOX_PUB_OK;
}

static void
test_per_key_waves_hold_back_only_their_key(void **state)
{
    fx_t f;
    size_t claimed = 0, i;
    const char *expect_sent[] = {"a1", "b1", "n1", "c1", "b2", "c3", "b3"};
    (void)state;

    assert_int_equal(make(&f, 0), 0);
    /* body names the record; topic x.fail / x.bad set the verdict */
    assert_true(outbox_mock_store_add(f.store, "x.ok", "A", "a1") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "B", "b1") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.fail", "A", "a2") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "", "n1") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "A", "a3") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "B", "b2") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.bad", "C", "c1") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "C", "c3") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "B", "b3") >= 0);
    f.store->per_key_order = true;
    f.s.per_key_order = true;
    f.broker->verdict = fail_topic_x;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 9);
    /* 3 waves: {a1 b1 a2 n1 c1}, {b2 c3} (a3 held: a2 failed), {b3} */
    assert_int_equal(f.broker->calls, 3);
    assert_int_equal(f.broker->nsent, 6);
    for (i = 0; i < f.broker->nsent; i++) {
        const outbox_mock_record_t *r = outbox_mock_store_find(f.store, f.broker->sent_ids[i]);
        size_t k;
        bool found = false;

        for (k = 0; k < sizeof(expect_sent) / sizeof(expect_sent[0]); k++)
            found |= strcmp(r->body, expect_sent[k]) == 0;
        assert_true(found);
    }
    /* a3 released untouched behind a2; a2 charged, retrying; c1 dead */
    for (i = 0; i < f.store->n; i++) {
        const outbox_mock_record_t *r = &f.store->recs[i];

        if (strcmp(r->body, "a3") == 0) {
            assert_int_equal(r->state, OUTBOX_STATE_PENDING);
            assert_int_equal(r->attempts, 0);
            assert_string_equal(r->locked_by, "");
        } else if (strcmp(r->body, "a2") == 0) {
            assert_int_equal(r->state, OUTBOX_STATE_PENDING);
            assert_int_equal(r->attempts, 1);
        } else if (strcmp(r->body, "c1") == 0) {
            assert_int_equal(r->state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
        } else {
            assert_int_equal(r->state, OUTBOX_STATE_DELIVERED);
        }
    }
    assert_int_equal(outbox_dispatcher_counters(f.d)->held_back, 1);
    /* next pass: key A waits for a2's retry (not due), nothing else left */
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 0);
    done(&f);
}

/* Per-key ordering with dead letters: a record that dies waiting for its
 * dead-letter copy may yet be retried (the copy failing for now), so its
 * successors wait for the next batch instead of overtaking it. */
static outbox_pub_status_t
bad_is_permanent(const outbox_record_t *r, void *arg)
{
    (void)arg;
    return strcmp(r->msg.topic, "x.bad") == 0 ? OUTBOX_PUB_PERMANENT : OUTBOX_PUB_OK;
}

static void
test_per_key_dead_letter_pending_holds_key(void **state)
{
    fx_t f;
    size_t claimed = 0;
    (void)state;

    assert_int_equal(make(&f, 0), 0);
    assert_true(outbox_mock_store_add(f.store, "x.bad", "A", "a1") >= 0);
    assert_true(outbox_mock_store_add(f.store, "x.ok", "A", "a2") >= 0);
    f.store->per_key_order = true;
    f.s.per_key_order = true;
    f.s.dead_letter_subject = "dlq.x";
    f.broker->verdict = bad_is_permanent;
    f.broker->dead_verdict = OUTBOX_PUB_TRANSIENT;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 2);
    assert_int_equal(f.broker->nsent, 0); /* a2 never went ahead of a1 */
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_PENDING);
    assert_non_null(strstr(f.store->recs[0].last_error, "dead-letter copy failed"));
    assert_int_equal(f.store->recs[1].state, OUTBOX_STATE_PENDING);
    assert_int_equal(f.store->recs[1].attempts, 0);
    done(&f);
}

/* Dead-letter copies: a record made dead is also published to the
 * dead-letter subject with its reason; a copy that cannot go leaves it dead
 * with a note; one that fails for now turns the death into a retry. */
static void
test_dead_letters(void **state)
{
    fx_t f;
    size_t claimed = 0;
    outbox_mock_record_t *r;
    (void)state;

    assert_int_equal(make(&f, 3), 0);
    f.s.dead_letter_subject = "dead.letters";
    f.broker->verdict = permanent_second;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(f.broker->dead_calls, 1);
    assert_int_equal(f.broker->ndead, 1);
    r = outbox_mock_store_find(f.store, f.broker->dead_ids[0]);
    assert_int_equal(r->seq, 2);
    assert_int_equal(r->state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_non_null(strstr(f.broker->dead_reasons[0], "verdict"));
    assert_int_equal(outbox_dispatcher_counters(f.d)->dead_letters, 1);
    done(&f);

    /* the copy fails for now: the record retries, not dead yet */
    assert_int_equal(make(&f, 3), 0);
    f.s.dead_letter_subject = "dead.letters";
    f.broker->verdict = permanent_second;
    f.broker->dead_verdict = OUTBOX_PUB_TRANSIENT;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    r = &f.store->recs[1];
    assert_int_equal(r->state, OUTBOX_STATE_PENDING);
    assert_true(r->next_attempt_ms > f.store->now_ms);
    assert_non_null(strstr(r->last_error, "dead-letter copy failed"));
    assert_int_equal(outbox_dispatcher_counters(f.d)->dead, 0);
    done(&f);

    /* the copy can never go: dead anyway, the reason says so */
    assert_int_equal(make(&f, 3), 0);
    f.s.dead_letter_subject = "dead.letters";
    f.broker->verdict = permanent_second;
    f.broker->dead_verdict = OUTBOX_PUB_PERMANENT;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    r = &f.store->recs[1];
    assert_int_equal(r->state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_non_null(strstr(r->last_error, "no dead-letter copy"));
    done(&f);
}

/* A relay died holding a batch: the crash is counted against each record
 * and the poison one, retried alone, is dead at crash_limit while its
 * innocent batch mates are delivered one by one. */
static void
test_crash_narrowed_to_the_poison_record(void **state)
{
    fx_t f;
    outbox_batch_t b;
    int64_t freed = 0, parked = 0;
    size_t claimed = 0;
    int round;
    (void)state;

    assert_int_equal(make(&f, 0), 0);
    assert_true(outbox_mock_store_add(f.store, "ok", "", "a") >= 0);
    assert_true(outbox_mock_store_add(f.store, "poison", "", "p") >= 0);
    assert_true(outbox_mock_store_add(f.store, "ok", "", "b") >= 0);
    start(&f);
    outbox_batch_init(&b);
    /* relay "r1" claims all three and dies; the keeper releases them */
    assert_int_equal(outbox_store_claim(&f.store->base, "r1", 10, &b), OUTBOX_OK);
    assert_int_equal(b.n, 3);
    assert_int_equal(outbox_dispatcher_release_crashed(f.d, "r1", 1, 3, &freed, &parked),
                     OUTBOX_OK);
    assert_int_equal(freed, 3);
    assert_int_equal(parked, 0);
    /* suspects alone: "a" first (delivered), then the poison kills r2, r3 */
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 1);
    assert_int_equal(f.store->recs[0].state, OUTBOX_STATE_DELIVERED);
    for (round = 2; round <= 3; round++) {
        char id[8];

        snprintf(id, sizeof(id), "r%d", round);
        assert_int_equal(outbox_store_claim(&f.store->base, id, 10, &b), OUTBOX_OK);
        assert_int_equal(b.n, 1);
        assert_string_equal(b.recs[0].msg.topic, "poison");
        /* alone in flight: a full count */
        assert_int_equal(outbox_dispatcher_release_crashed(f.d, id, b.recs[0].seq, b.recs[0].seq,
                                                           &freed, &parked),
                         OUTBOX_OK);
        assert_int_equal(freed, 1);
        assert_int_equal(parked, round == 3 ? 1 : 0);
    }
    assert_int_equal(f.store->recs[1].state, OUTBOX_STATE_MAX_ATTEMPTS_REACHED);
    assert_string_equal(f.store->recs[1].last_error, "worker died while processing (3 times)");
    /* the innocent "b" (one crash) goes alone and is delivered */
    assert_int_equal(outbox_dispatcher_process(f.d, &claimed), OUTBOX_OK);
    assert_int_equal(claimed, 1);
    assert_int_equal(f.store->recs[2].state, OUTBOX_STATE_DELIVERED);
    assert_int_equal(f.store->recs[2].crashes, 1);
    assert_int_equal(outbox_dispatcher_counters(f.d)->dead, 1);
    outbox_batch_free(&b);
    done(&f);
}

static void
test_tick_backs_off_on_errors(void **state)
{
    fx_t f;
    int64_t wait = -1, t = 0;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    start(&f);
    outbox_dispatcher_set_jobs(f.d, true, false, false);
    f.store->fail_next = 100;
    assert_int_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(wait, 100);
    assert_int_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(wait, 200);
    assert_int_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(wait, 400);
    for (int i = 0; i < 20; i++)
        outbox_dispatcher_tick(f.d, t += wait, &wait);
    assert_int_equal(wait, 10000); /* capped, never a hot loop */
    f.store->fail_next = 0;
    assert_int_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_OK);
    assert_int_equal(outbox_mock_store_count(f.store, OUTBOX_STATE_DELIVERED), 1);
    done(&f);
}

/* The keeper runs the lock check without a process job: its failures back
 * off on their own count too, instead of retrying every 100 ms. */
static void
test_lock_check_alone_backs_off_on_errors(void **state)
{
    fx_t f;
    int64_t wait = -1, t = 0;
    (void)state;

    assert_int_equal(make(&f, 1), 0);
    start(&f);
    outbox_dispatcher_set_jobs(f.d, false, true, false);
    f.store->fail_next = 100;
    assert_int_not_equal(outbox_dispatcher_tick(f.d, t, &wait), OUTBOX_OK);
    assert_int_equal(wait, 100);
    assert_int_not_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_OK);
    assert_int_equal(wait, 200);
    assert_int_not_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_OK);
    assert_int_equal(wait, 400);
    for (int i = 0; i < 20; i++)
        outbox_dispatcher_tick(f.d, t += wait, &wait);
    assert_int_equal(wait, 10000);
    f.store->fail_next = 0;
    assert_int_equal(outbox_dispatcher_tick(f.d, t += wait, &wait), OUTBOX_OK);
    assert_int_equal(wait, f.s.lock_check_interval_ms);
    done(&f);
}

static void
test_retry_delay_policy(void **state)
{
    outbox_retry_policy_t p = {
        .max_attempts = 0, .initial_ms = 1000, .multiplier = 2.0, .max_ms = 60000, .jitter = 0};
    static const struct {
        int attempt;
        int64_t want;
    } cases[] = {{1, 1000}, {2, 2000}, {3, 4000}, {6, 32000}, {7, 60000}, {1000000, 60000}};
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(outbox_retry_delay_ms(&p, cases[i].attempt), cases[i].want);
}

static void
test_jitter_stays_in_range(void **state)
{
    fx_t f;
    int i;
    (void)state;

    assert_int_equal(make(&f, 200), 0);
    f.s.retry.jitter = 0.5;
    f.s.batch_size = 200;
    f.broker->verdict = all_transient;
    start(&f);
    assert_int_equal(outbox_dispatcher_process(f.d, NULL), OUTBOX_OK);
    {
        int64_t lo = INT64_MAX, hi = 0;
        for (i = 0; i < 200; i++) {
            int64_t dly = f.store->recs[i].next_attempt_ms - f.store->now_ms;
            assert_true(dly >= 500 && dly <= 1000);
            lo = dly < lo ? dly : lo;
            hi = dly > hi ? dly : hi;
        }
        assert_true(hi - lo > 100); /* actually spread out */
    }
    done(&f);
}

static void
test_settings_validation(void **state)
{
    outbox_dispatcher_settings_t s;
    char err[256];
    (void)state;

    outbox_dispatcher_settings_default(&s);
    assert_int_equal(outbox_dispatcher_settings_validate(&s, err, sizeof(err)), OUTBOX_OK);
#define BAD(field, val, word)                                                                      \
    do {                                                                                           \
        outbox_dispatcher_settings_default(&s);                                                    \
        s.field = val;                                                                             \
        err[0] = '\0';                                                                             \
        assert_int_equal(outbox_dispatcher_settings_validate(&s, err, sizeof(err)),                \
                         OUTBOX_ERR_CONFIG);                                                       \
        assert_non_null(strstr(err, word));                                                        \
    } while (0)
    BAD(process_interval_ms, 0, "process_interval");
    BAD(process_interval_ms, -5, "process_interval");
    BAD(lock_check_interval_ms, 0, "lock_check_interval");
    BAD(max_lock_time_ms, 0, "max_lock_time");
    BAD(cleanup_interval_ms, 0, "cleanup_interval");
    BAD(batch_size, 0, "batch_size");
    BAD(batch_size, 10001, "batch_size");
    BAD(cleanup_batch, 0, "cleanup_batch");
    BAD(retention_ms, 1000, "retention");
    BAD(dead_retention_ms, 1000, "dead_retention");
    BAD(retry.max_attempts, -1, "max_attempts");
    BAD(retry.initial_ms, 0, "retry_initial");
    BAD(retry.multiplier, 0.5, "retry_multiplier");
    BAD(retry.max_ms, 10, "retry_max");
    BAD(retry.jitter, 1.5, "retry_jitter");
    BAD(crash_limit, 1, "crash_limit");
    BAD(linger_ms, -1, "linger");
    BAD(dead_letter_subject, "dead letters", "dead_letter_subject");
    BAD(dead_letter_subject, "dead.>", "dead_letter_subject");
#undef BAD
    outbox_dispatcher_settings_default(&s);
    s.retention_ms = -1; /* keep forever is fine */
    assert_int_equal(outbox_dispatcher_settings_validate(&s, err, sizeof(err)), OUTBOX_OK);
}

static void
test_create_rejects_bad_lock_id(void **state)
{
    fx_t f;
    outbox_dispatcher_t *d = NULL;
    char err[256], big[300];
    (void)state;

    assert_int_equal(make(&f, 0), 0);
    assert_int_equal(outbox_dispatcher_create(&d, &f.store->base, &f.broker->base, &f.s, "", 1, err,
                                              sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(outbox_dispatcher_create(&d, &f.store->base, &f.broker->base, &f.s, big, 1,
                                              err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_null(d);
    done(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivers_whole_batch_with_one_mark),
        cmocka_unit_test(test_failure_in_middle_does_not_stop_batch),
        cmocka_unit_test(test_retry_waits_for_backoff),
        cmocka_unit_test(test_attempt_cap_is_greater_or_equal),
        cmocka_unit_test(test_max_attempts_zero_is_unlimited),
        cmocka_unit_test(test_permanent_failure_is_dead_at_once),
        cmocka_unit_test(test_observer_sees_phases_dead_records_and_freed_locks),
        cmocka_unit_test(test_broker_down_charges_no_attempt),
        cmocka_unit_test(test_no_verdict_is_deferred_uncharged),
        cmocka_unit_test(test_marks_retried_after_store_failure),
        cmocka_unit_test(test_claim_failure_is_reported_and_nothing_published),
        cmocka_unit_test(test_lock_check_frees_only_stale_locks),
        cmocka_unit_test(test_retention_never_touches_pending),
        cmocka_unit_test(test_release_leaves_no_lock),
        cmocka_unit_test(test_headers_and_key_reach_the_broker),
        cmocka_unit_test(test_batch_bound_and_order),
        cmocka_unit_test(test_tick_schedules_jobs),
        cmocka_unit_test(test_linger_polls_then_idles),
        cmocka_unit_test(test_per_key_waves_hold_back_only_their_key),
        cmocka_unit_test(test_dead_letters),
        cmocka_unit_test(test_per_key_dead_letter_pending_holds_key),
        cmocka_unit_test(test_crash_narrowed_to_the_poison_record),
        cmocka_unit_test(test_tick_backs_off_on_errors),
        cmocka_unit_test(test_lock_check_alone_backs_off_on_errors),
        cmocka_unit_test(test_retry_delay_policy),
        cmocka_unit_test(test_jitter_stays_in_range),
        cmocka_unit_test(test_settings_validation),
        cmocka_unit_test(test_create_rejects_bad_lock_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
