/*
 * report: every figure of the performance targets in one invocation against
 * the same servers: the other commands run one after another, each with
 * options copied and adjusted as --smoke does, each result kept under
 * "parts" in the JSON; then a throughput table, a summary of the targets
 * and, with --plots, gnuplot files. A part that fails is recorded and the
 * rest still run (a 20-minute run is not thrown away for one figure); the
 * exit code is then 1. Missing a target is a result, not a failure.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "db.h"
#include "plots.h"
#include "report.h"
#include "space.h"
#include "targets.h"
#include "util.h"

/* Message counts: each drain moves 50-200 MB (3000 x 64 KiB is 197 MB) and
 * lasts seconds at the target rates. --quick: a tenth of the messages, 3 s
 * steady runs, one round of 1 s producer measurements. */
typedef struct sizes {
    long raw, drain_256, drain_4k, drain_64k, rss_4k, backlog;
    double steady_s, producer_s;
    long producer_repeat;
} sizes_t;

static const sizes_t sizes_full = {200000, 200000, 50000, 3000, 50000, 500000, 15, 5, 3};
static const sizes_t sizes_quick = {20000, 20000, 5000, 300, 5000, 50000, 3, 1, 1};

enum {
    P_RAW,
    P_JS_256,
    P_JS_4K,
    P_JS_64K,
    P_JS_256_DD,
    P_RAW_DD,
    P_CORE_256,
    P_STEADY_1K,
    P_STEADY_10K_2,
    P_STEADY_10K_8,
    P_RSS_4K,
    P_BACKLOG,
    P_PRODUCER,
    P_CLAIMCOST, /* last: loading 10M rows leaves the disk busy for a while */
    P_COUNT
};

typedef struct part {
    const char *key;   /* under "parts" in the JSON; plot data file name */
    const char *label; /* progress line, legend */
    bench_opts_t o;
} part_t;

static int
run_part(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    switch (o->cmd) {
    case BENCH_PRODUCER: return cmd_producer(b, o, doc);
    case BENCH_STEADY: return cmd_steady(b, o, doc);
    case BENCH_DRAIN: return cmd_drain(b, o, doc);
    case BENCH_RAW: return cmd_raw(b, o, doc);
    case BENCH_CLAIMCOST: return cmd_claimcost(b, o, doc);
    case BENCH_SMOKE:
    case BENCH_REPORT: break;
    }
    return BENCH_EXIT_USAGE;
}

static void
set_workers_124(bench_opts_t *o)
{
    o->workers[0] = 1;
    o->workers[1] = 2;
    o->workers[2] = 4;
    o->nworkers = 3;
}

static void
drain(part_t *p, const bench_opts_t *o, const char *key, const char *label, long msgs, long body)
{
    p->key = key;
    p->label = label;
    bench_options_for(o, BENCH_DRAIN, &p->o);
    p->o.messages = msgs;
    p->o.body_size = body;
    set_workers_124(&p->o);
}

static void
steady(part_t *p, const bench_opts_t *o, const sizes_t *z, const char *key, const char *label,
       double rate, long conns, long batch)
{
    p->key = key;
    p->label = label;
    bench_options_for(o, BENCH_STEADY, &p->o);
    p->o.rate = rate;
    p->o.connections[0] = conns;
    p->o.nconnections = 1;
    p->o.batch = batch;
    p->o.seconds = z->steady_s;
}

