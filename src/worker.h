/*
 * One relay worker: owns one Store, one Broker and one Dispatcher, and runs
 * the dispatcher's jobs until told to stop. Connections are made here, after
 * any fork, and re-made with capped backoff while a server is away.
 */
#ifndef OUTBOX_WORKER_H
#define OUTBOX_WORKER_H

#include "config.h"

/* Re-read the configuration (SIGHUP). OUTBOX_OK with *out filled, or an
 * error with the reason in err; the worker then keeps its configuration. */
typedef int (*outbox_reload_fn)(outbox_config_t *out, char *err, size_t errlen, void *arg);

typedef struct outbox_worker_spec {
    const outbox_config_t *cfg; /* borrowed; copied on reload */
    const char *lock_id;
    outbox_reload_fn reload;    /* NULL: SIGHUP only reopens logs */
    void *reload_arg;
} outbox_worker_spec_t;

/* Runs until SIGTERM/SIGINT. Returns the process exit code: 0 clean stop,
 * 1 runtime failure, 2 fatal configuration. */
int outbox_worker_run(const outbox_worker_spec_t *spec);

#endif
