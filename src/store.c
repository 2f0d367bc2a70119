/* Store interface wrappers: one call through the vtable each. */
#include "outbox/store.h"

int
outbox_store_claim(outbox_store_t *s, const char *lock_id, int limit, outbox_batch_t *out)
{
    return s->ops->claim(s, lock_id, limit, out);
}

int
outbox_store_get_by_lock_id(outbox_store_t *s, const char *lock_id, outbox_batch_t *out)
{
    return s->ops->get_by_lock_id(s, lock_id, out);
}

int
outbox_store_mark(outbox_store_t *s, const char *lock_id, const outbox_mark_t *marks, size_t n,
                  int64_t *updated)
{
    return s->ops->mark(s, lock_id, marks, n, updated);
}

int
outbox_store_clear_stale_locks(outbox_store_t *s, int64_t max_lock_ms, int64_t *released)
{
    return s->ops->clear_stale_locks(s, max_lock_ms, released);
}

int
outbox_store_clear_locks_by_lock_id(outbox_store_t *s, const char *lock_id, int64_t *released)
{
    return s->ops->clear_locks_by_lock_id(s, lock_id, released);
}

int
outbox_store_release_crashed(outbox_store_t *s, const char *lock_id, int64_t lo, int64_t hi,
                             int crash_limit, int64_t *released, int64_t *parked)
{
    return s->ops->release_crashed(s, lock_id, lo, hi, crash_limit, released, parked);
}

int
outbox_store_purge(outbox_store_t *s, int64_t retention_ms, int64_t dead_retention_ms, int limit,
                   int64_t *deleted)
{
    return s->ops->purge(s, retention_ms, dead_retention_ms, limit, deleted);
}

void
outbox_store_destroy(outbox_store_t *s)
{
    if (s != NULL)
        s->ops->destroy(s);
}