static void
build_parts(const bench_opts_t *o, const sizes_t *z, part_t *p)
{
    p[P_RAW].key = "raw_256";
    p[P_RAW].label = "raw 256 B";
    bench_options_for(o, BENCH_RAW, &p[P_RAW].o);
    p[P_RAW].o.messages = z->raw;

    drain(&p[P_JS_256], o, "drain_js_256", "JetStream 256 B", z->drain_256, 256);
    drain(&p[P_JS_4K], o, "drain_js_4k", "JetStream 4 KiB", z->drain_4k, 4096);
    drain(&p[P_JS_64K], o, "drain_js_64k", "JetStream 64 KiB", z->drain_64k, 65536);
    drain(&p[P_JS_256_DD], o, "drain_js_256_dd", "JetStream 256 B delete-delivered", z->drain_256,
          256);
    p[P_JS_256_DD].o.delete_delivered = 1;

    p[P_RAW_DD] = p[P_RAW];
    p[P_RAW_DD].key = "raw_256_dd";
    p[P_RAW_DD].label = "raw 256 B delete-delivered";
    p[P_RAW_DD].o.delete_delivered = 1;

    drain(&p[P_CORE_256], o, "drain_core_256", "core NATS 256 B", z->drain_256, 256);
    p[P_CORE_256].o.nats_core = 1;

    steady(&p[P_STEADY_1K], o, z, "steady_1000", "steady 1000 msg/s, 4 conns x 1", 1000, 4, 1);
    steady(&p[P_STEADY_10K_2], o, z, "steady_10000_2x50", "steady 10000 msg/s, 2 conns x 50", 10000,
           2, 50);
    steady(&p[P_STEADY_10K_8], o, z, "steady_10000_8x10", "steady 10000 msg/s, 8 conns x 10", 10000,
           8, 10);

    drain(&p[P_RSS_4K], o, "drain_rss_4k_batch1000", "JetStream 4 KiB, batch 1000", z->rss_4k,
          4096);
    p[P_RSS_4K].o.relay_batch = 1000;
    p[P_RSS_4K].o.relay_batch_set = 1;
    p[P_RSS_4K].o.nworkers = 1;
    drain(&p[P_BACKLOG], o, "drain_backlog_256", "JetStream 256 B, large backlog", z->backlog, 256);
    p[P_BACKLOG].o.nworkers = 1;

    p[P_PRODUCER].key = "producer";
    p[P_PRODUCER].label = "producer";
    bench_options_for(o, BENCH_PRODUCER, &p[P_PRODUCER].o); /* connections 1,8,32 */
    p[P_PRODUCER].o.seconds = z->producer_s;
    p[P_PRODUCER].o.repeat = z->producer_repeat;

    p[P_CLAIMCOST].key = "claimcost";
    p[P_CLAIMCOST].label = "claimcost";
    bench_options_for(o, BENCH_CLAIMCOST, &p[P_CLAIMCOST].o);
    memcpy(p[P_CLAIMCOST].o.delivered, o->delivered, sizeof(o->delivered));
    p[P_CLAIMCOST].o.ndelivered = o->ndelivered;
}

/* Fail in the first second, not after 20 minutes: the JSON file and the
 * plot directory must be writable, claimcost's disk space there. */
static int
preflight(bench_t *b, const bench_opts_t *o, const part_t *p)
{
    PGconn *c;
    FILE *f;
    int existed, rc;

    if (o->json_file != NULL) {
        existed = access(o->json_file, F_OK) == 0;
        if ((f = fopen(o->json_file, "a")) == NULL)
            return -1; /* main's attempt to write it names the reason */
        fclose(f);
        if (!existed)
            unlink(o->json_file);
    }
    if (o->plots_dir != NULL && plots_prepare(o->plots_dir) != 0)
        return -1;
    if (o->no_claimcost)
        return 0;
    if ((c = db_connect(b->db, "report")) == NULL)
        return -1;
    rc = space_check(c, claimcost_rows(&p[P_CLAIMCOST].o), "report: claimcost");
    PQfinish(c);
    if (rc != 0)
        bench_err("report: give --no-claimcost to run the rest without it");
    return rc;
}

