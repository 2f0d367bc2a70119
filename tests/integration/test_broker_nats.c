/*
 * The NATS Broker and stream administration against a real nats-server with
 * JetStream (the ctest "servers" fixture; the outage test runs a private
 * one). Each test uses its own stream and subjects, reads what arrived back
 * with cnats and checks every record's result.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#include <nats/nats.h>

#include "outbox/broker.h"

static th_env_t env;
static natsConnection *admin_nc;
static jsCtx *admin_js;

/* ---- helpers --------------------------------------------------------------- */

static void
make_id(char id[OUTBOX_ID_LEN + 1])
{
    static unsigned n;

    n++;
    snprintf(id, OUTBOX_ID_LEN + 1, "%08x-%04x-4%03x-8%03x-%012x", (unsigned)getpid(), n & 0xffff,
             n & 0xfff, (n >> 12) & 0xfff, n * 2654435761u);
}

static void
rec_init(outbox_record_t *r, const char *topic, const char *key, const outbox_header_t *h,
         size_t nh, const void *body, size_t len)
{
    memset(r, 0, sizeof(*r));
    make_id(r->id);
    r->msg.topic = topic;
    r->msg.key = key;
    r->msg.headers = h;
    r->msg.nheaders = nh;
    r->msg.body = body;
    r->msg.body_len = len;
}

static outbox_broker_t *
broker(outbox_nats_mode_t mode, const char *url, int64_t timeout_ms)
{
    outbox_nats_options_t o = {.url = url,
                               .mode = mode,
                               .publish_timeout_ms = timeout_ms,
                               .connect_timeout_ms = 2000,
                               .name = "test_broker_nats"};
    outbox_broker_t *b = NULL;
    char err[512] = "";
    int rc = outbox_nats_broker_create(&b, &o, err, sizeof(err));

    if (rc != OUTBOX_OK)
        fail_msg("broker create on %s: %s (%s)", url, outbox_strerror(rc), err);
    return b;
}

/* no_ack: the stream stores messages without answering (a stream that
 * captures the subject yet gives no PubAck, as when a reply is lost) */
static void
stream_make(const char *name, const char *subject, int32_t max_msg_size, bool no_ack)
{
    jsStreamConfig cfg;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subs[1] = {subject};
    natsStatus s;

    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = subs;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_MemoryStorage;
    if (max_msg_size > 0)
        cfg.MaxMsgSize = max_msg_size;
    cfg.NoAck = no_ack;
    s = js_AddStream(&si, admin_js, &cfg, NULL, &jerr);
    if (s != NATS_OK)
        fail_msg("js_AddStream(%s): %s (%d)", name, natsStatus_GetText(s), (int)jerr);
    jsStreamInfo_Destroy(si);
}

static void
stream_create(const char *name, const char *subject, int32_t max_msg_size)
{
    stream_make(name, subject, max_msg_size, false);
}

static uint64_t
stream_msgs(const char *name)
{
    jsStreamInfo *si = NULL;
    uint64_t n;
    natsStatus s = js_GetStreamInfo(&si, admin_js, name, NULL, NULL);

    if (s != NATS_OK)
        fail_msg("js_GetStreamInfo(%s): %s", name, natsStatus_GetText(s));
    n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

static void
stream_delete(const char *name)
{
    js_DeleteStream(admin_js, name, NULL, NULL);
}

/* Header value of m, or NULL when absent. */
static const char *
hdr(natsMsg *m, const char *name)
{
    const char *v = NULL;

    if (natsMsgHeader_Get(m, name, &v) != NATS_OK)
        return NULL;
    return v;
}

/* m is exactly what r asked for: subject, body bytes, every header, ids. */
static void
assert_msg_matches(natsMsg *m, const outbox_record_t *r, bool jetstream)
{
    const outbox_message_t *msg = &r->msg;
    size_t i;

    assert_string_equal(natsMsg_GetSubject(m), msg->topic);
    assert_int_equal(natsMsg_GetDataLength(m), msg->body_len);
    if (msg->body_len > 0)
        assert_memory_equal(natsMsg_GetData(m), msg->body, msg->body_len);
    for (i = 0; i < msg->nheaders; i++) {
        const char **vals = NULL;
        int count = 0, j;
        bool found = false;

        if (natsMsgHeader_Values(m, msg->headers[i].name, &vals, &count) != NATS_OK)
            fail_msg("header %s missing", msg->headers[i].name);
        for (j = 0; j < count; j++)
            found |= strcmp(vals[j], msg->headers[i].value) == 0;
        free((void *)vals);
        if (!found)
            fail_msg("header %s: value '%s' missing", msg->headers[i].name, msg->headers[i].value);
    }
    assert_non_null(hdr(m, "Outbox-Id"));
    assert_string_equal(hdr(m, "Outbox-Id"), r->id);
    if (msg->key != NULL && msg->key[0] != '\0') {
        assert_non_null(hdr(m, "Outbox-Key"));
        assert_string_equal(hdr(m, "Outbox-Key"), msg->key);
    } else {
        assert_null(hdr(m, "Outbox-Key"));
    }
    if (jetstream) {
        assert_non_null(hdr(m, "Nats-Msg-Id"));
        assert_string_equal(hdr(m, "Nats-Msg-Id"), r->id);
    }
}

static void
assert_all_ok(const outbox_pub_result_t *res, size_t n, bool dup)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (res[i].status != OUTBOX_PUB_OK || res[i].duplicate != dup)
            fail_msg("record %zu: status %d duplicate %d (want OK, %d): %s", i, (int)res[i].status,
                     (int)res[i].duplicate, (int)dup, res[i].error);
    }
}

