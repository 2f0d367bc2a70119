/*
 * Timestamping subscriber. The stamp is taken first thing in the callback:
 * what lies between the relay's publish and that instant is the network
 * and the client's delivery thread, the same for any consumer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "natsub.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 5000
#define DRAIN_TIMEOUT_MS 5000

struct natsub {
    natsConnection *nc;
    natsSubscription *sub;
    size_t nidx;
    _Atomic int64_t *recv_us;
    atomic_uint_fast64_t unique, dups, foreign;
};

static void
on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    int64_t now = bench_now_us(), expect = 0;
    natsub_t *s = closure;
    const char *d = natsMsg_GetData(m);
    int len = natsMsg_GetDataLength(m), i;
    uint64_t idx = 0;

    (void)nc;
    (void)sub;
    for (i = 0; i < len && i < 20 && d[i] >= '0' && d[i] <= '9'; i++)
        idx = idx * 10 + (uint64_t)(d[i] - '0');
    if (i == 0 || idx >= s->nidx)
        atomic_fetch_add_explicit(&s->foreign, 1, memory_order_relaxed);
    else if (atomic_compare_exchange_strong(&s->recv_us[idx], &expect, now))
        atomic_fetch_add_explicit(&s->unique, 1, memory_order_release);
    else
        atomic_fetch_add_explicit(&s->dups, 1, memory_order_relaxed);
    natsMsg_Destroy(m);
}

int
natsub_open(natsub_t **out, const char *url, const char *subject, size_t nidx)
{
    natsOptions *opts = NULL;
    natsub_t *s;
    natsStatus st;

    if ((s = calloc(1, sizeof(*s))) == NULL ||
        (s->recv_us = calloc(nidx > 0 ? nidx : 1, sizeof(*s->recv_us))) == NULL) {
        bench_err("out of memory for %zu receive stamps", nidx);
        free(s);
        return -1;
    }
    s->nidx = nidx;
    st = natsOptions_Create(&opts);
    if (st == NATS_OK)
        st = natsOptions_SetURL(opts, url);
    if (st == NATS_OK)
        st = natsOptions_SetTimeout(opts, CONNECT_TIMEOUT_MS);
    if (st == NATS_OK)
        st = natsOptions_SetName(opts, "outboxbench-sub");
    if (st == NATS_OK)
        st = natsConnection_Connect(&s->nc, opts);
    natsOptions_Destroy(opts);
    if (st != NATS_OK) {
        bench_err("NATS %s: subscriber cannot connect: %s", url, natsStatus_GetText(st));
        goto fail;
    }
    st = natsConnection_Subscribe(&s->sub, s->nc, subject, on_msg, s);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(s->sub, -1, -1);
    if (st == NATS_OK)
        st = natsConnection_FlushTimeout(s->nc, CONNECT_TIMEOUT_MS);
    if (st != NATS_OK) {
        bench_err("NATS %s: subscribe to \"%s\" failed: %s", url, subject, natsStatus_GetText(st));
        goto fail;
    }
    *out = s;
    return 0;
fail:
    natsub_close(s);
    return -1;
}

uint64_t
natsub_unique(const natsub_t *s)
{
    return atomic_load_explicit(&((natsub_t *)s)->unique, memory_order_acquire);
}

uint64_t
natsub_duplicates(const natsub_t *s)
{
    return atomic_load(&((natsub_t *)s)->dups);
}

uint64_t
natsub_foreign(const natsub_t *s)
{
    return atomic_load(&((natsub_t *)s)->foreign);
}

int64_t
natsub_recv_us(const natsub_t *s, size_t i)
{
    return i < s->nidx ? atomic_load_explicit(&s->recv_us[i], memory_order_relaxed) : 0;
}

void
natsub_close(natsub_t *s)
{
    if (s == NULL)
        return;
    if (s->sub != NULL) {
        /* Drain: callbacks in flight finish before the stamps are freed. */
        if (natsSubscription_Drain(s->sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(s->sub, DRAIN_TIMEOUT_MS);
        natsSubscription_Destroy(s->sub);
    }
    natsConnection_Destroy(s->nc);
    free(s->recv_us);
    free(s);
}