static void
add_target(json_t *arr, report_table_t *t, const bench_opts_t *o, target_t *g, int *missed)
{
    char value[160], limit[64];
    int met = target_met(g);
    json_t *j = json_pack("{s:s, s:s}", "name", g->name, "unit", g->unit);

    g->quick = o->quick; /* the table says n/a; the JSON keeps "met" */
    target_value_text(g, value, sizeof(value));
    target_limit_text(g, limit, sizeof(limit));
    report_row_begin(t);
    report_cell(t, "%s", g->name);
    report_cell(t, "%s", value);
    report_cell(t, "%s", limit);
    report_cell(t, "%s", target_verdict(g));
    report_json_num(j, "value", isinf(g->value) ? NAN : g->value);
    if (g->detail[0])
        json_object_set_new(j, "detail", json_string(g->detail));
    if (g->op != TARGET_INFO) {
        json_object_set_new(j, "target", json_string(limit));
        json_object_set_new(j, "op",
                            json_string(g->op == TARGET_GE   ? ">="
                                        : g->op == TARGET_LT ? "<"
                                                             : "<="));
        report_json_num(j, "limit", g->limit);
        json_object_set_new(j, "met", met < 0 ? json_null() : json_boolean(met));
        *missed += met != 1;
    }
    json_array_append_new(arr, j);
}

static target_t
tgt(const char *name, double v, target_op_t op, double limit, const char *unit)
{
    target_t g;

    memset(&g, 0, sizeof(g));
    snprintf(g.name, sizeof(g.name), "%s", name);
    snprintf(g.unit, sizeof(g.unit), "%s", unit);
    g.value = v;
    g.op = op;
    g.limit = limit;
    return g;
}

/* drain / raw in percent, the two figures as detail. */
static target_t
ratio_tgt(const char *name, double drain, double raw)
{
    target_t g = tgt(name, fig_ratio(drain, raw) * 100, TARGET_GE, 90, "%");

    if (!isnan(g.value))
        snprintf(g.detail, sizeof(g.detail), "%.0f / %.0f msgs/s", drain, raw);
    return g;
}

/* A steady percentile; a run that lost messages misses its target
 * whatever the latency of those that arrived. */
static target_t
steady_tgt(const char *name, const json_t *part, const char *key, double limit)
{
    const json_t *res = json_object_get(part, "results");
    double missing = json_number_value(json_object_get(res, "missing"));
    target_t g = tgt(name, fig_result(part, key), TARGET_LT, limit, "ms");

    if (missing > 0) {
        g.value = INFINITY;
        snprintf(g.detail, sizeof(g.detail), "%.0f messages missing", missing);
    }
    return g;
}

