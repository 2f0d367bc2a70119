/*
 * A supervised relay under test: its own database, subject prefix, JetStream
 * stream, instance name, config file and log; start `outboxd run`, read its
 * stats region and outboxstat, produce a steady stream, check that exactly
 * the committed messages arrived. Shared by the supervisor and delivery
 * tests. Helpers fail the cmocka test on error; every wait is bounded.
 */
#ifndef OUTBOX_TEST_POOL_H
#define OUTBOX_TEST_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <nats/nats.h>

#include "harness.h"
#include "stats.h"

typedef struct pool {
    char db[512];
    char stream[64];
    char prefix[64]; /* subject prefix and instance name */
    char log[256];
    char conf[256];
    pid_t sup;
    natsConnection *nc;
    jsCtx *js;
    /* pool_producer thread */
    pthread_t prod;
    int prod_total, prod_per_tx, prod_pause_ms;
    atomic_int produced;
    atomic_bool prod_stop;
} pool_t;

/* The servers every pool uses (set once, before the first pool_open). */
extern th_env_t *pool_env;

void pool_open(pool_t *c, const char *name);
void pool_close(pool_t *c);
void pool_dump_log(const pool_t *c);
int pool_log_has(const pool_t *c, const char *needle);
/* Config file: db, nats, instance, workers, fast intervals, plus extra
 * ("key = value" lines; a key given there replaces the default). */
void pool_write_conf(const pool_t *c, int workers, const char *extra);
pid_t pool_start(pool_t *c);
int pool_snap(const pool_t *c, outbox_stats_snapshot_t *s);
outbox_stats_snapshot_t *pool_snap_new(void);
int pool_ready_relays(const outbox_stats_snapshot_t *s, int64_t *pids, int max);
int64_t pool_keeper_pid(const outbox_stats_snapshot_t *s);
void pool_wait_ready(pool_t *c, int n, int64_t timeout_ms);
void pool_produce_start(pool_t *c, int total, int per_tx, int pause_ms);
int pool_produce_join(pool_t *c);
uint64_t pool_stream_count(pool_t *c);
void pool_wait_drained(pool_t *c, PGconn *pg, long long want, int64_t timeout_ms);
void pool_assert_exact(pool_t *c, PGconn *pg, long long want);
json_t *pool_outboxstat_json(const pool_t *c);
char *pool_outboxstat_text(const pool_t *c, const char *mode, int want_status);
long long pool_json_total(json_t *j, const char *counter);
int pool_alive(pid_t p);

#endif
