/*
 * Async JetStream publisher. cnats calls on_ack on its own thread for every
 * message (we then own the message and free it); counters are atomics read
 * by the publishing thread after js_PublishAsyncComplete returned.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <nats/nats.h>

#include "jspub.h"
#include "util.h"

struct jspub {
    natsConnection *nc;
    jsCtx *js;
    atomic_uint_fast64_t sent, acked, failed;
    char first_error[256];
    atomic_int have_error;
};

static void
on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    jspub_t *p = closure;
    int expect = 0;

    (void)js;
    if (pa != NULL) {
        atomic_fetch_add(&p->acked, 1);
    } else {
        atomic_fetch_add(&p->failed, 1);
        if (atomic_compare_exchange_strong(&p->have_error, &expect, 1))
            snprintf(p->first_error, sizeof(p->first_error), "%s (error %d)",
                     pae != NULL && pae->ErrText != NULL ? pae->ErrText : "PubAck missing",
                     pae != NULL ? (int)pae->ErrCode : 0);
    }
    natsMsg_Destroy(msg);
}

int
jspub_open(jspub_t **out, const char *url, long max_pending)
{
    natsOptions *opts = NULL;
    jsOptions jo;
    jspub_t *p;
    natsStatus s;

    if ((p = calloc(1, sizeof(*p))) == NULL) {
        bench_err("out of memory");
        return -1;
    }
    s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "outboxbench-raw");
    if (s == NATS_OK)
        s = natsConnection_Connect(&p->nc, opts);
    natsOptions_Destroy(opts);
    if (s == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        jo.PublishAsync.MaxPending = max_pending;
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = p;
        s = natsConnection_JetStream(&p->js, p->nc, &jo);
    }
    if (s != NATS_OK) {
        bench_err("NATS %s: cannot connect for publishing: %s", url, natsStatus_GetText(s));
        jspub_close(p);
        return -1;
    }
    *out = p;
    return 0;
}

int
jspub_send(jspub_t *p, const jspub_msg_t *m)
{
    natsMsg *msg = NULL;
    jsPubOptions po;
    natsStatus s;
    int i;

    s = natsMsg_Create(&msg, m->subject, NULL, m->body_len > 0 ? m->body : NULL, (int)m->body_len);
    for (i = 0; s == NATS_OK && i < m->nheaders; i++)
        s = natsMsgHeader_Add(msg, m->hnames[i], m->hvalues[i]);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Outbox-Id", m->id);
    if (s == NATS_OK && m->key != NULL)
        s = natsMsgHeader_Set(msg, "Outbox-Key", m->key);
    if (s == NATS_OK) {
        jsPubOptions_Init(&po);
        po.MsgId = m->id;
        s = js_PublishMsgAsync(p->js, &msg, &po); /* on success msg is NULL: cnats owns it */
    }
    natsMsg_Destroy(msg);
    if (s != NATS_OK) {
        bench_err("JetStream async publish to %s failed: %s", m->subject, natsStatus_GetText(s));
        return -1;
    }
    atomic_fetch_add(&p->sent, 1);
    return 0;
}

int
jspub_complete(jspub_t *p, int64_t timeout_ms)
{
    jsPubOptions po;
    natsStatus s;

    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    s = js_PublishAsyncComplete(p->js, &po);
    if (s != NATS_OK) {
        bench_err("JetStream: PubAcks not all in within %lld ms: %s", (long long)timeout_ms,
                  natsStatus_GetText(s));
        return -1;
    }
    if (atomic_load(&p->failed) > 0) {
        bench_err("JetStream refused %llu messages; first: %s",
                  (unsigned long long)atomic_load(&p->failed), p->first_error);
        return -1;
    }
    return 0;
}

uint64_t
jspub_acked(const jspub_t *p)
{
    return atomic_load(&((jspub_t *)p)->acked);
}

void
jspub_close(jspub_t *p)
{
    if (p == NULL)
        return;
    if (p->js != NULL && atomic_load(&p->sent) > 0) {
        jsPubOptions po;

        /* Callbacks still running use p: let them finish first. */
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        js_PublishAsyncComplete(p->js, &po);
    }
    jsCtx_Destroy(p->js);
    natsConnection_Destroy(p->nc);
    free(p);
}