static void
summary(const bench_opts_t *o, const part_t *p, json_t *parts, json_t *doc)
{
    static const char *const hdr[] = {"figure", "measured", "target", "met"};
    const json_t *pj[P_COUNT];
    report_table_t *t = report_table_new("report: targets", 4, hdr, "llll");
    json_t *arr = json_array(), *sum = json_object();
    target_t g;
    double best, raw, v, ref;
    char name[96];
    int w = 0, i, missed = 0;

    for (i = 0; i < P_COUNT; i++)
        pj[i] = json_object_get(parts, p[i].key);

    best = fig_drain_best(pj[P_JS_256], &w);
    g = tgt("drain JetStream 256 B, best of 1/2/4 workers", best, TARGET_GE, 50000, "msgs/s");
    if (!isnan(best))
        snprintf(g.detail, sizeof(g.detail), "%d worker%s", w, w == 1 ? "" : "s");
    add_target(arr, t, o, &g, &missed);
    raw = fig_raw_step(pj[P_RAW], "claim + publish + mark");
    g = ratio_tgt("drain 256 B best / raw claim + publish + mark", best, raw);
    add_target(arr, t, o, &g, &missed);
    g = ratio_tgt("drain delete-delivered best / raw delete-delivered",
                  fig_drain_best(pj[P_JS_256_DD], NULL),
                  fig_raw_step(pj[P_RAW_DD], "claim + publish + mark"));
    add_target(arr, t, o, &g, &missed);

    g = steady_tgt("steady 1000 msg/s (4 conns x 1): p50", pj[P_STEADY_1K], "p50_ms", 3);
    add_target(arr, t, o, &g, &missed);
    g = steady_tgt("steady 1000 msg/s (4 conns x 1): p99", pj[P_STEADY_1K], "p99_ms", 10);
    add_target(arr, t, o, &g, &missed);
    g = steady_tgt("steady 10000 msg/s (2 conns x 50): p99", pj[P_STEADY_10K_2], "p99_ms", 50);
    add_target(arr, t, o, &g, &missed);
    g = steady_tgt("steady 10000 msg/s (8 conns x 10): p99", pj[P_STEADY_10K_8], "p99_ms", 50);
    add_target(arr, t, o, &g, &missed);

    g = tgt("worker peak RSS, batch 1000 x 4 KiB", fig_drain_rss(pj[P_RSS_4K], 0), TARGET_LT, 16,
            "MiB");
    add_target(arr, t, o, &g, &missed);

    /* the sizes claimcost ran with (--quick: smaller), none when skipped */
    if (o->no_claimcost)
        snprintf(name, sizeof(name), "claim p50 vs delivered rows (--no-claimcost)");
    else
        snprintf(name, sizeof(name), "claim p50, %ld / %ld delivered rows",
                 p[P_CLAIMCOST].o.delivered[p[P_CLAIMCOST].o.ndelivered - 1],
                 p[P_CLAIMCOST].o.delivered[0]);
    g = tgt(name, fig_top(pj[P_CLAIMCOST], "claim_p50_ratio"), TARGET_LE, 2, "x");
    add_target(arr, t, o, &g, &missed);

    /* Figures shown next to the targets, held to none. */
    v = fig_drain_rss(pj[P_BACKLOG], 1);
    ref = fig_drain_rss(pj[P_JS_256], 1);
    snprintf(name, sizeof(name), "worker peak RSS, %ld x 256 B backlog", p[P_BACKLOG].o.messages);
    g = tgt(name, v, TARGET_INFO, 0, "MiB");
    if (!isnan(ref))
        snprintf(g.detail, sizeof(g.detail), "%.1f MiB at %ld", ref, p[P_JS_256].o.messages);
    add_target(arr, t, o, &g, &missed);
    g = tgt("raw claim + publish + mark, 256 B, 1 thread", raw, TARGET_INFO, 0, "msgs/s");
    add_target(arr, t, o, &g, &missed);
    g = tgt("drain core NATS 256 B, best", fig_drain_best(pj[P_CORE_256], NULL), TARGET_INFO, 0,
            "msgs/s");
    add_target(arr, t, o, &g, &missed);

    report_note(t, "drain msgs/s: from `outboxd run` start to the last mark (startup included)");
    if (o->quick)
        report_note(t, "--quick: sizes too small for these figures to mean much, so they are "
                       "not held to the targets (met: n/a); it checks the command");
    report_table_print(t, stdout);
    json_object_set_new(sum, "targets", arr);
    json_object_set_new(sum, "all_met", json_boolean(missed == 0));
    json_object_set_new(doc, "summary", sum);
    report_table_free(t);
}

/* Drain msgs/s by series and worker count, in one table. */
static void
throughput_table(const part_t *p, json_t *parts)
{
    static const int rows[] = {P_JS_256, P_JS_4K, P_JS_64K, P_JS_256_DD, P_CORE_256};
    static const char *const hdr[] = {"drain",     "messages",  "1 worker",
                                      "2 workers", "4 workers", "best MB/s"};
    report_table_t *t = report_table_new("report: drain msgs/s by relay workers", 6, hdr, NULL);
    const json_t *pj;
    double best;
    size_t i;
    int w;

    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        pj = json_object_get(parts, p[rows[i]].key);
        best = fig_drain_best(pj, NULL);
        report_row_begin(t);
        report_cell(t, "%s", p[rows[i]].label);
        report_cell(t, "%ld", p[rows[i]].o.messages);
        for (w = 1; w <= 4; w *= 2) {
            double v = fig_drain_at(pj, w);

            if (isnan(v))
                report_cell(t, "-");
            else
                report_cell(t, "%.0f", v);
        }
        if (isnan(best))
            report_cell(t, "-");
        else
            report_cell(t, "%.1f", best * (double)p[rows[i]].o.body_size / 1e6);
    }
    report_note(t,
                "raw claim + publish + mark (one thread, no relay): %.0f msgs/s, "
                "delete-delivered %.0f",
                fig_raw_step(json_object_get(parts, p[P_RAW].key), "claim + publish + mark"),
                fig_raw_step(json_object_get(parts, p[P_RAW_DD].key), "claim + publish + mark"));
    report_table_print(t, stdout);
    report_table_free(t);
}

