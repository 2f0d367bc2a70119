/*
 * liboutbox public API: the message a producer enqueues, the record the relay
 * claims, and the producer call that adds a message inside the caller's own
 * PostgreSQL transaction. Strings are NUL-terminated UTF-8; bodies are bytes.
 */
#ifndef OUTBOX_OUTBOX_H
#define OUTBOX_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "outbox/errors.h"
#include "outbox/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OUTBOX_ID_LEN 36 /* textual uuid, without the NUL */

/* Limits enforced by outbox_message_validate() and by the SQL function. */
#define OUTBOX_TOPIC_MAX 1024
#define OUTBOX_HEADER_NAME_MAX 256
#define OUTBOX_HEADER_VALUE_MAX 4096

typedef struct outbox_header {
    const char *name;  /* a token: [A-Za-z0-9!#$%&'*+.^_`|~-]+, no ':' */
    const char *value; /* any UTF-8 without CR or LF */
} outbox_header_t;

typedef struct outbox_message {
    const char *topic;              /* NATS publish subject */
    const char *key;                /* NULL or "" for none */
    const outbox_header_t *headers; /* nheaders entries, may be NULL if 0 */
    size_t nheaders;
    const void *body; /* must not be NULL; may be empty (body_len 0) */
    size_t body_len;
} outbox_message_t;

typedef enum outbox_state {
    OUTBOX_STATE_PENDING = 0,
    OUTBOX_STATE_DELIVERED = 1,
    OUTBOX_STATE_MAX_ATTEMPTS_REACHED = 2 /* the one dead / parked state */
} outbox_state_t;

/* A stored message as the relay sees it. Times are microseconds since the
 * Unix epoch, read from the database clock; 0 means NULL. */
typedef struct outbox_record {
    char id[OUTBOX_ID_LEN + 1];
    int64_t seq; /* creation order: "oldest first" */
    outbox_message_t msg;
    outbox_state_t state;
    int32_t attempts;
    int64_t created_on;
    int64_t locked_on;
    int64_t processed_on;
    int64_t last_attempt_on;
    const char *locked_by;  /* NULL when not locked */
    const char *last_error; /* NULL when none */
    int32_t crashes;        /* times a worker died holding it */
} outbox_record_t;

/*
 * A batch of records and the memory behind them. A store fills it; the
 * records' strings, headers and bodies live in the batch's arena and stay
 * valid until the next outbox_batch_reset() or outbox_batch_free(). The
 * arena is kept between batches, so a steady relay allocates nothing per
 * message.
 */
typedef struct outbox_batch {
    outbox_record_t *recs;
    size_t n, cap;
    outbox_header_t *hdrs; /* pool the records' msg.headers point into */
    size_t nhdrs, hdrs_cap;
    char *arena;
    size_t arena_used, arena_cap;
} outbox_batch_t;

void outbox_batch_init(outbox_batch_t *b);
void outbox_batch_reset(outbox_batch_t *b); /* n = 0, keeps the memory */
void outbox_batch_free(outbox_batch_t *b);  /* frees and re-inits; NULL ok */

/* Make room for nrecs records, nhdrs headers and bytes of strings/bodies
 * beyond what is in use, so that the following outbox_batch_push() and
 * outbox_batch_alloc() calls never move memory. OUTBOX_OK or
 * OUTBOX_ERR_NOMEM. Must be called before any push/alloc of a fill. */
int outbox_batch_reserve(outbox_batch_t *b, size_t nrecs, size_t nhdrs, size_t bytes);
/* Zeroed record at the end / headers / bytes from the reservation. Return
 * NULL only when the reservation was too small (a caller bug). */
outbox_record_t *outbox_batch_push(outbox_batch_t *b);
outbox_header_t *outbox_batch_headers(outbox_batch_t *b, size_t n);
void *outbox_batch_alloc(outbox_batch_t *b, size_t len);
/* Copy a string / bytes into the arena (reservation must cover len + 1). */
const char *outbox_batch_strdup(outbox_batch_t *b, const char *s, size_t len);

/*
 * Check a message before it is written: topic a valid NATS publish subject
 * (no spaces or control characters, no empty token, no '*' or '>' token),
 * header names plain tokens not reserved by the relay (Outbox-*, Nats-*),
 * header values free of CR/LF, body not NULL. On failure writes one line
 * naming the culprit to err (if errlen > 0) and returns OUTBOX_ERR_INVALID.
 */
int outbox_message_validate(const outbox_message_t *msg, char *err, size_t errlen);
/* Subject check alone; 1 if valid. */
int outbox_subject_valid(const char *subject);

struct pg_conn; /* libpq's PGconn */

/*
 * Producer API: insert msg into the outbox table inside the transaction
 * open on conn (PQtransactionStatus must be PQTRANS_INTRANS; this call never
 * commits or rolls back). schema and table NULL mean "public" and "outbox".
 * On OUTBOX_OK writes the new record id (36 chars + NUL) to id_out.
 * Errors: OUTBOX_ERR_INVALID (message rejected, or no open transaction;
 * nothing written), OUTBOX_ERR_TRANSIENT / OUTBOX_ERR_UNREACHABLE /
 * OUTBOX_ERR_PERMANENT from the database (the caller's transaction is then
 * aborted, as for any failed statement). err gets one line when errlen > 0.
 */
int outbox_enqueue(struct pg_conn *conn, const char *schema, const char *table,
                   const outbox_message_t *msg, char id_out[OUTBOX_ID_LEN + 1], char *err,
                   size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
