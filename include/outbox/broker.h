/*
 * The Broker interface: where records go. publish() sends a whole batch and
 * reports one result per record; it never stops at the first failure. An
 * implementation embeds outbox_broker_t as its first member.
 */
#ifndef OUTBOX_BROKER_H
#define OUTBOX_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outbox/outbox.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum outbox_pub_status {
    OUTBOX_PUB_OK = 0,    /* acknowledged (JetStream) / flushed (core) */
    OUTBOX_PUB_TRANSIENT, /* failed, may succeed later: charge an attempt, retry */
    OUTBOX_PUB_PERMANENT, /* can never succeed (bad subject, too large): dead now */
    OUTBOX_PUB_NOT_SENT,  /* broker unreachable: not attempted, charge nothing */
    OUTBOX_PUB_DEFERRED   /* sent, but no verdict came (no PubAck in time, the stream
                           * for its subject not answering): not the record's fault,
                           * charge nothing, retry after the retry delay */
} outbox_pub_status_t;

typedef struct outbox_pub_result {
    outbox_pub_status_t status;
    bool duplicate; /* OK, and the stream already had this id */
    char error[240];
} outbox_pub_result_t;

typedef struct outbox_broker outbox_broker_t;

typedef struct outbox_broker_ops {
    /* Publish recs[0..n) and fill res[0..n). Returns OUTBOX_OK when every
     * result is set, OUTBOX_ERR_UNREACHABLE when the broker is down (results
     * still set: acknowledged ones OK, the rest NOT_SENT). Subject = topic;
     * message headers carried; Outbox-Id = id, Outbox-Key = key (if any);
     * JetStream adds Nats-Msg-Id = id. */
    int (*publish)(outbox_broker_t *b, const outbox_record_t *recs, size_t n,
                   outbox_pub_result_t *res);
    /* Dead-letter copies: as publish, but every record goes to subject,
     * with its headers plus Outbox-Dead-Reason = reasons[i] (CR/LF and
     * surrounding white space removed) and Outbox-Topic = its topic; a copy
     * too large for the server is sent without its body, with
     * Outbox-Body-Omitted = the body's size. NULL: not supported. */
    int (*publish_dead)(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                        const char *const *reasons, size_t n, outbox_pub_result_t *res);
    void (*destroy)(outbox_broker_t *b);
} outbox_broker_ops_t;

struct outbox_broker {
    const outbox_broker_ops_t *ops;
    char err[512];       /* last failure, one line */
    uint64_t reconnects; /* connections the implementation re-made after a loss */
};

int outbox_broker_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n,
                          outbox_pub_result_t *res);
/* OUTBOX_ERR_INVALID (every result TRANSIENT) if the broker has no publish_dead. */
int outbox_broker_publish_dead(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                               const char *const *reasons, size_t n, outbox_pub_result_t *res);
void outbox_broker_destroy(outbox_broker_t *b); /* NULL ok */

/* Reserved header names (the producer may not set Outbox-* or Nats-*). */
#define OUTBOX_HDR_ID "Outbox-Id"
#define OUTBOX_HDR_KEY "Outbox-Key"
#define OUTBOX_HDR_DEAD_REASON "Outbox-Dead-Reason"
#define OUTBOX_HDR_TOPIC "Outbox-Topic"
#define OUTBOX_HDR_BODY_OMITTED "Outbox-Body-Omitted"

/* ---- NATS implementation (cnats) ---- */

typedef enum outbox_nats_mode {
    OUTBOX_NATS_JETSTREAM = 0, /* async publish, wait for every PubAck, dedupe by id */
    OUTBOX_NATS_CORE           /* at-least-once: delivered after a successful flush */
} outbox_nats_mode_t;

typedef struct outbox_nats_options {
    const char *url; /* e.g. nats://127.0.0.1:4222; comma list allowed; borrowed */
    outbox_nats_mode_t mode;
    int64_t publish_timeout_ms; /* PubAck / flush wait for a whole batch */
    int64_t connect_timeout_ms;
    const char *name; /* connection name shown by the server; may be NULL */
    /* JetStream: the longest time between a publish and a re-publish of
     * the same record (retries, crashed relays). The first PubAck from each
     * stream has that stream's duplicate window checked against it; when
     * shorter, warn(warn_arg, text) is called once (duplicates could get
     * through). 0 or warn NULL: no check. */
    int64_t dedupe_span_ms;
    void (*warn)(void *warn_arg, const char *text);
    void *warn_arg;
} outbox_nats_options_t;

int outbox_nats_broker_create(outbox_broker_t **out, const outbox_nats_options_t *opt, char *err,
                              size_t errlen);

/* Stream administration for `outboxd stream`: the relay itself never creates
 * streams. subjects is a comma-separated list. duplicate_window_ms 0 = server
 * default. Output is human-readable text written to the FILE* (as void *). */
int outbox_nats_stream_add(const outbox_nats_options_t *opt, const char *name, const char *subjects,
                           int64_t duplicate_window_ms, char *err, size_t errlen);
/* As add, but for an existing stream: its subjects and duplicate window are
 * replaced (the messages stay). OUTBOX_ERR_INVALID if there is no such
 * stream. */
int outbox_nats_stream_update(const outbox_nats_options_t *opt, const char *name,
                              const char *subjects, int64_t duplicate_window_ms, char *err,
                              size_t errlen);
/* Writes stream info (subjects, messages, bytes, duplicate window, first/last
 * seq) as "key: value" lines, or JSON when json is true. */
int outbox_nats_stream_info(const outbox_nats_options_t *opt, const char *name, bool json,
                            void *out_file, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
