/*
 * outboxbench's command line: one table of options, each valid for a set of
 * sub-commands, so a misplaced option is a usage error naming it (exit 2)
 * rather than silently ignored. Defaults depend on the sub-command and are
 * filled in by bench_options_parse().
 */
#ifndef BENCH_OPTIONS_H
#define BENCH_OPTIONS_H

#include <stdio.h>

#define BENCH_LIST_MAX 16
#define BENCH_REPEAT_MAX 20
#define BENCH_RELAY_ARGS_MAX 64       /* argv tokens passed through to outboxd run */
#define BENCH_DELIVERED_MAX 100000000 /* claimcost: ~120 GB of disk */

typedef enum bench_cmd {
    BENCH_PRODUCER = 1,
    BENCH_STEADY = 2,
    BENCH_DRAIN = 4,
    BENCH_RAW = 8,
    BENCH_SMOKE = 16,
    BENCH_CLAIMCOST = 32,
    BENCH_REPORT = 64
} bench_cmd_t;

typedef enum bench_api { BENCH_API_SQL = 1, BENCH_API_C = 2, BENCH_API_BOTH = 3 } bench_api_t;

typedef struct bench_opts {
    bench_cmd_t cmd;
    /* where */
    const char *db, *nats, *outboxd, *servers_script, *json_file;
    int start_servers, quiet;
    /* load */
    long connections[BENCH_LIST_MAX];
    int nconnections;
    long batch; /* messages per producer transaction */
    double seconds;
    long repeat; /* producer: rounds over all variants, median reported */
    long body_size, headers;
    bench_api_t api;
    double rate; /* steady: messages per second, all producers together */
    int jitter;
    double grace;
    /* relay */
    long workers[BENCH_LIST_MAX];
    int nworkers;
    const char *relay_args[BENCH_RELAY_ARGS_MAX];
    int nrelay_args;
    int nats_core;
    long relay_batch; /* --batch-size: raw's claim size; passed to outboxd for steady/drain */
    int relay_batch_set;
    int delete_delivered; /* --delete-delivered: relay --retention 0, raw deletes */
    /* drain / raw */
    long messages;
    double timeout;
    /* claimcost: delivered-row counts, ascending (the table grows) */
    long delivered[BENCH_LIST_MAX];
    int ndelivered;
    long rounds;
    /* report */
    int quick, no_claimcost;
    const char *plots_dir;
} bench_opts_t;

/* Parse argv into o. Returns 0, 1 after --help (printed; exit 0), or -1 on
 * a usage error (printed; exit 2). Strings point into argv. */
int bench_options_parse(int argc, char **argv, bench_opts_t *o);

/* The options of sub-command cmd run inside another one (smoke, report):
 * cmd's defaults, with the where-options (servers, outboxd, quiet) of
 * outer. */
void bench_options_for(const bench_opts_t *outer, bench_cmd_t cmd, bench_opts_t *out);

const char *bench_cmd_name(bench_cmd_t c);
void bench_usage(FILE *out);

#endif