static int
free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int
group_setup(void **state)
{
    natsStatus s;

    (void)state;
    th_env_load(&env);
    s = natsConnection_ConnectTo(&admin_nc, env.nats_url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&admin_js, admin_nc, NULL);
    if (s != NATS_OK) {
        fprintf(stderr, "cannot reach nats at %s: %s\n", env.nats_url, natsStatus_GetText(s));
        return -1;
    }
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    jsCtx_Destroy(admin_js);
    natsConnection_Destroy(admin_nc);
    nats_Close();
    return 0;
}

/* ---- JetStream ----------------------------------------------------------- */

static const unsigned char binary_body[] = {0x00, 0x01, 0xff, 0x00, 'x', 0x00};
static const outbox_header_t hdrs_utf8[] = {
    {"X-Trace", "abc-123"},
    {"X-Utf8", "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93"},
    {"content-type", "application/json"},
};
static const outbox_header_t hdrs_multi[] = {{"X-Multi", "one"}, {"X-Multi", "two"}};

static void
test_js_batch_arrives_byte_identical(void **state)
{
    char stream[64], subj[64], t1[80], t2[80], t3[80];
    outbox_record_t recs[5];
    outbox_pub_result_t res[5];
    static char big[20000];
    outbox_broker_t *b;
    uint64_t seq;
    size_t i;

    (void)state;
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(t1, sizeof(t1), "%s.orders.created", stream);
    snprintf(t2, sizeof(t2), "%s.bin", stream);
    snprintf(t3, sizeof(t3), "%s.empty", stream);
    stream_create(stream, subj, 0);
    for (i = 0; i < sizeof(big); i++)
        big[i] = (char)(i * 7 + 3);

    rec_init(&recs[0], t1, "customer-42", hdrs_utf8, 3, "{\"id\":1}", 8);
    rec_init(&recs[1], t2, NULL, NULL, 0, binary_body, sizeof(binary_body));
    rec_init(&recs[2], t3, "k-empty", NULL, 0, "", 0);
    rec_init(&recs[3], t1, "", hdrs_multi, 2, "multi", 5);
    rec_init(&recs[4], t2, "big", hdrs_utf8, 1, big, sizeof(big));

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    assert_int_equal(outbox_broker_publish(b, recs, 5, res), OUTBOX_OK);
    assert_all_ok(res, 5, false);
    assert_int_equal(stream_msgs(stream), 5);

    /* One publisher, one connection: the stream keeps the batch's order. */
    for (seq = 1; seq <= 5; seq++) {
        natsMsg *m = NULL;
        natsStatus s = js_GetMsg(&m, admin_js, stream, seq, NULL, NULL);

        if (s != NATS_OK)
            fail_msg("js_GetMsg(%s, %llu): %s", stream, (unsigned long long)seq,
                     natsStatus_GetText(s));
        assert_msg_matches(m, &recs[seq - 1], true);
        natsMsg_Destroy(m);
    }
    outbox_broker_destroy(b);
    stream_delete(stream);
}

static void
test_js_republish_is_duplicate(void **state)
{
    char stream[64], subj[64], topic[80];
    outbox_record_t recs[3];
    outbox_pub_result_t res[3];
    outbox_broker_t *b;
    size_t i;

    (void)state;
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(topic, sizeof(topic), "%s.x", stream);
    stream_create(stream, subj, 0);
    for (i = 0; i < 3; i++)
        rec_init(&recs[i], topic, "k", NULL, 0, "payload", 7);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_OK);
    assert_all_ok(res, 3, false);
    assert_int_equal(stream_msgs(stream), 3);

    /* A relay that crashed after publishing but before marking delivered
     * sends the same records again: the stream must drop them. */
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_OK);
    assert_all_ok(res, 3, true);
    assert_int_equal(stream_msgs(stream), 3);
    outbox_broker_destroy(b);
    stream_delete(stream);
}

/* Exactly what the server counts against max_payload for a record without
 * user headers or key: cnats' header block plus the body. */
static size_t
js_header_bytes(void)
{
    return strlen("NATS/1.0\r\n") + strlen("\r\n") + strlen("Outbox-Id: \r\n") + OUTBOX_ID_LEN +
           strlen("Nats-Msg-Id: \r\n") + OUTBOX_ID_LEN;
}

