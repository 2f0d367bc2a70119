/*
 * Producer load: P threads, one PostgreSQL connection each, committing
 * transactions of B messages through outbox_enqueue() in SQL or the C API.
 * Flat out for a duration, or paced by a schedule of start times (steady).
 * Message bodies carry their index: decimal digits, a space, 'x' padding to
 * the body size; index = transaction number * B + position.
 * Connections are opened and statements prepared before the clock starts.
 */
#ifndef BENCH_PRODUCER_H
#define BENCH_PRODUCER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "options.h"
#include "latstats.h"

typedef struct producer_cfg {
    const char *conninfo, *schema, *topic;
    bench_api_t api; /* BENCH_API_SQL or BENCH_API_C */
    int connections;
    long batch, body_size, headers;
    int notify;     /* SELECT pg_notify('bench','') in every transaction */
    double seconds; /* flat out: how long */
    /* paced: transaction k starts at start + schedule[k], k < ntx */
    const int64_t *schedule; /* microseconds after the start */
    size_t ntx;
    _Atomic int64_t *sent_us; /* paced: per message index, when its COMMIT was sent */
} producer_cfg_t;

typedef struct producer_result {
    uint64_t commits, msgs;
    double elapsed_s;   /* first start to last commit */
    int64_t max_lag_us; /* paced: worst start after the scheduled time */
    uint64_t late;      /* paced: transactions started over 1 ms late */
    lat_summary_t tx;   /* transaction duration, BEGIN sent to COMMIT done (us) */
} producer_result_t;

/* Run the load; 0, or -1 when a connection or statement failed (first
 * error printed, naming the connection) or a stop was requested. */
int producer_run(const producer_cfg_t *c, producer_result_t *r);

#endif
