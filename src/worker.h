/*
 * One worker process: a relay (claims, publishes, marks) or the keeper (lock
 * check, retention, and the locks of workers the supervisor reaped). Owns
 * its Store, Broker and Dispatcher, made here after the fork and re-made
 * with capped backoff while a server is away; writes only its own stats
 * slot, and its heartbeat only from this main loop.
 */
#ifndef OUTBOX_WORKER_H
#define OUTBOX_WORKER_H

#include <sys/types.h>

#include "config.h"
#include "stats.h"

typedef struct outbox_worker_spec {
    const outbox_config_t *cfg; /* borrowed */
    const char *lock_id;
    int role;                  /* OUTBOX_ROLE_RELAY or OUTBOX_ROLE_KEEPER */
    outbox_stats_slot_t *slot; /* own stats slot; NULL: none */
    pid_t parent;              /* stop when the parent is no longer this; 0: don't watch */
    int release_fd;            /* keeper: "<seq> <lock id>\n" requests; -1: none */
} outbox_worker_spec_t;

/* Runs until SIGTERM/SIGINT or the parent's death. Returns the process exit
 * code: 0 clean stop, 1 runtime failure, 2 fatal configuration. */
int outbox_worker_run(const outbox_worker_spec_t *spec);

#endif