static int
plots(const bench_opts_t *o, const part_t *p, json_t *parts)
{
    static const int thr[] = {P_JS_256, P_JS_4K, P_JS_64K, P_JS_256_DD, P_CORE_256};
    static const int lat[] = {P_STEADY_1K, P_STEADY_10K_2, P_STEADY_10K_8};
    plot_series_t ts[5], ls[3];
    size_t i;

    for (i = 0; i < 5; i++)
        ts[i] =
            (plot_series_t){p[thr[i]].key, p[thr[i]].label, json_object_get(parts, p[thr[i]].key)};
    for (i = 0; i < 3; i++)
        ls[i] =
            (plot_series_t){p[lat[i]].key, p[lat[i]].label, json_object_get(parts, p[lat[i]].key)};
    return plots_write(o->plots_dir, ts, 5,
                       fig_raw_step(json_object_get(parts, p[P_RAW].key), "claim + publish + mark"),
                       "raw claim + publish + mark, 256 B", ls, 3);
}

int
cmd_report(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    part_t p[P_COUNT];
    json_t *parts = json_object(), *failed = json_array(), *part;
    int64_t t0 = bench_now_us(), t1;
    int i, nrun = 0, rc;

    memset(p, 0, sizeof(p));
    build_parts(o, o->quick ? &sizes_quick : &sizes_full, p);
    if (preflight(b, o, p) != 0) {
        json_decref(parts);
        json_decref(failed);
        return BENCH_EXIT_FAIL;
    }
    for (i = 0; i < P_COUNT && !bench_stopping(); i++) {
        if (i == P_CLAIMCOST && o->no_claimcost)
            continue;
        bench_info("report: part %d/%d: %s (%s)", i + 1, P_COUNT - o->no_claimcost, p[i].key,
                   p[i].label);
        part = json_object();
        json_object_set_new(part, "command", json_string(bench_cmd_name(p[i].o.cmd)));
        json_object_set_new(part, "params", report_params_json(&p[i].o));
        b->o = &p[i].o;
        t1 = bench_now_us();
        rc = run_part(b, &p[i].o, part);
        b->o = o;
        json_object_set_new(part, "ok", json_boolean(rc == BENCH_EXIT_OK));
        report_json_num(part, "elapsed_s", (double)(bench_now_us() - t1) / 1e6);
        json_object_set_new(parts, p[i].key, part);
        nrun++;
        if (rc != BENCH_EXIT_OK) {
            bench_err("report: %s failed%s", p[i].key,
                      bench_stopping() ? "" : "; going on with the other parts");
            json_array_append_new(failed, json_string(p[i].key));
        }
    }
    json_object_set_new(doc, "parts", parts);
    throughput_table(p, parts);
    summary(o, p, parts, doc);
    json_object_set_new(doc, "failed_parts", failed);
    rc = json_array_size(failed) == 0 && !bench_stopping() ? BENCH_EXIT_OK : BENCH_EXIT_FAIL;
    if (o->plots_dir != NULL && !bench_stopping() && plots(o, p, parts) != 0)
        rc = BENCH_EXIT_FAIL;
    printf("\nreport: %d parts in %.1f min%s\n", nrun, (double)(bench_now_us() - t0) / 60e6,
           json_array_size(failed) > 0 ? "; some failed (see failed_parts)" : "");
    return rc;
}
