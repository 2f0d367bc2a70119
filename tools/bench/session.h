/*
 * The run's lifetime: its temp directory for outboxd logs, its schema
 * (dropped at close) and its streams. session_close() is safe after a
 * partial open and runs on every exit path, Ctrl-C included.
 */
#ifndef BENCH_SESSION_H
#define BENCH_SESSION_H

#include "bench.h"

/* Fill b for options o and the servers' db/nats; 0 or -1. */
int session_open(bench_t *b, const bench_opts_t *o, const char *db, const char *nats);
/* Drop the schema, remove the workdir unless a log is worth keeping. */
void session_close(bench_t *b, int failed);

#endif
