/*
 * outbox status codes. Every fallible liboutbox function returns one of these;
 * OUTBOX_OK is zero, failures are negative. Out-parameters are written only
 * on OUTBOX_OK. The text behind a failure is kept by the object that failed
 * (outbox_store_t.err, outbox_broker_t.err, ...), not in a global.
 */
#ifndef OUTBOX_ERRORS_H
#define OUTBOX_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum outbox_status {
    OUTBOX_OK = 0,
    OUTBOX_ERR_TRANSIENT = -1,   /* may succeed if retried: timeout, lost connection */
    OUTBOX_ERR_PERMANENT = -2,   /* will never succeed as it is */
    OUTBOX_ERR_CONFIG = -3,      /* bad configuration or usage */
    OUTBOX_ERR_NOMEM = -4,       /* out of memory */
    OUTBOX_ERR_INVALID = -5,     /* bad argument or message, rejected before any write */
    OUTBOX_ERR_UNREACHABLE = -6, /* the database or broker cannot be reached */
    OUTBOX_ERR_SCHEMA = -7       /* outbox table missing or of another schema version */
} outbox_status_t;

/* Static, never NULL: a name for any status value, "unknown status" otherwise. */
const char *outbox_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif
