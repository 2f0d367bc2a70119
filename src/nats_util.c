/*
 * cnats plumbing shared by the NATS broker and the stream administration:
 * connecting with the relay's reconnect policy, URL redaction, error text.
 * Invariant: no credential from a URL ever reaches an error message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nats_util.h"

#define OUTBOX_NATS_MAX_SERVERS 32
#define OUTBOX_NATS_RECONNECT_MIN_MS 250
#define OUTBOX_NATS_RECONNECT_MAX_MS 2000
#define OUTBOX_NATS_PING_INTERVAL_MS 5000
#define OUTBOX_NATS_MAX_PINGS_OUT 2
#define OUTBOX_NATS_WRITE_DEADLINE_MS 10000

void
outbox_nats_redact_url(const char *url, char *out, size_t len)
{
    size_t o = 0;
    const char *p = url;

    if (len == 0)
        return;
    if (url == NULL)
        url = p = "";

    while (*p != '\0') {
        const char *end = strchr(p, ',');
        const char *auth, *host_end, *at = NULL, *q;

        if (end == NULL)
            end = p + strlen(p);
        /* The authority starts after "scheme://" and ends at '/' or the
         * end of the entry; credentials are whatever precedes its last '@'. */
        auth = p;
        for (q = p; q + 2 < end; q++) {
            if (q[0] == ':' && q[1] == '/' && q[2] == '/') {
                auth = q + 3;
                break;
            }
        }
        for (host_end = auth; host_end < end && *host_end != '/'; host_end++) {
            if (*host_end == '@')
                at = host_end;
        }
        for (q = p; q < auth && o + 1 < len; q++)
            out[o++] = *q;
        for (q = (at != NULL) ? at + 1 : auth; q < end && o + 1 < len; q++)
            out[o++] = *q;
        if (*end == ',' && o + 1 < len)
            out[o++] = ',';
        p = (*end == ',') ? end + 1 : end;
    }
    out[o] = '\0';
}

void
outbox_nats_status_text(natsStatus s, char *out, size_t len)
{
    natsStatus ls = NATS_OK;
    const char *last = nats_GetLastError(&ls);

    if (last != NULL && *last != '\0' && ls == s) {
        const char *p = strstr(last, "): ");

        /* cnats prefixes "(conn.c:2088): ": its source, not the user's. */
        if (last[0] == '(' && p != NULL)
            last = p + 3;
        snprintf(out, len, "%s", last);
    } else
        snprintf(out, len, "%s", natsStatus_GetText(s));
}

int
outbox_nats_split_list(char *list, char **items, int max)
{
    int n = 0;
    char *p = list;

    while (p != NULL && *p != '\0') {
        char *comma = strchr(p, ',');
        char *b = p, *e;

        if (comma != NULL)
            *comma = '\0';
        while (*b == ' ' || *b == '\t')
            b++;
        e = b + strlen(b);
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (*b != '\0') {
            if (n == max)
                return -1;
            items[n++] = b;
        }
        p = (comma != NULL) ? comma + 1 : NULL;
    }
    return n;
}

/* Backoff after every full pass over the server list: 250 ms doubling to
 * 2 s, plus up to a quarter of random jitter so that many workers losing
 * the same server do not reconnect in lock step. Runs on a cnats thread. */
static int64_t
reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    struct timespec ts;
    int64_t d = OUTBOX_NATS_RECONNECT_MIN_MS;
    uint64_t x;

    (void)nc;
    (void)closure;
    while (attempts-- > 1 && d < OUTBOX_NATS_RECONNECT_MAX_MS)
        d *= 2;
    if (d > OUTBOX_NATS_RECONNECT_MAX_MS)
        d = OUTBOX_NATS_RECONNECT_MAX_MS;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 29;
    return d + (int64_t)(x % (uint64_t)(d / 4 + 1));
}

static int
connect_status(natsStatus s)
{
    switch (s) {
    case NATS_NO_MEMORY: return OUTBOX_ERR_NOMEM;
    case NATS_INVALID_ARG:
    case NATS_ADDRESS_MISSING:
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
    case NATS_SECURE_CONNECTION_WANTED:
    case NATS_SECURE_CONNECTION_REQUIRED: return OUTBOX_ERR_CONFIG;
    default: return OUTBOX_ERR_UNREACHABLE;
    }
}

int
outbox_nats_connect(natsConnection **out, const outbox_nats_options_t *opt, bool reconnect,
                    char *err, size_t errlen)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    char *urls = NULL;
    char *srv[OUTBOX_NATS_MAX_SERVERS];
    char shown[512], why[256];
    natsStatus s;
    int n, rc = OUTBOX_OK;

    outbox_nats_redact_url(opt->url, shown, sizeof(shown));
    if (opt->url == NULL) {
        snprintf(err, errlen, "no NATS url given");
        rc = OUTBOX_ERR_CONFIG;
        goto done;
    }
    if ((urls = strdup(opt->url)) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    n = outbox_nats_split_list(urls, srv, OUTBOX_NATS_MAX_SERVERS);
    if (n <= 0) {
        snprintf(err, errlen, "NATS url '%s': %s", shown,
                 n == 0 ? "no server given" : "more than 32 servers");
        rc = OUTBOX_ERR_CONFIG;
        goto done;
    }

    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, (const char **)srv, n);
    if (s == NATS_OK && opt->name != NULL && opt->name[0] != '\0')
        s = natsOptions_SetName(o, opt->name);
    if (s == NATS_OK && opt->connect_timeout_ms > 0)
        s = natsOptions_SetTimeout(o, opt->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, OUTBOX_NATS_PING_INTERVAL_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, OUTBOX_NATS_MAX_PINGS_OUT);
    /* A request pending when the connection drops fails at once instead of
     * running into its timeout. */
    if (s == NATS_OK)
        s = natsOptions_SetFailRequestsOnDisconnect(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, reconnect);
    if (s == NATS_OK && reconnect) {
        s = natsOptions_SetMaxReconnect(o, -1);
        if (s == NATS_OK)
            s = natsOptions_SetCustomReconnectDelay(o, reconnect_delay, NULL);
        /* Publishing while reconnecting must fail rather than sit in a
         * buffer the caller would count as published (0 means 8 MB). */
        if (s == NATS_OK)
            s = natsOptions_SetReconnectBufSize(o, 1);
        /* A server that stops reading must not block a publish forever. */
        if (s == NATS_OK)
            s = natsOptions_SetWriteDeadline(o, opt->publish_timeout_ms > 0
                                                    ? opt->publish_timeout_ms
                                                    : OUTBOX_NATS_WRITE_DEADLINE_MS);
    }
    if (s != NATS_OK) {
        outbox_nats_status_text(s, why, sizeof(why));
        snprintf(err, errlen, "NATS options for '%s': %s", shown, why);
        rc = connect_status(s);
        goto done;
    }

    s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK) {
        outbox_nats_status_text(s, why, sizeof(why));
        snprintf(err, errlen, "cannot connect to NATS at '%s': %s", shown, why);
        rc = connect_status(s);
        goto done;
    }
    *out = nc;
    nc = NULL;

done:
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    free(urls);
    return rc;
}
