/*
 * The supervisor: holds the instance lock and the stats region, forks and
 * execs the worker processes (N relays and one keeper), reaps and respawns
 * them, and turns signals into graceful stops, reloads, rolling restarts
 * and pool resizes. It never opens a PostgreSQL or NATS connection.
 */
#ifndef OUTBOX_SUPERVISOR_H
#define OUTBOX_SUPERVISOR_H

#include "config.h"

/* Re-read the configuration (SIGHUP). OUTBOX_OK with *out filled, or an
 * error with the reason in err; the running configuration is then kept. */
typedef int (*outbox_reload_fn)(outbox_config_t *out, char *err, size_t errlen, void *arg);

typedef struct outbox_supervisor_spec {
    const char *exe;            /* the outboxd binary to exec for each worker */
    const outbox_config_t *cfg; /* validated; copied */
    const char *instance;       /* resolved instance name */
    const char *machine_id;     /* resolved lock id prefix */
    outbox_reload_fn reload;    /* NULL: SIGHUP restarts with the same configuration */
    void *reload_arg;
} outbox_supervisor_spec_t;

/* Runs until stopped. Returns the process exit code: 0 after a graceful
 * stop, 1 on a runtime failure or an immediate stop, 2 if the instance is
 * already running or its region cannot be made. */
int outbox_supervisor_run(const outbox_supervisor_spec_t *spec);

#endif
