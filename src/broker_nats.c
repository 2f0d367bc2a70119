/*
 * The NATS Broker (cnats): JetStream mode publishes a batch asynchronously
 * and waits for one PubAck per record (Nats-Msg-Id = record id, so resends
 * are dropped by the stream); core mode publishes and flushes once. Every
 * record gets a result. A record is checked (subject, headers, size against
 * max_payload) before it is sent, so one bad record never gets the
 * connection closed. PubAcks arrive on a cnats thread: they are matched to
 * records by message pointer, and that matching state is guarded by nb->mu.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "nats_util.h"
#include "validate.h"

#define DEFAULT_PUBLISH_TIMEOUT_MS 5000
#define STATUS_POLL_MS 50   /* how soon a dropped connection ends the ack wait */
#define DRAIN_WAIT_MS 1000  /* destroy: wait for ack callbacks still running */
#define HDR_PREAMBLE_LEN 12 /* "NATS/1.0\r\n" + the final "\r\n" */
#define JS_MSG_ID_HDR "Nats-Msg-Id"
#define DEAD_REASON_MAX 1000 /* bytes of a reason carried in Outbox-Dead-Reason */
#define MAX_STREAMS 32       /* streams whose duplicate window is checked */
#define STREAM_NAME_MAX 255
#define PROBE_MAX 16 /* subjects a batch asks JetStream about (probe_streams) */

enum rec_state {
    REC_IDLE = 0, /* not (yet) handed to cnats */
    REC_WAITING,  /* published, PubAck outstanding: only the ack thread may set res */
    REC_DONE,
    REC_NO_RESPONDERS, /* done, but "no responders": is a stream there? (probe_streams) */
    REC_NO_ACK         /* done, no PubAck came: is a stream there? (probe_streams) */
};

typedef struct ack_slot {
    natsMsg *msg;
    size_t idx;
} ack_slot_t;

typedef struct nats_broker {
    outbox_broker_t base;
    natsConnection *nc;
    jsCtx *js;
    outbox_nats_mode_t mode;
    int64_t timeout_ms;
    char url[512]; /* redacted */
    bool
        published_async; /* cnats 3.4.1's pending-list calls crash before the first async publish */

    /* Per-batch arrays, grown to the largest batch seen and kept. */
    natsMsg **msgs;
    unsigned char *state;
    ack_slot_t *slots; /* sorted by msg pointer while a batch is active */
    size_t cap;

    /* Shared with the ack thread. */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled when waiting drops to 0 */
    bool active;
    size_t nslots;
    size_t waiting;
    outbox_pub_result_t *res;

    /* Duplicate-window check: streams seen in PubAcks (under mu), and of
     * those, how many have been checked (by the publishing thread). */
    int64_t dedupe_span_ms;
    void (*warn)(void *, const char *);
    void *warn_arg;
    char streams[MAX_STREAMS][STREAM_NAME_MAX + 1];
    size_t nstreams, nchecked;

    /* Set for the length of a publish_dead() call: dead-letter copies. */
    const char *dead_subject;
    char (*dead_reason)[DEAD_REASON_MAX + 1]; /* cleaned, one per record */
    unsigned char *omit_body;                 /* copy too large: sent without body */
} nats_broker_t;

static void count_reconnects(nats_broker_t *nb);
static void set_res(outbox_pub_result_t *r, outbox_pub_status_t st, bool dup, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
set_res(outbox_pub_result_t *r, outbox_pub_status_t st, bool dup, const char *fmt, ...)
{
    va_list ap;

    r->status = st;
    r->duplicate = dup;
    r->error[0] = '\0';
    if (fmt != NULL) {
        va_start(ap, fmt);
        vsnprintf(r->error, sizeof(r->error), fmt, ap);
        va_end(ap);
    }
}

static int
slot_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const ack_slot_t *)a)->msg;
    uintptr_t y = (uintptr_t)((const ack_slot_t *)b)->msg;

    return (x > y) - (x < y);
}

static bool
reserved_header(const char *name)
{
    return strncasecmp(name, "Outbox-", 7) == 0 || strncasecmp(name, "Nats-", 5) == 0;
}

