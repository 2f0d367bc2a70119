/*
 * outboxd as seen by the benchmark: `migrate`, `stream add`, a probe for
 * options an older build lacks, and `run` as a child process (its own
 * instance name and log file) with readiness detection, /proc readings
 * before it stops, and a bounded graceful stop.
 */
#ifndef BENCH_RELAY_H
#define BENCH_RELAY_H

#include <limits.h>
#include <sys/types.h>

#include "bench.h"
#include "proc.h"

typedef struct relay {
    pid_t pid;         /* -1 when not running */
    double exit_cpu_s; /* after relay_stop: CPU of the whole tree (wait4), else -1 */
    int workers;
    char instance[64];
    char log[PATH_MAX];
} relay_t;

/* outboxd migrate --schema b->schema; 0 or -1. */
int relay_migrate(bench_t *b);
/* outboxd stream add NAME SUBJECTS; 0 or -1. */
int relay_stream_add(bench_t *b, const char *name, const char *subjects);

/* `outboxd --version` into out (first line); 0 or -1. */
int relay_version(bench_t *b, char *out, size_t len);

/* 1 if `outboxd config FLAG VALUE` accepts the option, 0 if not (why: its
 * error line), -1 when outboxd cannot be run. */
int relay_supports(bench_t *b, const char *flag, const char *value, char *why, size_t whylen);

/* Start `outboxd run` on the run's schema with --workers, --nats-mode and
 * extra args (NULL-terminated count nextra), then the user's
 * --batch-size/--relay-arg. wait_ready: return once every worker logged
 * that it relays (bounded). 0 or -1 (the log's last line printed). */
int relay_start(bench_t *b, relay_t *r, int workers, int core, const char *const *extra, int nextra,
                int wait_ready);

/* 1 while it runs; 0 (error printed with its log's last line) when it
 * exited. */
int relay_alive(relay_t *r);

/* Read the relay's processes (CPU, peak RSS) while they live. */
int relay_sample(relay_t *r, proc_tree_t *t);

/* SIGTERM and wait for the graceful drain; 0 when it exited 0. */
int relay_stop(bench_t *b, relay_t *r);

#endif
