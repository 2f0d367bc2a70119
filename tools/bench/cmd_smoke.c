/*
 * --smoke: every sub-command in a few seconds with tiny sizes, for CI.
 * Sane means: each command succeeded (steady, drain and raw already fail
 * when a message is missing) and every producer measurement committed
 * something.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "report.h"
#include "util.h"

static int
producer_sane(json_t *part)
{
    json_t *rows = json_object_get(part, "results"), *row;
    size_t i;
    int measured = 0;

    json_array_foreach(rows, i, row)
    {
        if (json_object_get(row, "skipped") != NULL)
            continue;
        if (json_integer_value(json_object_get(row, "commits")) <= 0) {
            bench_err("smoke: producer %s with %d connections committed nothing",
                      json_string_value(json_object_get(row, "variant")),
                      (int)json_integer_value(json_object_get(row, "connections")));
            return 0;
        }
        measured++;
    }
    if (measured == 0)
        bench_err("smoke: producer measured nothing");
    return measured > 0;
}

int
cmd_smoke(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    bench_opts_t p = *o, s = *o, d = *o, r = *o, c;
    const bench_opts_t *runs[] = {&p, &s, &d, &r, &c};
    int (*const fns[])(bench_t *, const bench_opts_t *,
                       json_t *) = {cmd_producer, cmd_steady, cmd_drain, cmd_raw, cmd_claimcost};
    json_t *parts = json_object(), *part;
    int64_t t0 = bench_now_us();
    int rc = BENCH_EXIT_OK;
    size_t i;

    p.cmd = BENCH_PRODUCER;
    p.connections[0] = 2;
    p.nconnections = 1;
    p.seconds = 0.5;
    p.api = BENCH_API_BOTH;
    p.batch = 1;
    p.body_size = 64;
    p.headers = 1;

    s.cmd = BENCH_STEADY;
    s.connections[0] = 2;
    s.nconnections = 1;
    s.rate = 100;
    s.seconds = 1.5;
    s.jitter = 1;
    s.grace = 10;
    s.workers[0] = 1;
    s.nworkers = 1;
    s.api = BENCH_API_C;
    s.batch = 2;
    s.body_size = 64;
    s.headers = 1;

    d.cmd = BENCH_DRAIN;
    d.messages = 1000;
    d.workers[0] = 1;
    d.workers[1] = 2;
    d.nworkers = 2;
    d.timeout = 60;
    d.body_size = 64;
    d.headers = 1;

    r.cmd = BENCH_RAW;
    r.messages = 1000;
    r.relay_batch = 200;
    r.body_size = 64;
    r.headers = 1;

    bench_options_for(o, BENCH_CLAIMCOST, &c);
    c.delivered[0] = 1000;
    c.delivered[1] = 5000;
    c.ndelivered = 2;
    c.relay_batch = 100;
    c.rounds = 5;

    for (i = 0; i < sizeof(runs) / sizeof(runs[0]) && rc == BENCH_EXIT_OK; i++) {
        const char *name = bench_cmd_name(runs[i]->cmd);

        part = json_object();
        b->o = runs[i];
        bench_info("smoke: %s", name);
        if (fns[i](b, runs[i], part) != BENCH_EXIT_OK) {
            bench_err("smoke: %s failed", name);
            rc = BENCH_EXIT_FAIL;
        } else if (runs[i]->cmd == BENCH_PRODUCER && !producer_sane(part)) {
            rc = BENCH_EXIT_FAIL;
        }
        json_object_set_new(part, "ok", json_boolean(rc == BENCH_EXIT_OK));
        json_object_set_new(parts, name, part);
    }
    b->o = o;
    json_object_set_new(doc, "parts", parts);
    if (rc == BENCH_EXIT_OK)
        printf("\nsmoke: every command produced sane figures in %.1f s\n",
               (double)(bench_now_us() - t0) / 1e6);
    return rc;
}
