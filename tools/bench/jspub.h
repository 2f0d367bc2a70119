/*
 * Bare JetStream async publishing for `raw`: js_PublishMsgAsync with
 * Nats-Msg-Id per message, js_PublishAsyncComplete per batch, PubAcks
 * counted by an ack handler. No per-record bookkeeping: this is the ceiling
 * the relay's broker is measured against.
 */
#ifndef BENCH_JSPUB_H
#define BENCH_JSPUB_H

#include <stddef.h>
#include <stdint.h>

typedef struct jspub jspub_t;

typedef struct jspub_msg {
    const char *subject, *id, *key; /* key may be NULL */
    const char *const *hnames, *const *hvalues;
    int nheaders;
    const void *body;
    size_t body_len;
} jspub_msg_t;

/* max_pending: the largest batch (cnats stalls beyond it). 0 or -1. */
int jspub_open(jspub_t **out, const char *url, long max_pending);
/* Hand one message to cnats (headers, Outbox-Id, Outbox-Key, Nats-Msg-Id). */
int jspub_send(jspub_t *p, const jspub_msg_t *m);
/* Wait until every message sent so far is acknowledged; -1 when one was
 * refused or the wait timed out (error printed). */
int jspub_complete(jspub_t *p, int64_t timeout_ms);
uint64_t jspub_acked(const jspub_t *p);
void jspub_close(jspub_t *p); /* NULL ok */

#endif
