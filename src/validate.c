/*
 * Message validation before anything is written. The SQL function
 * <table>_invalid() installed by migration 1 (src/migrate_pg.c) applies the
 * same rules; keep the two in step. Limits are bytes, strings must be UTF-8.
 * Data quoted in an error has its control characters escaped, in both.
 * Pure functions: no allocation, no global state.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "outbox/outbox.h"
#include "escape.h"
#include "validate.h"

/* 1 if s[0..len) is well-formed UTF-8 (no overlongs, surrogates or code
 * points above U+10FFFF). */
static int
utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0, n;

    for (; i < len; i += n)
        if ((n = outbox_utf8_len(s + i, len - i)) == 0)
            return 0;
    return 1;
}

/* RFC 7230 tchar. */
static int
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Why subject is not a valid NATS publish subject, or NULL when it is. */
static const char *
subject_problem(const char *subject)
{
    const unsigned char *p;
    size_t len, toklen = 0;

    if (subject == NULL)
        return "is missing";
    len = strlen(subject);
    if (len == 0)
        return "is empty";
    if (len > OUTBOX_TOPIC_MAX)
        return "is longer than 1024 bytes";
    for (p = (const unsigned char *)subject; *p; p++) {
        if (*p <= ' ' || *p == 0x7F)
            return "contains a space or control character";
    }
    if (!utf8_valid((const unsigned char *)subject, len))
        return "is not valid UTF-8";
    /* $JS.API.STREAM.DELETE.x and the like: a "message" there would be a
     * JetStream or system request, and its reply taken for a PubAck */
    if (subject[0] == '$')
        return "begins with '$' (reserved for NATS system and JetStream API subjects)";
    for (p = (const unsigned char *)subject;; p++) {
        if (*p != '.' && *p != '\0') {
            toklen++;
            continue;
        }
        if (toklen == 0)
            return "has an empty token";
        if (toklen == 1 && (p[-1] == '*' || p[-1] == '>'))
            return "has a wildcard token";
        if (*p == '\0')
            break;
        toklen = 0;
    }
    return NULL;
}

int
outbox_subject_valid(const char *subject)
{
    return subject_problem(subject) == NULL;
}

/* Write "label "what" why" to err, what escaped (\n, \x01, \\, and bytes
 * that are not UTF-8 as \xNN: the line shows what was sent and stays one
 * line, as in <table>_escaped()) and cut at 64 bytes so it stays short. */
static int
reject(char *err, size_t errlen, const char *label, const char *what, const char *fmt, ...)
{
    char shown[80];
    char why[160];
    va_list ap;

    if (err == NULL || errlen == 0)
        return OUTBOX_ERR_INVALID;
    shown[0] = '\0';
    if (what != NULL &&
        outbox_escape(shown, 65, what, strlen(what), OUTBOX_ESCAPE_BACKSLASH) < strlen(what))
        strcat(shown, "...");
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (what != NULL)
        snprintf(err, errlen, "%s \"%s\" %s", label, shown, why);
    else
        snprintf(err, errlen, "%s %s", label, why);
    return OUTBOX_ERR_INVALID;
}

int
outbox_message_validate(const outbox_message_t *msg, char *err, size_t errlen)
{
    const char *why;
    size_t i, j, len;

    if (msg == NULL)
        return reject(err, errlen, "message", NULL, "is NULL");
    if ((why = subject_problem(msg->topic)) != NULL) {
        /* Long or empty topics are not worth quoting. */
        if (msg->topic == NULL || msg->topic[0] == '\0' || strlen(msg->topic) > OUTBOX_TOPIC_MAX)
            return reject(err, errlen, "topic", NULL, "%s", why);
        return reject(err, errlen, "topic", msg->topic, "%s", why);
    }
    if (msg->key != NULL) {
        len = strlen(msg->key);
        if (len > OUTBOX_HEADER_VALUE_MAX)
            return reject(err, errlen, "key", NULL, "is longer than %d bytes",
                          OUTBOX_HEADER_VALUE_MAX);
        /* The key travels as the Outbox-Key header value. */
        if (len > 0 && (why = outbox_value_problem(msg->key, len)) != NULL)
            return reject(err, errlen, "key", msg->key, "%s", why);
        if (!utf8_valid((const unsigned char *)msg->key, len))
            return reject(err, errlen, "key", NULL, "is not valid UTF-8");
    }
    if (msg->nheaders > 0 && msg->headers == NULL)
        return reject(err, errlen, "headers", NULL, "are NULL but nheaders is %zu", msg->nheaders);
    for (i = 0; i < msg->nheaders; i++) {
        const outbox_header_t *h = &msg->headers[i];

        if (h->name == NULL || h->name[0] == '\0')
            return reject(err, errlen, "header", NULL, "%zu has an empty name", i);
        len = strlen(h->name);
        if (len > OUTBOX_HEADER_NAME_MAX)
            return reject(err, errlen, "header", NULL, "%zu: name is longer than %d bytes", i,
                          OUTBOX_HEADER_NAME_MAX);
        for (j = 0; j < len; j++) {
            if (!is_tchar((unsigned char)h->name[j]))
                return reject(err, errlen, "header name", h->name, "is not a token");
        }
        if (strncasecmp(h->name, "Outbox-", 7) == 0 || strncasecmp(h->name, "Nats-", 5) == 0)
            return reject(err, errlen, "header name", h->name, "is reserved (Outbox-*, Nats-*)");
        for (j = 0; j < i; j++) {
            if (strcmp(msg->headers[j].name, h->name) == 0)
                return reject(err, errlen, "header name", h->name, "is repeated");
        }
        if (h->value == NULL)
            return reject(err, errlen, "header", h->name, "has no value");
        len = strlen(h->value);
        if (len > OUTBOX_HEADER_VALUE_MAX)
            return reject(err, errlen, "header", h->name, "value is longer than %d bytes",
                          OUTBOX_HEADER_VALUE_MAX);
        if ((why = outbox_value_problem(h->value, len)) != NULL)
            return reject(err, errlen, "header", h->name, "value %s", why);
        if (!utf8_valid((const unsigned char *)h->value, len))
            return reject(err, errlen, "header", h->name, "value is not valid UTF-8");
    }
    if (msg->body == NULL)
        return reject(err, errlen, "body", NULL, "is NULL");
    return OUTBOX_OK;
}

const char *
outbox_value_problem(const char *v, size_t len)
{
    if (len == 0)
        return "is empty (NATS readers would lose every header of the message)";
    if (memchr(v, '\r', len) != NULL || memchr(v, '\n', len) != NULL)
        return "contains CR or LF";
    if (v[0] == ' ' || v[0] == '\t' || v[len - 1] == ' ' || v[len - 1] == '\t')
        return "begins or ends with white space (NATS clients trim it)";
    return NULL;
}
