/*
 * Fault injection for the test suite, compiled only with
 * -DOUTBOX_FAULT_INJECTION=ON (tools/check.sh turns it on; release and
 * container builds leave it out). A relay whose environment names a topic in
 * OUTBOX_FAULT_KILL_TOPIC wraps its broker so that publishing a record of
 * that topic SIGKILLs the worker, as a poison message that crashes or
 * exhausts memory would: the kill cannot be caught, and leaves the claimed
 * batch locked exactly as a real crash does.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"

typedef struct fault_broker {
    outbox_broker_t base;
    outbox_broker_t *inner;
    const char *kill_topic;
} fault_broker_t;

static void
check(const fault_broker_t *f, const outbox_record_t *recs, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (recs[i].msg.topic != NULL && strcmp(recs[i].msg.topic, f->kill_topic) == 0)
            kill(getpid(), SIGKILL);
}

static int
fault_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res)
{
    fault_broker_t *f = (fault_broker_t *)b;
    int rc;

    check(f, recs, n);
    rc = outbox_broker_publish(f->inner, recs, n, res);
    memcpy(b->err, f->inner->err, sizeof(b->err));
    b->reconnects = f->inner->reconnects;
    return rc;
}

static int
fault_publish_dead(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                   const char *const *reasons, size_t n, outbox_pub_result_t *res)
{
    fault_broker_t *f = (fault_broker_t *)b;
    int rc = outbox_broker_publish_dead(f->inner, subject, recs, reasons, n, res);

    memcpy(b->err, f->inner->err, sizeof(b->err));
    return rc;
}

static void
fault_destroy(outbox_broker_t *b)
{
    fault_broker_t *f = (fault_broker_t *)b;

    outbox_broker_destroy(f->inner);
    free(f);
}

static const outbox_broker_ops_t fault_ops = {
    .publish = fault_publish,
    .publish_dead = fault_publish_dead,
    .destroy = fault_destroy,
};

outbox_broker_t *
outbox_fault_wrap_broker(outbox_broker_t *inner)
{
    const char *topic = getenv("OUTBOX_FAULT_KILL_TOPIC");
    fault_broker_t *f;

    if (inner == NULL || topic == NULL || topic[0] == '\0' || (f = calloc(1, sizeof(*f))) == NULL)
        return inner;
    f->base.ops = &fault_ops;
    f->inner = inner;
    f->kill_topic = topic;
    return &f->base;
}
