/* Fault injection for tests (fault.c); a no-op unless OUTBOX_FAULT_INJECTION. */
#ifndef OUTBOX_FAULT_H
#define OUTBOX_FAULT_H

#include "outbox/broker.h"

#ifdef OUTBOX_FAULT_INJECTION
/* inner, or a broker wrapping it per the OUTBOX_FAULT_* environment. */
outbox_broker_t *outbox_fault_wrap_broker(outbox_broker_t *inner);
#else
#define outbox_fault_wrap_broker(inner) (inner)
#endif

#endif