static void
test_js_oversize_is_permanent_and_connection_survives(void **state)
{
    char stream[64], subj[64], topic[80];
    outbox_record_t recs[4];
    outbox_pub_result_t res[4];
    outbox_broker_t *b;
    int64_t maxp = natsConnection_GetMaxPayload(admin_nc);
    size_t fit = (size_t)maxp - js_header_bytes();
    char *body = calloc(1, (size_t)maxp + 1);

    (void)state;
    assert_non_null(body);
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(topic, sizeof(topic), "%s.big", stream);
    stream_create(stream, subj, 0);

    rec_init(&recs[0], topic, NULL, NULL, 0, "a", 1);
    rec_init(&recs[1], topic, NULL, NULL, 0, body, fit + 1); /* one byte too many */
    rec_init(&recs[2], topic, NULL, NULL, 0, body, fit);     /* exactly max_payload */
    rec_init(&recs[3], topic, NULL, NULL, 0, "d", 1);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 5000);
    assert_int_equal(outbox_broker_publish(b, recs, 4, res), OUTBOX_OK);
    assert_int_equal(res[0].status, OUTBOX_PUB_OK);
    assert_int_equal(res[1].status, OUTBOX_PUB_PERMANENT);
    /* Our own check, not cnats' or the server's: it must count the header
     * block exactly (one byte over is refused, an exact fit is sent). */
    assert_non_null(strstr(res[1].error, "exceeds the server's max_payload of"));
    assert_int_equal(res[2].status, OUTBOX_PUB_OK);
    assert_int_equal(res[3].status, OUTBOX_PUB_OK);
    assert_int_equal(stream_msgs(stream), 3);

    /* The server never saw the oversize message, so the connection is
     * still the same, connected one: the next batch goes through at once. */
    rec_init(&recs[0], topic, NULL, NULL, 0, "again", 5);
    assert_int_equal(outbox_broker_publish(b, recs, 1, res), OUTBOX_OK);
    assert_all_ok(res, 1, false);
    assert_int_equal(stream_msgs(stream), 4);
    outbox_broker_destroy(b);
    stream_delete(stream);
    free(body);
}

static void
test_js_stream_max_msg_size_is_permanent(void **state)
{
    char stream[64], subj[64], topic[80];
    static char body[2048];
    outbox_record_t recs[3];
    outbox_pub_result_t res[3];
    outbox_broker_t *b;

    (void)state;
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(topic, sizeof(topic), "%s.m", stream);
    stream_create(stream, subj, 1024);
    memset(body, 'z', sizeof(body));

    rec_init(&recs[0], topic, NULL, NULL, 0, "small", 5);
    rec_init(&recs[1], topic, NULL, NULL, 0, body, sizeof(body));
    rec_init(&recs[2], topic, "k", NULL, 0, "small too", 9);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_OK);
    assert_int_equal(res[0].status, OUTBOX_PUB_OK);
    assert_int_equal(res[1].status, OUTBOX_PUB_PERMANENT);
    assert_non_null(strstr(res[1].error, "10054"));
    assert_int_equal(res[2].status, OUTBOX_PUB_OK);
    assert_int_equal(stream_msgs(stream), 2);

    rec_init(&recs[0], topic, NULL, NULL, 0, "after", 5);
    assert_int_equal(outbox_broker_publish(b, recs, 1, res), OUTBOX_OK);
    assert_all_ok(res, 1, false);
    outbox_broker_destroy(b);
    stream_delete(stream);
}

