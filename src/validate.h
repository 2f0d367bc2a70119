/*
 * Shared header-value rule, used by the producer check (validate.c) and by
 * the NATS broker for rows written around it. A value travels as one NATS
 * header line: CR/LF would inject headers; an empty value makes cnats
 * readers drop every header of the message (Outbox-Id included); leading or
 * trailing white space is trimmed by NATS clients, so it would not arrive
 * byte-identical.
 */
#ifndef OUTBOX_VALIDATE_H
#define OUTBOX_VALIDATE_H

#include <stddef.h>

/* NULL when v (len bytes) can travel as a header value, else the reason. */
const char *outbox_value_problem(const char *v, size_t len);

#endif
