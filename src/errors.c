/* Names for outbox_status_t values. */
#include "outbox/errors.h"

const char *
outbox_strerror(int status)
{
    switch (status) {
    case OUTBOX_OK: return "ok";
    case OUTBOX_ERR_TRANSIENT: return "transient failure";
    case OUTBOX_ERR_PERMANENT: return "permanent failure";
    case OUTBOX_ERR_CONFIG: return "configuration error";
    case OUTBOX_ERR_NOMEM: return "out of memory";
    case OUTBOX_ERR_INVALID: return "invalid argument";
    case OUTBOX_ERR_UNREACHABLE: return "server unreachable";
    case OUTBOX_ERR_SCHEMA: return "schema missing or wrong version";
    }
    return "unknown status";
}