/* A full stream (discard new) may accept again later: TRANSIENT. */
static void
test_js_stream_full_is_transient(void **state)
{
    char stream[64], subj[64], topic[80];
    const char *subs[1] = {subj};
    jsStreamConfig cfg;
    jsStreamInfo *si = NULL;
    outbox_record_t recs[3];
    outbox_pub_result_t res[3];
    outbox_broker_t *b;

    (void)state;
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(topic, sizeof(topic), "%s.f", stream);
    jsStreamConfig_Init(&cfg);
    cfg.Name = stream;
    cfg.Subjects = subs;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_MemoryStorage;
    cfg.MaxMsgs = 2;
    cfg.Discard = js_DiscardNew;
    assert_int_equal(js_AddStream(&si, admin_js, &cfg, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(si);

    rec_init(&recs[0], topic, NULL, NULL, 0, "1", 1);
    rec_init(&recs[1], topic, NULL, NULL, 0, "2", 1);
    rec_init(&recs[2], topic, NULL, NULL, 0, "3", 1);
    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_OK);
    assert_int_equal(res[0].status, OUTBOX_PUB_OK);
    assert_int_equal(res[1].status, OUTBOX_PUB_OK);
    assert_int_equal(res[2].status, OUTBOX_PUB_TRANSIENT);
    assert_non_null(strstr(res[2].error, "JetStream error"));
    outbox_broker_destroy(b);
    stream_delete(stream);
}

static void
test_reserved_header_and_bad_subject_are_permanent(void **state)
{
    static const outbox_header_t h_nats[] = {{"nats-expected-stream", "x"}};
    static const outbox_header_t h_id[] = {{"Outbox-Id", "forged"}};
    static const outbox_header_t h_key[] = {{"OUTBOX-KEY", "forged"}};
    static const outbox_header_t h_crlf[] = {{"X-Evil", "a\r\nNats-Msg-Id: x"}};
    char stream[64], subj[64], topic[80], wild[80], empty_tok[80];
    outbox_record_t recs[8];
    outbox_pub_result_t res[8];
    outbox_broker_t *b;
    size_t i;

    (void)state;
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(topic, sizeof(topic), "%s.ok", stream);
    snprintf(wild, sizeof(wild), "%s.*", stream);
    snprintf(empty_tok, sizeof(empty_tok), "%s..x", stream);
    stream_create(stream, subj, 0);

    rec_init(&recs[0], topic, NULL, NULL, 0, "1", 1);
    rec_init(&recs[1], topic, NULL, h_nats, 1, "2", 1);
    rec_init(&recs[2], topic, NULL, h_id, 1, "3", 1);
    rec_init(&recs[3], topic, NULL, h_key, 1, "4", 1);
    rec_init(&recs[4], topic, NULL, h_crlf, 1, "5", 1);
    rec_init(&recs[5], wild, NULL, NULL, 0, "6", 1);
    rec_init(&recs[6], empty_tok, NULL, NULL, 0, "7", 1);
    rec_init(&recs[7], topic, NULL, NULL, 0, "8", 1);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    assert_int_equal(outbox_broker_publish(b, recs, 8, res), OUTBOX_OK);
    assert_int_equal(res[0].status, OUTBOX_PUB_OK);
    for (i = 1; i <= 6; i++) {
        if (res[i].status != OUTBOX_PUB_PERMANENT || res[i].error[0] == '\0')
            fail_msg("record %zu: status %d (want PERMANENT with a reason): '%s'", i,
                     (int)res[i].status, res[i].error);
    }
    assert_non_null(strstr(res[1].error, "reserved"));
    assert_non_null(strstr(res[2].error, "reserved"));
    assert_non_null(strstr(res[3].error, "reserved"));
    assert_non_null(strstr(res[5].error, "subject"));
    assert_non_null(strstr(res[6].error, "subject"));
    assert_int_equal(res[7].status, OUTBOX_PUB_OK);
    assert_int_equal(stream_msgs(stream), 2);
    assert_non_null(strstr(b->err, "6 of 8"));
    outbox_broker_destroy(b);
    stream_delete(stream);
}

static void
answer_empty(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    if (natsMsg_GetReply(msg) != NULL)
        natsConnection_PublishString(nc, natsMsg_GetReply(msg), "{}");
    natsMsg_Destroy(msg);
}

/* No stream captures the subject, but a plain subscriber takes the
 * message: the record's problem, charged (so max_attempts ends it), never
 * DELIVERED and never an outage retried for ever. A service answering
 * with an empty JSON object is not a PubAck (cnats takes it for one: the
 * record would be DELIVERED with no stream holding it); a subscriber that
 * never answers leaves no PubAck, and JetStream, asked, says no stream. */
static void
test_js_plain_subscriber_without_stream_is_charged(void **state)
{
    static const struct {
        bool answers;
        const char *says;
    } cases[] = {
        {true, "not a JetStream PubAck"},
        {false, "no JetStream stream captures subject"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char topic[80];
        outbox_record_t rec;
        outbox_pub_result_t res;
        natsConnection *nc = NULL;
        natsSubscription *sub = NULL;
        outbox_broker_t *b;

        th_unique(topic, sizeof(topic), "plainsub");
        strcat(topic, ".x");
        assert_int_equal(natsConnection_ConnectTo(&nc, env.nats_url), NATS_OK);
        if (cases[i].answers)
            assert_int_equal(natsConnection_Subscribe(&sub, nc, topic, answer_empty, NULL),
                             NATS_OK);
        else
            assert_int_equal(natsConnection_SubscribeSync(&sub, nc, topic), NATS_OK);
        assert_int_equal(natsConnection_Flush(nc), NATS_OK);
        rec_init(&rec, topic, NULL, NULL, 0, "x", 1);
        b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 1000);
        assert_int_equal(outbox_broker_publish(b, &rec, 1, &res), OUTBOX_OK);
        assert_int_equal(res.status, OUTBOX_PUB_TRANSIENT);
        if (strstr(res.error, cases[i].says) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, res.error, cases[i].says);
        outbox_broker_destroy(b);
        natsSubscription_Destroy(sub);
        natsConnection_Destroy(nc);
    }
}

/* Not one PubAck for a whole batch (a frozen or silent server): nothing is
 * charged, the broker reports itself unreachable. */
static void
test_js_silent_batch_is_not_charged(void **state)
{
    char tok[64], topic[80];
    outbox_record_t recs[2];
    outbox_pub_result_t res[2];
    outbox_broker_t *b;

    (void)state;
    th_unique(tok, sizeof(tok), "mute");
    snprintf(topic, sizeof(topic), "%s.x", tok);
    /* a stream captures the subject but never answers: no reply at all */
    stream_make(tok, topic, 0, true);
    rec_init(&recs[0], topic, NULL, NULL, 0, "a", 1);
    rec_init(&recs[1], topic, NULL, NULL, 0, "b", 1);
    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 400);
    assert_int_equal(outbox_broker_publish(b, recs, 2, res), OUTBOX_ERR_UNREACHABLE);
    assert_int_equal(res[0].status, OUTBOX_PUB_NOT_SENT);
    assert_int_equal(res[1].status, OUTBOX_PUB_NOT_SENT);
    assert_non_null(strstr(res[0].error, "not answering"));
    outbox_broker_destroy(b);
    stream_delete(tok);
}

static void
test_js_no_stream_is_transient_and_fast(void **state)
{
    char topic[80], stream[64], subj[64], ok_topic[80];
    outbox_record_t recs[2];
    outbox_pub_result_t res[2];
    outbox_broker_t *b;
    int64_t t0, took;

    (void)state;
    th_unique(topic, sizeof(topic), "nostream");
    strcat(topic, ".x");
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(ok_topic, sizeof(ok_topic), "%s.y", stream);
    stream_create(stream, subj, 0);
    rec_init(&recs[0], topic, NULL, NULL, 0, "lost", 4);
    rec_init(&recs[1], ok_topic, NULL, NULL, 0, "kept", 4);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 4000);
    t0 = th_now_ms();
    assert_int_equal(outbox_broker_publish(b, recs, 2, res), OUTBOX_OK);
    took = th_now_ms() - t0;
    assert_int_equal(res[0].status, OUTBOX_PUB_TRANSIENT);
    assert_non_null(strstr(res[0].error, "no JetStream stream captures subject"));
    assert_non_null(strstr(res[0].error, topic));
    assert_int_equal(res[1].status, OUTBOX_PUB_OK);
    if (took > 1500)
        fail_msg("no-responders batch took %lld ms (timeout 4000 ms)", (long long)took);
    outbox_broker_destroy(b);
    stream_delete(stream);
}

/* A stream that captures the subject but gives no PubAck (a reply lost in
 * a reconnect, a stream stalling; here a no_ack stream) while other
 * records of the batch are answered: the batch ends at publish_timeout,
 * the unanswered records DEFERRED (no verdict on them: not charged, unlike
 * a stream's refusal), and the broker stays usable. */
static void
test_js_missing_puback_is_deferred(void **state)
{
    char tok[64], topic[80], stream[64], subj[64], ok_topic[80];
    outbox_record_t recs[3];
    outbox_pub_result_t res[3];
    outbox_broker_t *b;
    int64_t t0, took;

    (void)state;
    th_unique(tok, sizeof(tok), "silent");
    snprintf(topic, sizeof(topic), "%s.x", tok);
    stream_make(tok, topic, 0, true); /* captures it, never answers */
    th_unique(stream, sizeof(stream), "bn");
    snprintf(subj, sizeof(subj), "%s.>", stream);
    snprintf(ok_topic, sizeof(ok_topic), "%s.y", stream);
    stream_create(stream, subj, 0);

    rec_init(&recs[0], topic, NULL, NULL, 0, "a", 1);
    rec_init(&recs[1], ok_topic, NULL, NULL, 0, "b", 1);
    rec_init(&recs[2], topic, NULL, NULL, 0, "c", 1);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 400);
    t0 = th_now_ms();
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_OK);
    took = th_now_ms() - t0;
    assert_int_equal(res[0].status, OUTBOX_PUB_DEFERRED);
    assert_non_null(strstr(res[0].error, "no PubAck within 400 ms"));
    assert_int_equal(res[1].status, OUTBOX_PUB_OK);
    assert_int_equal(res[2].status, OUTBOX_PUB_DEFERRED);
    if (took < 350 || took > 2000)
        fail_msg("batch took %lld ms, want about the 400 ms publish timeout", (long long)took);

    /* The abandoned publishes are gone: the next batch waits for nothing. */
    rec_init(&recs[0], ok_topic, NULL, NULL, 0, "next", 4);
    t0 = th_now_ms();
    assert_int_equal(outbox_broker_publish(b, recs, 1, res), OUTBOX_OK);
    assert_all_ok(res, 1, false);
    assert_true(th_now_ms() - t0 < 350);
    outbox_broker_destroy(b);
    stream_delete(stream);
    stream_delete(tok);
}

static void
test_create_unreachable_quickly_without_credentials(void **state)
{
    char url[128], err[512] = "";
    outbox_nats_options_t o = {.url = url,
                               .mode = OUTBOX_NATS_JETSTREAM,
                               .publish_timeout_ms = 1000,
                               .connect_timeout_ms = 1000};
    outbox_broker_t *b = NULL;
    int port = free_port();
    int64_t t0;

    (void)state;
    snprintf(url, sizeof(url), "nats://relay:s3cret@127.0.0.1:%d", port);
    t0 = th_now_ms();
    assert_int_equal(outbox_nats_broker_create(&b, &o, err, sizeof(err)), OUTBOX_ERR_UNREACHABLE);
    assert_true(th_now_ms() - t0 < 2000);
    assert_null(b);
    assert_non_null(strstr(err, "127.0.0.1:"));
    assert_null(strstr(err, "s3cret"));
    assert_null(strstr(err, "relay:"));
}

/* ---- core NATS ----------------------------------------------------------- */

static void
test_core_subscriber_receives_every_message(void **state)
{
    char tok[64], wild[80], t1[80], t2[80];
    natsSubscription *sub = NULL;
    outbox_record_t recs[4];
    outbox_pub_result_t res[4];
    outbox_broker_t *b;
    int64_t maxp = natsConnection_GetMaxPayload(admin_nc);
    char *huge = calloc(1, (size_t)maxp + 1);
    size_t i;

    (void)state;
    assert_non_null(huge);
    th_unique(tok, sizeof(tok), "core");
    snprintf(wild, sizeof(wild), "%s.>", tok);
    snprintf(t1, sizeof(t1), "%s.a", tok);
    snprintf(t2, sizeof(t2), "%s.b.c", tok);
    assert_int_equal(natsConnection_SubscribeSync(&sub, admin_nc, wild), NATS_OK);
    assert_int_equal(natsConnection_Flush(admin_nc), NATS_OK);

    rec_init(&recs[0], t1, "key-1", hdrs_utf8, 3, "hello", 5);
    rec_init(&recs[1], t2, NULL, NULL, 0, binary_body, sizeof(binary_body));
    rec_init(&recs[2], t1, NULL, NULL, 0, huge, (size_t)maxp + 1);
    rec_init(&recs[3], t2, "key-3", hdrs_multi, 2, "", 0);

    b = broker(OUTBOX_NATS_CORE, env.nats_url, 2000);
    assert_int_equal(outbox_broker_publish(b, recs, 4, res), OUTBOX_OK);
    assert_int_equal(res[2].status, OUTBOX_PUB_PERMANENT);
    assert_non_null(strstr(res[2].error, "max_payload"));
    for (i = 0; i < 4; i++) {
        natsMsg *m = NULL;

        if (i == 2)
            continue;
        assert_int_equal(res[i].status, OUTBOX_PUB_OK);
        if (natsSubscription_NextMsg(&m, sub, 2000) != NATS_OK)
            fail_msg("core message %zu not received", i);
        assert_msg_matches(m, &recs[i], false);
        natsMsg_Destroy(m);
    }
    outbox_broker_destroy(b);
    natsSubscription_Destroy(sub);
    free(huge);
}

/* ---- outage: a private nats-server we stop and start -------------------- */

static char *
nats_server_bin(void)
{
    static char *const where[] = {"/usr/bin/nats-server", "/usr/sbin/nats-server",
                                  "/usr/local/bin/nats-server"};
    size_t i;

    for (i = 0; i < sizeof(where) / sizeof(where[0]); i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    fail_msg("nats-server not found in /usr/bin, /usr/sbin or /usr/local/bin");
    return NULL;
}

/* A private nats-server on port, JetStream on (store in dir) or off. */
static pid_t
nats_start_js(int port, const char *dir, bool js)
{
    char p[16], log[600];
    char *argv[] = {nats_server_bin(), "-a", "127.0.0.1", "-p", p, "-js", "-sd", (char *)dir, NULL};
    pid_t pid;
    int64_t until = th_now_ms() + 10000;

    snprintf(p, sizeof(p), "%d", port);
    snprintf(log, sizeof(log), "%s/nats.log", dir);
    if (!js)
        argv[5] = NULL;
    pid = th_spawn(argv, log);
    for (;;) {
        natsConnection *nc = NULL;
        char url[64];

        snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
        if (natsConnection_ConnectTo(&nc, url) == NATS_OK) {
            natsConnection_Destroy(nc);
            return pid;
        }
        if (th_now_ms() > until) {
            th_stop(pid, 2000);
            fail_msg("private nats-server on port %d did not start (see %s)", port, log);
        }
        th_sleep_ms(50);
    }
}

static pid_t
nats_start(int port, const char *dir)
{
    return nats_start_js(port, dir, true);
}

/* The private server of the outage test, stopped by its teardown even
 * when an assertion failed half-way. */
static pid_t outage_pid = -1;
static char outage_dir[64];

static int
outage_teardown(void **state)
{
    char cmd[128];

    (void)state;
    if (outage_pid > 0)
        th_stop(outage_pid, 5000);
    outage_pid = -1;
    if (outage_dir[0] != '\0') {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", outage_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", outage_dir);
        outage_dir[0] = '\0';
    }
    return 0;
}

static uint64_t
private_stream_msgs(const char *url, const char *name)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    uint64_t n = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);

    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK)
        s = js_GetStreamInfo(&si, js, name, NULL, NULL);
    if (s == NATS_OK)
        n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    if (s != NATS_OK)
        fail_msg("stream info %s on %s: %s", name, url, natsStatus_GetText(s));
    return n;
}

/* A server without JetStream answers every publish with "no responders",
 * and JetStream itself does not answer: an outage, not the records' fault.
 * Nothing charged, the batch reported unreachable, the reason says so. */
static void
test_js_server_without_jetstream_is_outage(void **state)
{
    char url[64], err[512] = "";
    outbox_nats_options_t o = {.url = url,
                               .mode = OUTBOX_NATS_JETSTREAM,
                               .publish_timeout_ms = 1000,
                               .connect_timeout_ms = 1000};
    outbox_record_t recs[3];
    outbox_pub_result_t res[3];
    outbox_broker_t *b = NULL;
    int port = free_port();
    size_t i;

    (void)state;
    snprintf(outage_dir, sizeof(outage_dir), "/tmp/outbox-bn.XXXXXX");
    assert_non_null(mkdtemp(outage_dir));
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    outage_pid = nats_start_js(port, outage_dir, false);
    assert_int_equal(outbox_nats_broker_create(&b, &o, err, sizeof(err)), OUTBOX_OK);
    rec_init(&recs[0], "nojs.a", NULL, NULL, 0, "a", 1);
    rec_init(&recs[1], "nojs.b", NULL, NULL, 0, "b", 1);
    rec_init(&recs[2], "nojs.a", NULL, NULL, 0, "c", 1);
    assert_int_equal(outbox_broker_publish(b, recs, 3, res), OUTBOX_ERR_UNREACHABLE);
    for (i = 0; i < 3; i++) {
        assert_int_equal(res[i].status, OUTBOX_PUB_NOT_SENT);
        assert_non_null(strstr(res[i].error, "JetStream does not answer"));
    }
    outbox_broker_destroy(b);
}

