/*
 * cnats plumbing shared by broker_nats.c and stream_nats.c: one way to
 * connect with the relay's options, credential-free URLs for messages, and
 * natsStatus -> outbox status mapping. Only the NATS files include this
 * header (it pulls in <nats/nats.h>).
 */
#ifndef OUTBOX_NATS_UTIL_H
#define OUTBOX_NATS_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include <nats/nats.h>

#include "outbox/broker.h"

/* Copy url to out with any "user:pass@" / "token@" removed from every
 * entry of a comma list, so it can go into error text and logs. */
void outbox_nats_redact_url(const char *url, char *out, size_t len);

/* Text for s: cnats' last error of this thread when it has one (it names
 * the cause, e.g. the server's reply), else natsStatus_GetText(s). */
void outbox_nats_status_text(natsStatus s, char *out, size_t len);

/* Connect to opt->url. reconnect=false gives a one-shot administrative
 * connection; true the relay's (unlimited reconnects, capped backoff with
 * jitter, tiny reconnect buffer, 5 s pings). On failure writes one line
 * naming the redacted URL to err and returns OUTBOX_ERR_UNREACHABLE (server
 * down), OUTBOX_ERR_CONFIG (bad URL, authorization) or OUTBOX_ERR_NOMEM;
 * *out is written only on OUTBOX_OK and is freed with
 * natsConnection_Destroy(). */
int outbox_nats_connect(natsConnection **out, const outbox_nats_options_t *opt, bool reconnect,
                        char *err, size_t errlen);

/* Split a comma-separated list in place (spaces around items trimmed,
 * empty items dropped) into at most max pointers; returns the count, or -1
 * when there are more than max items. */
int outbox_nats_split_list(char *list, char **items, int max);

#endif
