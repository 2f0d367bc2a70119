/* Broker interface wrappers. */
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
