/*
 * One outboxbench run: where the servers are, the outboxd binary, and the
 * run's own names (schema bench_<pid>, stream and subject prefixes, temp
 * directory for outboxd logs). Sub-commands borrow it; main owns it and
 * cleans everything up on every exit path.
 */
#ifndef BENCH_BENCH_H
#define BENCH_BENCH_H

#include <limits.h>

#include <jansson.h>

#include "options.h"

typedef struct bench {
    const bench_opts_t *o;
    const char *db;   /* conninfo */
    const char *nats; /* url */
    char outboxd[PATH_MAX];
    char schema[64];        /* bench_<pid> */
    char tag[32];           /* <pid>: stream names and subjects */
    char workdir[PATH_MAX]; /* outboxd logs; kept when a run failed */
    int failed_keep;        /* keep workdir: a log is worth reading */
    int seq;                /* counter for unique instance and stream names */
    int migrated;
} bench_t;

/* Sub-commands: print their table on stdout, put their results into doc
 * (a JSON object owned by the caller), return BENCH_EXIT_OK/FAIL. */
int cmd_producer(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_steady(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_drain(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_raw(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_smoke(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_claimcost(bench_t *b, const bench_opts_t *o, json_t *doc);
int cmd_report(bench_t *b, const bench_opts_t *o, json_t *doc);

/* Rows claimcost's table reaches with options o (its disk space check). */
long long claimcost_rows(const bench_opts_t *o);

/* Migrate the run's schema once (outboxd migrate); 0 or -1. */
int bench_schema_ready(bench_t *b);

/* A fresh stream for this run: name BENCH_<pid>_<label>, subjects
 * bench.<pid>.<label>.>, topic bench.<pid>.<label>.msg. */
typedef struct bench_stream {
    char name[64], subjects[96], topic[96];
    int created; /* drop deletes only what was created */
} bench_stream_t;
/* Names only: core-mode runs must not have a stream capture (and store)
 * the relay's messages. */
void bench_stream_names(bench_t *b, const char *label, bench_stream_t *out);
int bench_stream_create(bench_t *b, const char *label, bench_stream_t *out);
void bench_stream_drop(bench_t *b, bench_stream_t *s);

#endif
