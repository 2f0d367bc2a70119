/*
 * --start-servers: a throwaway PostgreSQL + nats-server started by the
 * project's tests/harness/servers.sh with --durable (fsync and synchronous
 * commit on: figures must reflect a real database) in a temp directory.
 * servers_stop() is idempotent and is called on every exit path.
 */
#ifndef BENCH_SERVERS_H
#define BENCH_SERVERS_H

#include <limits.h>
#include <stddef.h>

typedef struct servers {
    char script[PATH_MAX];
    char dir[PATH_MAX]; /* "" until started */
    char db[1024];      /* OUTBOX_TEST_DB */
    char nats[512];     /* OUTBOX_TEST_NATS */
} servers_t;

/* script NULL: the source tree's tests/harness/servers.sh. 0 or -1 (error
 * printed; anything half-started is stopped). */
int servers_start(servers_t *s, const char *script);
void servers_stop(servers_t *s);

#endif