static void
test_js_outage_not_sent_then_recovers(void **state)
{
    char url[64], topic[64], err[512] = "";
    outbox_nats_options_t o = {.url = url,
                               .mode = OUTBOX_NATS_JETSTREAM,
                               .publish_timeout_ms = 1000,
                               .connect_timeout_ms = 1000};
    outbox_record_t recs[2];
    outbox_pub_result_t res[2];
    outbox_broker_t *b = NULL;
    int port = free_port(), rc = -1, tries;
    int64_t t0;
    size_t i;

    (void)state;
    snprintf(outage_dir, sizeof(outage_dir), "/tmp/outbox-bn.XXXXXX");
    assert_non_null(mkdtemp(outage_dir));
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    snprintf(topic, sizeof(topic), "outage.x");
    outage_pid = nats_start(port, outage_dir);
    assert_int_equal(outbox_nats_stream_add(&o, "OUTAGE", "outage.>", 0, err, sizeof(err)),
                     OUTBOX_OK);
    assert_int_equal(outbox_nats_broker_create(&b, &o, err, sizeof(err)), OUTBOX_OK);
    rec_init(&recs[0], topic, NULL, NULL, 0, "before", 6);
    rec_init(&recs[1], topic, NULL, NULL, 0, "before2", 7);
    assert_int_equal(outbox_broker_publish(b, recs, 2, res), OUTBOX_OK);
    assert_all_ok(res, 2, false);

    th_stop(outage_pid, 5000);
    outage_pid = -1;
    /* cnats notices the closed socket at once; a publish now must neither
     * block nor pretend: NOT_SENT for all, UNREACHABLE for the batch. */
    th_sleep_ms(200);
    rec_init(&recs[0], topic, NULL, NULL, 0, "during", 6);
    rec_init(&recs[1], topic, NULL, NULL, 0, "during2", 7);
    t0 = th_now_ms();
    assert_int_equal(outbox_broker_publish(b, recs, 2, res), OUTBOX_ERR_UNREACHABLE);
    assert_true(th_now_ms() - t0 < 1500);
    assert_int_equal(res[0].status, OUTBOX_PUB_NOT_SENT);
    assert_int_equal(res[1].status, OUTBOX_PUB_NOT_SENT);
    assert_non_null(strstr(b->err, "down"));

    /* Same port, same store: the broker reconnects by itself (backoff
     * capped at 2.5 s) and the stream still has the first two. */
    outage_pid = nats_start(port, outage_dir);
    for (tries = 0; tries < 60; tries++) {
        /* Right after the restart JetStream may not answer yet ("no
         * responders" with the stream not loaded): an outage like the
         * rest, never an attempt charged to the records. */
        rc = outbox_broker_publish(b, recs, 2, res);
        if (rc == OUTBOX_OK && res[0].status == OUTBOX_PUB_OK && res[1].status == OUTBOX_PUB_OK)
            break;
        for (i = 0; i < 2; i++)
            if (res[i].status == OUTBOX_PUB_TRANSIENT || res[i].status == OUTBOX_PUB_PERMANENT)
                fail_msg("a restarting server charged record %zu: %s", i, res[i].error);
        th_sleep_ms(100);
    }
    assert_int_equal(rc, OUTBOX_OK);
    assert_all_ok(res, 2, false);
    assert_int_equal(private_stream_msgs(url, "OUTAGE"), 4);
    outbox_broker_destroy(b);
}

/* ---- stream administration ------------------------------------------------ */

static char *
capture_info(const outbox_nats_options_t *o, const char *name, bool json, int *rc, char *err,
             size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    *rc = outbox_nats_stream_info(o, name, json, f, err, errlen);
    fclose(f);
    return buf;
}

