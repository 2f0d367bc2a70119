/* Broker interface wrappers. */
#include <stdio.h>

#include "outbox/broker.h"

int
outbox_broker_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n,
                      outbox_pub_result_t *res)
{
    return b->ops->publish(b, recs, n, res);
}

void
outbox_broker_destroy(outbox_broker_t *b)
{
    if (b != NULL)
        b->ops->destroy(b);
}

int
outbox_broker_publish_dead(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                           const char *const *reasons, size_t n, outbox_pub_result_t *res)
{
    size_t i;

    if (b->ops->publish_dead != NULL)
        return b->ops->publish_dead(b, subject, recs, reasons, n, res);
    for (i = 0; i < n; i++) {
        res[i].status = OUTBOX_PUB_TRANSIENT;
        res[i].duplicate = false;
        snprintf(res[i].error, sizeof(res[i].error), "this broker cannot publish dead letters");
    }
    snprintf(b->err, sizeof(b->err), "this broker cannot publish dead letters");
    return OUTBOX_ERR_INVALID;
}
