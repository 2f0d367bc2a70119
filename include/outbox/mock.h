/*
 * In-memory Store and scriptable Broker for tests of code built on
 * liboutbox (and of the dispatcher itself). The mock store keeps records in
 * an array and applies the same rules as the PostgreSQL store (claim bound,
 * oldest first, due time, lock filtering, suspects alone, per-key prefixes,
 * crash counts, retention of non-pending rows only);
 * its clock is mock_now_ms, advanced by the test. Not thread-safe.
 */
#ifndef OUTBOX_MOCK_H
#define OUTBOX_MOCK_H

#include "outbox/broker.h"
#include "outbox/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct outbox_mock_record {
    char id[OUTBOX_ID_LEN + 1];
    int64_t seq;
    char topic[OUTBOX_TOPIC_MAX + 1];
    char key[128];
    char *body; /* owned */
    size_t body_len;
    outbox_header_t hdr[4]; /* names/values are owned copies */
    size_t nhdr;
    outbox_state_t state;
    int32_t attempts;
    char locked_by[128]; /* "" = unlocked */
    int64_t locked_on_ms, processed_on_ms, last_attempt_ms, next_attempt_ms;
    char last_error[256];
    int32_t crashes;
} outbox_mock_record_t;

typedef struct outbox_mock_store {
    outbox_store_t base;
    outbox_mock_record_t *recs;
    size_t n, cap;
    int64_t next_seq;
    int64_t now_ms; /* the mock database clock */
    int fail_next;  /* > 0: the next fail_next calls fail with fail_status */
    int fail_status;
    bool per_key_order; /* claim as the PostgreSQL store's per_key_order */
    unsigned calls_claim, calls_mark, calls_clear_stale, calls_clear_by_id, calls_purge;
    unsigned calls_crashed;
    size_t last_mark_n; /* marks in the last mark() call */
} outbox_mock_store_t;

int outbox_mock_store_create(outbox_mock_store_t **out);
/* Add a PENDING record; returns its index or -1. */
int outbox_mock_store_add(outbox_mock_store_t *m, const char *topic, const char *key,
                          const char *body);
/* Attach a header to record idx (at most 4); 0 or -1. */
int outbox_mock_store_add_header(outbox_mock_store_t *m, int idx, const char *name,
                                 const char *value);
outbox_mock_record_t *outbox_mock_store_find(outbox_mock_store_t *m, const char *id);
size_t outbox_mock_store_count(const outbox_mock_store_t *m, outbox_state_t st);

typedef outbox_pub_status_t (*outbox_mock_verdict_fn)(const outbox_record_t *r, void *arg);

typedef struct outbox_mock_broker {
    outbox_broker_t base;
    bool down;                      /* every record NOT_SENT, returns UNREACHABLE */
    outbox_mock_verdict_fn verdict; /* per-record outcome; NULL = OK */
    void *verdict_arg;
    unsigned calls;
    size_t published;                    /* records acknowledged */
    char (*sent_ids)[OUTBOX_ID_LEN + 1]; /* every id acknowledged, in order */
    size_t nsent, sent_cap;
    /* dead-letter copies: verdict dead_verdict (OK when unset); the ids
     * and reasons of those acknowledged, in order */
    outbox_pub_status_t dead_verdict;
    unsigned dead_calls;
    char (*dead_ids)[OUTBOX_ID_LEN + 1];
    char (*dead_reasons)[256];
    size_t ndead, dead_cap;
} outbox_mock_broker_t;

int outbox_mock_broker_create(outbox_mock_broker_t **out);

#ifdef __cplusplus
}
#endif
#endif