static bool
header_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+.^_`|~-", c) != NULL))
            return false;
    }
    return true;
}

/* Everything that makes a record impossible to publish, decided before
 * sending. The size is what the server compares with max_payload: the
 * encoded headers (cnats' "NATS/1.0" block, one "Name: value\r\n" line per
 * header) plus the body. Returns false with res set PERMANENT. */
static size_t
hdr_len(const char *name, const char *value)
{
    return strlen(name) + 2 + strlen(value) + 2; /* "Name: value\r\n" */
}

static bool
check_record(const nats_broker_t *nb, const outbox_record_t *r, size_t idx, int64_t max_payload,
             outbox_pub_result_t *res)
{
    const outbox_message_t *m = &r->msg;
    const char *key = (m->key != NULL && m->key[0] != '\0') ? m->key : NULL;
    const char *why;
    size_t i, hdr = HDR_PREAMBLE_LEN;
    char omitted[24];

    if (r->id[0] == '\0') {
        set_res(res, OUTBOX_PUB_PERMANENT, false, "record has no id");
        return false;
    }
    if (m->topic == NULL || !outbox_subject_valid(m->topic)) {
        set_res(res, OUTBOX_PUB_PERMANENT, false, "invalid subject '%.160s'",
                m->topic != NULL ? m->topic : "(null)");
        return false;
    }
    if (m->body == NULL && m->body_len > 0) {
        set_res(res, OUTBOX_PUB_PERMANENT, false, "body missing");
        return false;
    }
    for (i = 0; i < m->nheaders; i++) {
        const outbox_header_t *h = &m->headers[i];
        const char *v = (h->value != NULL) ? h->value : "";

        if (h->name == NULL || !header_token(h->name)) {
            set_res(res, OUTBOX_PUB_PERMANENT, false, "invalid header name '%.100s'",
                    h->name != NULL ? h->name : "(null)");
            return false;
        }
        if (reserved_header(h->name)) {
            set_res(res, OUTBOX_PUB_PERMANENT, false,
                    "header '%.100s' is reserved for the relay (Outbox-*, Nats-*)", h->name);
            return false;
        }
        if ((why = outbox_value_problem(v, strlen(v))) != NULL) {
            set_res(res, OUTBOX_PUB_PERMANENT, false, "header '%.100s' value %s", h->name, why);
            return false;
        }
        hdr += strlen(h->name) + 2 + strlen(v) + 2;
    }
    if (key != NULL && (why = outbox_value_problem(key, strlen(key))) != NULL) {
        set_res(res, OUTBOX_PUB_PERMANENT, false, "key %s", why);
        return false;
    }
    hdr += hdr_len(OUTBOX_HDR_ID, r->id);
    if (key != NULL)
        hdr += hdr_len(OUTBOX_HDR_KEY, key);
    if (nb->mode == OUTBOX_NATS_JETSTREAM)
        hdr += hdr_len(JS_MSG_ID_HDR, r->id);
    if (nb->dead_subject != NULL) {
        hdr += hdr_len(OUTBOX_HDR_DEAD_REASON, nb->dead_reason[idx]) +
               hdr_len(OUTBOX_HDR_TOPIC, m->topic);
        nb->omit_body[idx] = 0;
        if (max_payload > 0 && (uint64_t)hdr + m->body_len > (uint64_t)max_payload) {
            /* The death notice matters more than the body. */
            snprintf(omitted, sizeof(omitted), "%zu", m->body_len);
            hdr += hdr_len(OUTBOX_HDR_BODY_OMITTED, omitted);
            nb->omit_body[idx] = 1;
            if ((uint64_t)hdr <= (uint64_t)max_payload)
                return true;
        }
    }
    if (max_payload > 0 && (uint64_t)hdr + m->body_len > (uint64_t)max_payload) {
        set_res(res, OUTBOX_PUB_PERMANENT, false,
                "message of %zu bytes (headers %zu + body %zu) exceeds the server's "
                "max_payload of %lld bytes",
                hdr + m->body_len, hdr, m->body_len, (long long)max_payload);
        return false;
    }
    return true;
}

/* The natsMsg for r: subject, body copy, the producer's headers verbatim
 * (repeated names become repeated values), then Outbox-Id / Outbox-Key. */
static natsStatus
build_msg(const nats_broker_t *nb, natsMsg **out, const outbox_record_t *r, size_t idx)
{
    const outbox_message_t *m = &r->msg;
    bool dead = nb->dead_subject != NULL, omit = dead && nb->omit_body[idx];
    natsMsg *msg = NULL;
    natsStatus s;
    size_t i;

    s = natsMsg_Create(&msg, dead ? nb->dead_subject : m->topic, NULL,
                       m->body_len > 0 && !omit ? (const char *)m->body : NULL,
                       omit ? 0 : (int)m->body_len);
    for (i = 0; s == NATS_OK && i < m->nheaders; i++)
        s = natsMsgHeader_Add(msg, m->headers[i].name,
                              m->headers[i].value != NULL ? m->headers[i].value : "");
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, OUTBOX_HDR_ID, r->id);
    if (s == NATS_OK && m->key != NULL && m->key[0] != '\0')
        s = natsMsgHeader_Set(msg, OUTBOX_HDR_KEY, m->key);
    if (s == NATS_OK && dead)
        s = natsMsgHeader_Set(msg, OUTBOX_HDR_DEAD_REASON, nb->dead_reason[idx]);
    if (s == NATS_OK && dead)
        s = natsMsgHeader_Set(msg, OUTBOX_HDR_TOPIC, m->topic);
    if (s == NATS_OK && omit) {
        char len[24];

        snprintf(len, sizeof(len), "%zu", m->body_len);
        s = natsMsgHeader_Set(msg, OUTBOX_HDR_BODY_OMITTED, len);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return s;
    }
    *out = msg;
    return NATS_OK;
}

static bool
conn_down(natsStatus s)
{
    return s == NATS_CONNECTION_CLOSED || s == NATS_CONNECTION_DISCONNECTED ||
           s == NATS_STALE_CONNECTION || s == NATS_NOT_YET_CONNECTED ||
           s == NATS_INSUFFICIENT_BUFFER || s == NATS_IO_ERROR;
}

static bool
connected(nats_broker_t *nb)
{
    return natsConnection_Status(nb->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* A publish call failed for one record (it was not handed over). */
static bool
classify_send_error(natsStatus s, outbox_pub_result_t *res)
{
    char why[200];

    outbox_nats_status_text(s, why, sizeof(why));
    if (conn_down(s)) {
        set_res(res, OUTBOX_PUB_NOT_SENT, false, "not sent, NATS connection down: %s", why);
        return true;
    }
    if (s == NATS_MAX_PAYLOAD)
        set_res(res, OUTBOX_PUB_PERMANENT, false, "exceeds max_payload: %s", why);
    else if (s == NATS_NO_MEMORY)
        set_res(res, OUTBOX_PUB_TRANSIENT, false, "out of memory building the message");
    else
        set_res(res, OUTBOX_PUB_TRANSIENT, false, "publish failed: %s", why);
    return false;
}

/* Under mu: remember a stream seen in a PubAck, for check_streams(). */
static void
note_stream(nats_broker_t *nb, const char *name)
{
    size_t i;

    if (nb->warn == NULL || nb->dedupe_span_ms <= 0 || name == NULL ||
        nb->nstreams == MAX_STREAMS || strlen(name) > STREAM_NAME_MAX)
        return;
    for (i = 0; i < nb->nstreams; i++)
        if (strcmp(nb->streams[i], name) == 0)
            return;
    snprintf(nb->streams[nb->nstreams++], STREAM_NAME_MAX + 1, "%s", name);
}

/* Once per stream: is its duplicate window at least the relay's longest
 * re-publish span? Runs on the publishing thread, after a batch. */
static void
check_streams(nats_broker_t *nb)
{
    char name[STREAM_NAME_MAX + 1], text[600];

    for (;;) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        int64_t window_ms;

        pthread_mutex_lock(&nb->mu);
        if (nb->nchecked == nb->nstreams) {
            pthread_mutex_unlock(&nb->mu);
            return;
        }
        memcpy(name, nb->streams[nb->nchecked++], sizeof(name));
        pthread_mutex_unlock(&nb->mu);
        if (js_GetStreamInfo(&si, nb->js, name, NULL, &jerr) != NATS_OK || si == NULL)
            continue; /* not checkable now (permissions, outage): say nothing */
        window_ms = si->Config != NULL ? si->Config->Duplicates / 1000000 : 0;
        jsStreamInfo_Destroy(si);
        if (window_ms >= nb->dedupe_span_ms)
            continue;
        snprintf(text, sizeof(text),
                 "stream %s: its duplicate window (%lld ms) is shorter than the relay's longest "
                 "re-publish span (%lld ms: retry_max or max_lock_time + lock_check_interval, plus "
                 "publish_timeout); a record re-published after the window could be stored twice "
                 "(outboxd stream update %s SUBJECTS --duplicate-window %llds)",
                 name, (long long)window_ms, (long long)nb->dedupe_span_ms, name,
                 (long long)(nb->dedupe_span_ms + 999) / 1000);
        nb->warn(nb->warn_arg, text);
    }
}

/* Called by cnats on its thread for every async publish, acked or failed.
 * We own msg. Only records in REC_WAITING of the active batch are touched;
 * a late ack of an abandoned batch just frees its message. */
static void
on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    nats_broker_t *nb = closure;
    ack_slot_t key = {.msg = msg, .idx = 0}, *slot = NULL;

    (void)js;
    pthread_mutex_lock(&nb->mu);
    if (nb->active)
        slot = bsearch(&key, nb->slots, nb->nslots, sizeof(ack_slot_t), slot_cmp);
    if (slot != NULL && nb->state[slot->idx] == REC_WAITING) {
        outbox_pub_result_t *r = &nb->res[slot->idx];
        const char *subj = natsMsg_GetSubject(msg);
        enum rec_state to = REC_DONE;

        if (pa != NULL && (pa->Stream == NULL || pa->Stream[0] == '\0'))
            /* any service answering on the subject would look like a
             * PubAck; only a stream's says which stream stored it */
            set_res(r, OUTBOX_PUB_TRANSIENT, false,
                    "the reply on subject '%.150s' is not a JetStream PubAck (no stream): "
                    "something other than a stream answers there",
                    subj);
        else if (pa != NULL) {
            set_res(r, OUTBOX_PUB_OK, pa->Duplicate, NULL);
            note_stream(nb, pa->Stream);
        } else if (pae != NULL && pae->Err == NATS_NO_RESPONDERS) {
            /* no stream there, or JetStream (re)starting: decided after
             * the wait, by asking JetStream */
            set_res(r, OUTBOX_PUB_TRANSIENT, false,
                    "no JetStream stream captures subject '%.150s' (no responders)", subj);
            to = REC_NO_RESPONDERS;
        } else if (pae != NULL && pae->ErrCode == JSStreamMessageExceedsMaximumErr)
            set_res(r, OUTBOX_PUB_PERMANENT, false, "stream rejected the message: %.150s (err %d)",
                    pae->ErrText != NULL ? pae->ErrText : "", (int)pae->ErrCode);
        else if (pae != NULL && pae->ErrCode != 0)
            /* the stream's verdict on this message (full, wrong sequence...) */
            set_res(r, OUTBOX_PUB_TRANSIENT, false, "JetStream error %d: %.150s", (int)pae->ErrCode,
                    pae->ErrText != NULL ? pae->ErrText : "");
        else
            /* a time-out or a connection failure, no verdict on the message */
            set_res(r, OUTBOX_PUB_DEFERRED, false, "no PubAck: %.150s",
                    pae == NULL            ? "none given"
                    : pae->ErrText != NULL ? pae->ErrText
                                           : natsStatus_GetText(pae->Err));
        nb->state[slot->idx] = (unsigned char)to;
        if (--nb->waiting == 0)
            pthread_cond_signal(&nb->cond);
    }
    pthread_mutex_unlock(&nb->mu);
    natsMsg_Destroy(msg);
}

static int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
grow(nats_broker_t *nb, size_t n)
{
    size_t cap = nb->cap ? nb->cap : 64;
    void *p;

    if (n <= nb->cap)
        return OUTBOX_OK;
    while (cap < n)
        cap *= 2;
    if ((p = realloc(nb->msgs, cap * sizeof(*nb->msgs))) == NULL)
        return OUTBOX_ERR_NOMEM;
    nb->msgs = p;
    if ((p = realloc(nb->state, cap * sizeof(*nb->state))) == NULL)
        return OUTBOX_ERR_NOMEM;
    nb->state = p;
    if ((p = realloc(nb->slots, cap * sizeof(*nb->slots))) == NULL)
        return OUTBOX_ERR_NOMEM;
    nb->slots = p;
    nb->cap = cap;
    return OUTBOX_OK;
}

/* Wait until every WAITING record has its PubAck, the deadline passes or
 * the connection drops. Returns true when the connection dropped. */
static bool
wait_acks(nats_broker_t *nb)
{
    int64_t deadline = mono_ms() + nb->timeout_ms;
    bool down = false;

    pthread_mutex_lock(&nb->mu);
    while (nb->waiting > 0) {
        int64_t now = mono_ms(), until = now + STATUS_POLL_MS;
        struct timespec ts;

        if (now >= deadline)
            break;
        if (until > deadline)
            until = deadline;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (until - now) / 1000;
        ts.tv_nsec += ((until - now) % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&nb->cond, &nb->mu, &ts);
        if (nb->waiting == 0)
            break;
        /* cnats locks of its own: never call it while holding mu. */
        pthread_mutex_unlock(&nb->mu);
        down = !connected(nb);
        pthread_mutex_lock(&nb->mu);
        if (down)
            break;
    }
    pthread_mutex_unlock(&nb->mu);
    return down;
}

static void
summarize(nats_broker_t *nb, size_t n, const outbox_pub_result_t *res, bool down)
{
    size_t i, failed = 0, first = n;

    for (i = 0; i < n; i++) {
        if (res[i].status != OUTBOX_PUB_OK) {
            failed++;
            if (first == n)
                first = i;
        }
    }
    if (down)
        snprintf(nb->base.err, sizeof(nb->base.err),
                 "NATS connection to '%s' is down: %zu of %zu records not published", nb->url,
                 failed, n);
    else if (failed > 0)
        snprintf(nb->base.err, sizeof(nb->base.err), "%zu of %zu records failed; first: %s", failed,
                 n, res[first].error);
}

/* Does a stream capture subject? 1 yes (its name in name), 0 no, -1
 * JetStream did not answer or is off (why says how). */
static int
stream_captures(nats_broker_t *nb, const char *subject, char *name, size_t len, char *why,
                size_t whylen)
{
    jsStreamNamesList *list = NULL;
    jsErrCode ec = 0;
    jsOptions o;
    natsStatus s;
    int rc;

    jsOptions_Init(&o);
    o.Wait = nb->timeout_ms;
    o.Stream.Info.SubjectsFilter = subject;
    s = js_StreamNames(&list, nb->js, &o, &ec);
    if (s == NATS_OK && list != NULL && list->Count > 0) {
        snprintf(name, len, "%s", list->List[0]);
        rc = 1;
    } else if (s == NATS_OK || s == NATS_NOT_FOUND) {
        rc = 0; /* asked and answered: none */
    } else {
        /* no answer, or JetStream off (for the account): not the records' fault */
        outbox_nats_status_text(s, why, whylen);
        if (ec != 0) {
            size_t l = strlen(why);

            snprintf(why + l, whylen - l, " (JetStream error %d)", (int)ec);
        }
        rc = -1;
    }
    jsStreamNamesList_Destroy(list);
    return rc;
}

/*
 * Records answered "no responders": nothing listens on the subject. If
 * JetStream says no stream captures it, that is the record's problem (left
 * charged, as on_ack set it); if one does, that stream is starting or has
 * no leader (deferred, uncharged); if JetStream does not answer at all, it
 * is an outage (not sent). Records that got no PubAck at all are asked
 * about too: with no stream, something else took them (a plain
 * subscriber), the record's problem, charged; else as set after the wait.
 * Returns true for the outage. Asks about PROBE_MAX subjects at most;
 * records of further subjects are deferred and asked about next time.
 */
static bool
probe_streams(nats_broker_t *nb, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res,
              bool down)
{
    const char *asked[PROBE_MAX];
    int verdict[PROBE_MAX];
    char names[PROBE_MAX][STREAM_NAME_MAX + 1], why[200] = "";
    size_t i, j, nasked = 0;

    for (i = 0; i < n; i++) {
        const char *subj = nb->dead_subject != NULL ? nb->dead_subject : recs[i].msg.topic;
        bool no_ack = nb->state[i] == REC_NO_ACK;
        int v = 1;

        if (nb->state[i] != REC_NO_RESPONDERS && !no_ack)
            continue;
        nb->state[i] = REC_DONE;
        for (j = 0; j < nasked && strcmp(asked[j], subj) != 0; j++)
            ;
        if (down) {
            v = -1;
        } else if (j < nasked) {
            v = verdict[j];
        } else if (nasked < PROBE_MAX) {
            names[j][0] = '\0';
            v = stream_captures(nb, subj, names[j], sizeof(names[j]), why, sizeof(why));
            asked[j] = subj;
            verdict[j] = v;
            nasked++;
        } else {
            j = SIZE_MAX; /* PROBE_MAX subjects asked already */
        }
        if (no_ack && v == 0) {
            /* no stream, and something took the message without a
             * PubAck (a plain subscriber): the record's problem, charged */
            set_res(&res[i], OUTBOX_PUB_TRANSIENT, false,
                    "no JetStream stream captures subject '%.150s' (no PubAck came; a plain "
                    "subscriber may have taken it)",
                    subj);
        } else if (no_ack) {
            /* a stream is there or JetStream is silent: as set after the wait */
            if (v < 0)
                down = true;
        } else if (v < 0) {
            down = true;
            set_res(&res[i], OUTBOX_PUB_NOT_SENT, false,
                    "no responders on subject '%.100s', and JetStream does not answer: %.80s", subj,
                    why);
        } else if (v > 0 && j == SIZE_MAX) {
            set_res(&res[i], OUTBOX_PUB_DEFERRED, false,
                    "no responders on subject '%.150s' (not yet asked which stream captures it)",
                    subj);
        } else if (v > 0) {
            set_res(&res[i], OUTBOX_PUB_DEFERRED, false,
                    "stream '%.60s' captures subject '%.100s' but did not answer: it is "
                    "starting or has no leader",
                    names[j], subj);
        }
    }
    return down;
}

static int
publish_js(nats_broker_t *nb, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res)
{
    int64_t maxp = natsConnection_GetMaxPayload(nb->nc);
    size_t i, nslots = 0, left = 0, sent = 0;
    jsPubOptions po;
    bool down = false, silent = false;

    for (i = 0; i < n; i++) {
        nb->msgs[i] = NULL;
        nb->state[i] = REC_DONE;
        if (!check_record(nb, &recs[i], i, maxp, &res[i]))
            continue;
        if (build_msg(nb, &nb->msgs[i], &recs[i], i) != NATS_OK) {
            set_res(&res[i], OUTBOX_PUB_TRANSIENT, false, "out of memory building the message");
            continue;
        }
        nb->state[i] = REC_IDLE;
        nb->slots[nslots].msg = nb->msgs[i];
        nb->slots[nslots].idx = i;
        nslots++;
    }
    /* Sorted before the first send, never changed while acks can arrive. */
    qsort(nb->slots, nslots, sizeof(ack_slot_t), slot_cmp);
    pthread_mutex_lock(&nb->mu);
    nb->res = res;
    nb->nslots = nslots;
    nb->waiting = 0;
    nb->active = true;
    pthread_mutex_unlock(&nb->mu);

    jsPubOptions_Init(&po);
    for (i = 0; i < n; i++) {
        natsStatus s;

        if (nb->state[i] != REC_IDLE)
            continue;
        if (down || !connected(nb)) {
            down = true;
            set_res(&res[i], OUTBOX_PUB_NOT_SENT, false, "not sent, NATS connection down");
            nb->state[i] = REC_DONE;
            continue;
        }
        pthread_mutex_lock(&nb->mu);
        nb->state[i] = REC_WAITING;
        nb->waiting++;
        sent++;
        pthread_mutex_unlock(&nb->mu);

        po.MsgId = recs[i].id;
        nb->published_async = true;
        s = js_PublishMsgAsync(nb->js, &nb->msgs[i], &po);
        if (s != NATS_OK) {
            /* Not handed over: cnats did not and will not call on_ack. */
            pthread_mutex_lock(&nb->mu);
            nb->state[i] = REC_DONE;
            nb->waiting--;
            sent--;
            pthread_mutex_unlock(&nb->mu);
            if (classify_send_error(s, &res[i]))
                down = true;
        }
    }

    if (wait_acks(nb))
        down = true;

    pthread_mutex_lock(&nb->mu);
    /* Not one reply to the whole batch: the server is not answering (frozen,
     * overloaded, a dead route), not these records failing: charge none,
     * and report the broker as unreachable so the relay backs off. A copy
     * it stored after all is dropped by the stream when re-published. */
    if (!down && nb->waiting > 0 && nb->waiting == sent)
        silent = true;
    for (i = 0; i < n; i++) {
        if (nb->state[i] != REC_WAITING)
            continue;
        if (down)
            set_res(&res[i], OUTBOX_PUB_NOT_SENT, false,
                    "NATS connection lost before the PubAck arrived");
        else if (silent)
            set_res(&res[i], OUTBOX_PUB_NOT_SENT, false,
                    "no PubAck within %lld ms for any record of the batch: NATS is not answering",
                    (long long)nb->timeout_ms);
        else
            /* others were answered: the server is there, this reply got
             * lost (a reconnect mid-batch, a stream stalling); no verdict
             * on the message, so no attempt charged */
            set_res(&res[i], OUTBOX_PUB_DEFERRED, false,
                    "no PubAck within %lld ms (other records of the batch were answered)",
                    (long long)nb->timeout_ms);
        /* asked below whether a stream captures the subject at all */
        nb->state[i] = down ? REC_DONE : REC_NO_ACK;
        left++;
    }
    nb->active = false;
    nb->waiting = 0;
    nb->res = NULL;
    pthread_mutex_unlock(&nb->mu);

    if (left > 0) {
        /* Take back what cnats still holds so nothing leaks or fires later. */
        natsMsgList pending = {NULL, 0};

        if (js_PublishAsyncGetPendingList(&pending, nb->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
    }
    for (i = 0; i < n; i++) {
        natsMsg_Destroy(nb->msgs[i]); /* NULL once cnats took it */
        nb->msgs[i] = NULL;
    }
    if (probe_streams(nb, recs, n, res, down))
        down = true;
    /* A silent batch is an outage unless every record of it turned out to
     * have no stream (its own problem, charged above). */
    for (i = 0; silent && !down && i < n; i++)
        down = res[i].status == OUTBOX_PUB_NOT_SENT;
    summarize(nb, n, res, down);
    count_reconnects(nb);
    if (!down)
        check_streams(nb);
    return down ? OUTBOX_ERR_UNREACHABLE : OUTBOX_OK;
}

static void
count_reconnects(nats_broker_t *nb)
{
    natsStatistics *st = NULL;
    uint64_t in_msgs, in_bytes, out_msgs, out_bytes, reconnects;

    if (natsStatistics_Create(&st) != NATS_OK)
        return;
    if (natsConnection_GetStats(nb->nc, st) == NATS_OK &&
        natsStatistics_GetCounts(st, &in_msgs, &in_bytes, &out_msgs, &out_bytes, &reconnects) ==
            NATS_OK)
        nb->base.reconnects = reconnects;
    natsStatistics_Destroy(st);
}

static int
publish_core(nats_broker_t *nb, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res)
{
    int64_t maxp = natsConnection_GetMaxPayload(nb->nc);
    size_t i, sent = 0;
    bool down = false;

    for (i = 0; i < n; i++) {
        natsMsg *msg = NULL;
        natsStatus s;

        nb->state[i] = REC_DONE;
        if (!check_record(nb, &recs[i], i, maxp, &res[i]))
            continue;
        if (down || !connected(nb)) {
            down = true;
            set_res(&res[i], OUTBOX_PUB_NOT_SENT, false, "not sent, NATS connection down");
            continue;
        }
        s = build_msg(nb, &msg, &recs[i], i);
        if (s == NATS_OK)
            s = natsConnection_PublishMsg(nb->nc, msg);
        natsMsg_Destroy(msg);
        if (s != NATS_OK) {
            if (classify_send_error(s, &res[i]))
                down = true;
            continue;
        }
        nb->state[i] = REC_WAITING;
        sent++;
    }

    if (sent > 0) {
        natsStatus s = natsConnection_FlushTimeout(nb->nc, nb->timeout_ms);
        char why[200];

        if (s != NATS_OK && !connected(nb))
            down = true;
        outbox_nats_status_text(s, why, sizeof(why));
        for (i = 0; i < n; i++) {
            if (nb->state[i] != REC_WAITING)
                continue;
            if (s == NATS_OK)
                set_res(&res[i], OUTBOX_PUB_OK, false, NULL);
            else if (down)
                set_res(&res[i], OUTBOX_PUB_NOT_SENT, false,
                        "NATS connection lost before the flush completed: %s", why);
            else
                set_res(&res[i], OUTBOX_PUB_TRANSIENT, false, "flush failed: %s", why);
            nb->state[i] = REC_DONE;
        }
    }
    summarize(nb, n, res, down);
    count_reconnects(nb);
    return down ? OUTBOX_ERR_UNREACHABLE : OUTBOX_OK;
}

static int
nats_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res)
{
    nats_broker_t *nb = (nats_broker_t *)b;
    size_t i;

    for (i = 0; i < n; i++)
        set_res(&res[i], OUTBOX_PUB_NOT_SENT, false, NULL);
    if (n == 0)
        return OUTBOX_OK;
    if (grow(nb, n) != OUTBOX_OK) {
        for (i = 0; i < n; i++)
            set_res(&res[i], OUTBOX_PUB_TRANSIENT, false, "out of memory");
        snprintf(b->err, sizeof(b->err), "out of memory for a batch of %zu records", n);
        return OUTBOX_ERR_NOMEM;
    }
    if (nb->mode == OUTBOX_NATS_JETSTREAM)
        return publish_js(nb, recs, n, res);
    return publish_core(nb, recs, n, res);
}

/* A reason fit for a header value: control characters become spaces,
 * surrounding white space goes, at most DEAD_REASON_MAX bytes (cut on a
 * UTF-8 boundary). */
static void
clean_reason(char *out, const char *in)
{
    size_t n = 0, end;

    if (in == NULL || in[0] == '\0')
        in = "dead";
    while (*in == ' ' || *in == '\t')
        in++;
    for (; *in != '\0' && n < DEAD_REASON_MAX; in++)
        out[n++] = ((unsigned char)*in < 0x20 || *in == 0x7f) ? ' ' : *in;
    if (*in != '\0' && ((unsigned char)*in & 0xc0) == 0x80) {
        /* cut inside a character: drop its bytes copied so far */
        while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80)
            n--;
        if (n > 0)
            n--;
    }
    end = n;
    while (end > 0 && (out[end - 1] == ' ' || out[end - 1] == '\t'))
        end--;
    out[end] = '\0';
    if (end == 0)
        snprintf(out, DEAD_REASON_MAX + 1, "dead");
}

static int
nats_publish_dead(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                  const char *const *reasons, size_t n, outbox_pub_result_t *res)
{
    nats_broker_t *nb = (nats_broker_t *)b;
    int rc;
    size_t i;

    if (subject == NULL || !outbox_subject_valid(subject)) {
        for (i = 0; i < n; i++)
            set_res(&res[i], OUTBOX_PUB_PERMANENT, false, "invalid dead-letter subject '%.100s'",
                    subject != NULL ? subject : "(null)");
        snprintf(b->err, sizeof(b->err), "invalid dead-letter subject");
        return OUTBOX_OK;
    }
    nb->dead_reason = calloc(n > 0 ? n : 1, sizeof(*nb->dead_reason));
    nb->omit_body = calloc(n > 0 ? n : 1, 1);
    if (nb->dead_reason == NULL || nb->omit_body == NULL) {
        for (i = 0; i < n; i++)
            set_res(&res[i], OUTBOX_PUB_TRANSIENT, false, "out of memory");
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    for (i = 0; i < n; i++)
        clean_reason(nb->dead_reason[i], reasons != NULL ? reasons[i] : NULL);
    nb->dead_subject = subject;
    rc = nats_publish(b, recs, n, res);
done:
    nb->dead_subject = NULL;
    free(nb->dead_reason);
    free(nb->omit_body);
    nb->dead_reason = NULL;
    nb->omit_body = NULL;
    return rc;
}

static void
nats_destroy(outbox_broker_t *b)
{
    nats_broker_t *nb = (nats_broker_t *)b;

    if (nb->js != NULL && nb->published_async) {
        natsMsgList pending = {NULL, 0};
        jsPubOptions po;

        if (js_PublishAsyncGetPendingList(&pending, nb->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
        /* cnats counts an ack as outstanding until its callback returned:
         * wait for callbacks still running, they use nb. */
        jsPubOptions_Init(&po);
        po.MaxWait = DRAIN_WAIT_MS;
        js_PublishAsyncComplete(nb->js, &po);
    }
    jsCtx_Destroy(nb->js); /* NULL ok */
    natsConnection_Destroy(nb->nc);
    pthread_cond_destroy(&nb->cond);
    pthread_mutex_destroy(&nb->mu);
    free(nb->msgs);
    free(nb->state);
    free(nb->slots);
    free(nb);
}

static const outbox_broker_ops_t nats_ops = {
    .publish = nats_publish,
    .publish_dead = nats_publish_dead,
    .destroy = nats_destroy,
};

int
outbox_nats_broker_create(outbox_broker_t **out, const outbox_nats_options_t *opt, char *err,
                          size_t errlen)
{
    nats_broker_t *nb = NULL;
    pthread_condattr_t ca;
    bool mu_ok = false, cond_ok = false;
    int rc = OUTBOX_OK;

    if ((nb = calloc(1, sizeof(*nb))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    nb->base.ops = &nats_ops;
    nb->mode = opt->mode;
    nb->dedupe_span_ms = opt->dedupe_span_ms;
    nb->warn = opt->warn;
    nb->warn_arg = opt->warn_arg;
    nb->timeout_ms =
        opt->publish_timeout_ms > 0 ? opt->publish_timeout_ms : DEFAULT_PUBLISH_TIMEOUT_MS;
    outbox_nats_redact_url(opt->url, nb->url, sizeof(nb->url));

    mu_ok = pthread_mutex_init(&nb->mu, NULL) == 0;
    if (mu_ok && pthread_condattr_init(&ca) == 0) {
        cond_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                  pthread_cond_init(&nb->cond, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cond_ok) {
        snprintf(err, errlen, "cannot create a mutex/condition for the NATS broker");
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }

    rc = outbox_nats_connect(&nb->nc, opt, true, err, errlen);
    if (rc != OUTBOX_OK)
        goto done;

    if (nb->mode == OUTBOX_NATS_JETSTREAM) {
        jsOptions jo;
        natsStatus s;
        char why[200];

        jsOptions_Init(&jo);
        jo.Wait = nb->timeout_ms;
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = nb;
        s = natsConnection_JetStream(&nb->js, nb->nc, &jo);
        if (s != NATS_OK) {
            outbox_nats_status_text(s, why, sizeof(why));
            snprintf(err, errlen, "JetStream context for '%s': %s", nb->url, why);
            rc = s == NATS_NO_MEMORY ? OUTBOX_ERR_NOMEM : OUTBOX_ERR_CONFIG;
            goto done;
        }
    }
    *out = &nb->base;
    nb = NULL;

done:
    if (nb != NULL) {
        natsConnection_Destroy(nb->nc);
        if (cond_ok)
            pthread_cond_destroy(&nb->cond);
        if (mu_ok)
            pthread_mutex_destroy(&nb->mu);
        free(nb);
    }
    return rc;
}