static void
test_stream_add_and_info(void **state)
{
    char name[64], other[64], subjects[160], s1[80], s2[80], err[512] = "", want[200];
    outbox_nats_options_t o = {
        .url = env.nats_url, .publish_timeout_ms = 3000, .connect_timeout_ms = 2000};
    outbox_record_t recs[2];
    outbox_pub_result_t res[2];
    outbox_broker_t *b;
    char *text;
    int rc;

    (void)state;
    th_unique(name, sizeof(name), "bnadm");
    th_unique(other, sizeof(other), "bnadm");
    snprintf(s1, sizeof(s1), "%s.a", name);
    snprintf(s2, sizeof(s2), "%s.b.>", name);
    snprintf(subjects, sizeof(subjects), "%s, %s", s1, s2);

    assert_int_equal(outbox_nats_stream_add(&o, name, subjects, 5000, err, sizeof(err)), OUTBOX_OK);
    /* Same configuration again: idempotent. */
    assert_int_equal(outbox_nats_stream_add(&o, name, subjects, 5000, err, sizeof(err)), OUTBOX_OK);

    b = broker(OUTBOX_NATS_JETSTREAM, env.nats_url, 3000);
    rec_init(&recs[0], s1, NULL, NULL, 0, "one", 3);
    rec_init(&recs[1], s1, NULL, NULL, 0, "two", 3);
    assert_int_equal(outbox_broker_publish(b, recs, 2, res), OUTBOX_OK);
    assert_all_ok(res, 2, false);
    outbox_broker_destroy(b);

    text = capture_info(&o, name, false, &rc, err, sizeof(err));
    assert_int_equal(rc, OUTBOX_OK);
    snprintf(want, sizeof(want), "subjects: %s, %s\n", s1, s2);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "messages: 2\n"));
    assert_non_null(strstr(text, "first_seq: 1\n"));
    assert_non_null(strstr(text, "last_seq: 2\n"));
    assert_non_null(strstr(text, "duplicate_window_ms: 5000\n"));
    assert_non_null(strstr(text, "storage: file\n"));
    free(text);

    text = capture_info(&o, name, true, &rc, err, sizeof(err));
    assert_int_equal(rc, OUTBOX_OK);
    snprintf(want, sizeof(want), "\"subjects\":[\"%s\",\"%s\"]", s1, s2);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "\"messages\":2"));
    assert_non_null(strstr(text, "\"duplicate_window_ms\":5000"));
    free(text);

    /* Same name, other subjects: refused (a usage error), naming what exists
     * and the command that changes it. */
    snprintf(want, sizeof(want), "%s.zzz", name);
    assert_int_equal(outbox_nats_stream_add(&o, name, want, 5000, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "already exists with other settings"));
    assert_non_null(strstr(err, s1));
    assert_non_null(strstr(err, "duplicate window 5s"));
    assert_non_null(strstr(err, "outboxd stream update"));

    /* update: a longer window on the existing stream, messages kept */
    {
        char both[200];

        snprintf(both, sizeof(both), "%s,%s", s1, s2);
        assert_int_equal(outbox_nats_stream_update(&o, name, both, 600000, err, sizeof(err)),
                         OUTBOX_OK);
        text = capture_info(&o, name, true, &rc, err, sizeof(err));
        assert_int_equal(rc, OUTBOX_OK);
        assert_non_null(strstr(text, "\"messages\":2"));
        assert_non_null(strstr(text, "\"duplicate_window_ms\":600000"));
        free(text);
        assert_int_equal(outbox_nats_stream_update(&o, other, both, 0, err, sizeof(err)),
                         OUTBOX_ERR_INVALID);
        assert_non_null(strstr(err, "no stream"));
    }

    /* Another stream wanting the same subjects: refused as an overlap. */
    assert_int_equal(outbox_nats_stream_add(&o, other, s1, 0, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "overlap"));

    js_DeleteStream(admin_js, name, NULL, NULL);
    text = capture_info(&o, name, false, &rc, err, sizeof(err));
    assert_int_equal(rc, OUTBOX_ERR_PERMANENT);
    snprintf(want, sizeof(want), "stream '%s' not found", name);
    assert_string_equal(err, want);
    assert_true(text == NULL || text[0] == '\0');
    free(text);
}

static void
test_stream_admin_unreachable(void **state)
{
    char url[64], err[512] = "";
    outbox_nats_options_t o = {.url = url, .publish_timeout_ms = 1000, .connect_timeout_ms = 1000};
    char *text;
    int rc;

    (void)state;
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", free_port());
    assert_int_equal(outbox_nats_stream_add(&o, "X", "x.>", 0, err, sizeof(err)),
                     OUTBOX_ERR_UNREACHABLE);
    assert_non_null(strstr(err, url));
    text = capture_info(&o, "X", false, &rc, err, sizeof(err));
    assert_int_equal(rc, OUTBOX_ERR_UNREACHABLE);
    free(text);
    assert_int_equal(outbox_nats_stream_add(&o, "bad.name", "x", 0, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_js_batch_arrives_byte_identical),
        cmocka_unit_test(test_js_republish_is_duplicate),
        cmocka_unit_test(test_js_oversize_is_permanent_and_connection_survives),
        cmocka_unit_test(test_js_stream_max_msg_size_is_permanent),
        cmocka_unit_test(test_js_stream_full_is_transient),
        cmocka_unit_test(test_reserved_header_and_bad_subject_are_permanent),
        cmocka_unit_test(test_js_no_stream_is_transient_and_fast),
        cmocka_unit_test(test_js_plain_subscriber_without_stream_is_charged),
        cmocka_unit_test(test_js_silent_batch_is_not_charged),
        cmocka_unit_test(test_js_missing_puback_is_deferred),
        cmocka_unit_test(test_create_unreachable_quickly_without_credentials),
        cmocka_unit_test(test_core_subscriber_receives_every_message),
        cmocka_unit_test_teardown(test_js_server_without_jetstream_is_outage, outage_teardown),
        cmocka_unit_test_teardown(test_js_outage_not_sent_then_recovers, outage_teardown),
        cmocka_unit_test(test_stream_add_and_info),
        cmocka_unit_test(test_stream_admin_unreachable),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
