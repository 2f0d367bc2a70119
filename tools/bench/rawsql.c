/*
 * raw's SQL side: liboutbox's PostgreSQL Store driven directly, so the
 * ceiling always runs the relay's current claim and mark.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rawsql.h"
#include "util.h"

#define LOCK_ID "outboxbench-raw"

struct rawsql {
    outbox_store_t *store;
    outbox_batch_t batch;
    outbox_mark_t *marks;
    size_t cap;
};

int
rawsql_open(rawsql_t **out, const char *conninfo, const char *schema, bool delete_delivered)
{
    outbox_pg_options_t o = {.conninfo = conninfo,
                             .schema = schema,
                             .table = "outbox",
                             .delete_delivered = delete_delivered};
    char err[512];
    rawsql_t *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        bench_err("out of memory");
        return -1;
    }
    outbox_batch_init(&r->batch);
    if (outbox_pg_store_create(&r->store, &o, err, sizeof(err)) != OUTBOX_OK) {
        bench_err("PostgreSQL: %s", err);
        rawsql_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

void
rawsql_close(rawsql_t *r)
{
    if (r == NULL)
        return;
    outbox_store_destroy(r->store);
    outbox_batch_free(&r->batch);
    free(r->marks);
    free(r);
}

int
rawsql_claim(rawsql_t *r, long limit, const outbox_batch_t **batch)
{
    if (outbox_store_claim(r->store, LOCK_ID, (int)limit, &r->batch) != OUTBOX_OK) {
        bench_err("PostgreSQL: claim: %s", r->store->err);
        return -1;
    }
    *batch = &r->batch;
    return 0;
}

int
rawsql_mark(rawsql_t *r)
{
    size_t i, n = r->batch.n;

    if (n > r->cap) {
        void *p = realloc(r->marks, n * sizeof(*r->marks));

        if (p == NULL) {
            bench_err("out of memory");
            return -1;
        }
        r->marks = p;
        r->cap = n;
    }
    for (i = 0; i < n; i++)
        r->marks[i] = (outbox_mark_t){r->batch.recs[i].id, OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    if (outbox_store_mark(r->store, LOCK_ID, r->marks, n, NULL) != OUTBOX_OK) {
        bench_err("PostgreSQL: mark delivered: %s", r->store->err);
        return -1;
    }
    return 0;
}
