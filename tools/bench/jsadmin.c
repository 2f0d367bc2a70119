/*
 * JetStream administration (cnats). Streams are created by `outboxd stream
 * add` like an operator would; only what outboxd has no command for
 * (count polling, purge, delete) is done here.
 */
#include <stdio.h>
#include <stdlib.h>

#include <nats/nats.h>

#include "jsadmin.h"
#include "util.h"

#define API_WAIT_MS 5000

struct jsadm {
    natsConnection *nc;
    jsCtx *js;
    const char *url;
};

int
jsadm_open(jsadm_t **out, const char *url)
{
    natsOptions *opts = NULL;
    jsOptions jo;
    jsadm_t *a;
    natsStatus s;

    if ((a = calloc(1, sizeof(*a))) == NULL) {
        bench_err("out of memory");
        return -1;
    }
    a->url = url;
    s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, API_WAIT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "outboxbench-admin");
    if (s == NATS_OK)
        s = natsConnection_Connect(&a->nc, opts);
    natsOptions_Destroy(opts);
    if (s == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = API_WAIT_MS;
        s = natsConnection_JetStream(&a->js, a->nc, &jo);
    }
    if (s != NATS_OK) {
        bench_err("NATS %s: cannot connect for JetStream administration: %s", url,
                  natsStatus_GetText(s));
        jsadm_close(a);
        return -1;
    }
    *out = a;
    return 0;
}

int
jsadm_msgs(jsadm_t *a, const char *stream, uint64_t *out)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, a->js, stream, NULL, &jerr);

    if (s != NATS_OK) {
        bench_err("JetStream: stream info %s failed: %s (error %d)", stream, natsStatus_GetText(s),
                  (int)jerr);
        return -1;
    }
    *out = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return 0;
}

int
jsadm_purge(jsadm_t *a, const char *stream)
{
    jsErrCode jerr = 0;
    natsStatus s = js_PurgeStream(a->js, stream, NULL, &jerr);

    if (s != NATS_OK) {
        bench_err("JetStream: purge %s failed: %s (error %d)", stream, natsStatus_GetText(s),
                  (int)jerr);
        return -1;
    }
    return 0;
}

int
jsadm_delete(jsadm_t *a, const char *stream)
{
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteStream(a->js, stream, NULL, &jerr);

    if (s != NATS_OK) {
        bench_err("JetStream: delete %s failed: %s (error %d)", stream, natsStatus_GetText(s),
                  (int)jerr);
        return -1;
    }
    return 0;
}

void
jsadm_close(jsadm_t *a)
{
    if (a == NULL)
        return;
    jsCtx_Destroy(a->js);
    natsConnection_Destroy(a->nc);
    free(a);
}
