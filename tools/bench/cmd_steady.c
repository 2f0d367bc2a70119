/*
 * steady: latency from COMMIT sent to NATS receipt at a paced rate, with
 * the relay running. Both instants are CLOCK_MONOTONIC in this process:
 * the producer stamps each message index just before sending COMMIT, the
 * subscriber when the message arrives. A message committed but not
 * received within the grace time is missing (exit 1).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "db.h"
#include "natsub.h"
#include "producer.h"
#include "relay.h"
#include "report.h"
#include "latstats.h"
#include "util.h"

#define MAX_MESSAGES 20000000 /* stamps: 16 bytes each */
#define JITTER_CAP 10.0       /* longest random gap, in mean gaps */

/* Transaction start offsets (us): even spacing, or exponential gaps (a
 * Poisson arrival process) so idle gaps vary. *n gets the count. */
static int64_t *
make_schedule(const bench_opts_t *o, size_t *n)
{
    double gap_s = (double)o->batch / o->rate, t = 0;
    size_t cap = (size_t)ceil(o->seconds / gap_s) + 1, i = 0;
    int64_t *s;

    if (o->jitter)
        cap = cap * 2 + 16; /* random gaps: room for a denser stretch */
    if ((s = malloc(cap * sizeof(*s))) == NULL)
        return NULL;
    srand48((long)getpid() ^ (long)bench_now_us());
    while (i < cap) {
        if (o->jitter) {
            double g = -log(1.0 - drand48()) * gap_s;

            t += g < JITTER_CAP * gap_s ? g : JITTER_CAP * gap_s;
        } else {
            t = (double)i * gap_s;
        }
        if (t >= o->seconds)
            break;
        s[i++] = (int64_t)(t * 1e6);
    }
    *n = i;
    return s;
}

/* A metric row; NaN prints "-" (and null in JSON). */
static void
kv(report_table_t *t, json_t *j, const char *key, const char *label, double v, const char *fmt,
   const char *unit)
{
    char cell[64];

    report_row_begin(t);
    report_cell(t, "%s", label);
    if (isnan(v)) {
        report_cell(t, "-");
    } else {
        snprintf(cell, sizeof(cell), fmt, v);
        report_cell(t, "%s%s", cell, unit);
    }
    if (j != NULL)
        report_json_num(j, key, v);
}

/* The distribution for plots (report --plots): [[percentile, ms], ...]
 * from the sorted latencies; absent when none was received. */
static void
curve_json(const int64_t *sorted, size_t n, json_t *res)
{
    double p[STATS_CURVE_MAX];
    int64_t v[STATS_CURVE_MAX];
    size_t i, np = stats_curve(sorted, n, p, v, STATS_CURVE_MAX);
    json_t *a;

    if (np == 0 || (a = json_array()) == NULL)
        return;
    for (i = 0; i < np; i++)
        json_array_append_new(a, json_pack("[f, f]", p[i], (double)v[i] / 1000));
    json_object_set_new(res, "latency_curve", a);
}

int
cmd_steady(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    static const char *const hdr[] = {"metric", "value"};
    bench_stream_t st;
    producer_cfg_t cfg;
    producer_result_t pr;
    relay_t relay = {.pid = -1};
    proc_tree_t tree;
    natsub_t *sub = NULL;
    PGconn *admin = NULL;
    report_table_t *t = NULL;
    json_t *res = json_object();
    int64_t *sched = NULL, *lat = NULL, t_end, t0;
    _Atomic int64_t *sent = NULL;
    size_t ntx = 0, nmsg, i, nlat = 0;
    long long backlog = -1;
    char *qtable = NULL, title[512];
    double relay_cpu = NAN, wall_s, none;
    lat_summary_t ls;
    uint64_t missing;
    int rc = BENCH_EXIT_FAIL, cpu_ok;

    memset(&st, 0, sizeof(st));
    if ((sched = make_schedule(o, &ntx)) == NULL || ntx == 0) {
        bench_err(ntx == 0 && sched != NULL ? "steady: --rate x --seconds gives no transaction"
                                            : "out of memory for the schedule");
        goto done;
    }
    nmsg = ntx * (size_t)o->batch;
    if (nmsg > MAX_MESSAGES) {
        bench_err("steady: %zu messages is over the %d this tool keeps stamps for", nmsg,
                  MAX_MESSAGES);
        goto done;
    }
    if ((sent = calloc(nmsg, sizeof(*sent))) == NULL ||
        (lat = malloc(nmsg * sizeof(*lat))) == NULL || res == NULL) {
        bench_err("out of memory for %zu messages", nmsg);
        goto done;
    }
    if (bench_schema_ready(b) != 0)
        goto done;
    if (o->nats_core)
        bench_stream_names(b, "steady", &st);
    else if (bench_stream_create(b, "steady", &st) != 0)
        goto done;
    if ((admin = db_connect(b->db, "steady admin")) == NULL ||
        (qtable = db_qtable(admin, b->schema)) == NULL)
        goto done;
    if (db_empty(admin, qtable) != 0 || db_checkpoint(admin) != 0)
        goto done;
    if (natsub_open(&sub, b->nats, st.subjects, nmsg) != 0)
        goto done;
    if (relay_start(b, &relay, (int)o->workers[0], o->nats_core, NULL, 0, 1) != 0)
        goto done;

    memset(&cfg, 0, sizeof(cfg));
    cfg.conninfo = b->db;
    cfg.schema = b->schema;
    cfg.topic = st.topic;
    cfg.api = o->api;
    cfg.connections = (int)o->connections[0];
    cfg.batch = o->batch;
    cfg.body_size = o->body_size;
    cfg.headers = o->headers;
    cfg.schedule = sched;
    cfg.ntx = ntx;
    cfg.sent_us = sent;
    bench_info("steady: %.1f msg/s for %.1f s (%zu messages), %d connections, relay %ld worker(s)",
               o->rate, o->seconds, nmsg, cfg.connections, o->workers[0]);
    t0 = bench_now_us();
    if (producer_run(&cfg, &pr) != 0)
        goto done;
    /* Stragglers: wait up to the grace time for every committed message. */
    t_end = bench_now_us() + (int64_t)(o->grace * 1e6);
    while (natsub_unique(sub) < pr.msgs && bench_now_us() < t_end && !bench_stopping()) {
        if (!relay_alive(&relay))
            goto done;
        bench_sleep_us(10000);
    }
    if (bench_stopping()) {
        bench_err("interrupted");
        goto done;
    }
    wall_s = (double)(bench_now_us() - t0) / 1e6;
    cpu_ok = relay_sample(&relay, &tree) == 0;
    if (cpu_ok)
        relay_cpu = tree.cpu_s;
    if (db_pending(admin, qtable, &backlog) != 0)
        goto done;
    for (i = 0; i < nmsg; i++) {
        int64_t s = atomic_load(&sent[i]), r = natsub_recv_us(sub, i);

        if (s != 0 && r != 0)
            lat[nlat++] = r - s;
    }
    missing = pr.msgs - nlat;
    stats_summarize(lat, nlat, &ls);
    none = nlat == 0 ? NAN : 0; /* no latency without a message */

    snprintf(title, sizeof(title),
             "steady: %.1f msg/s%s, %ld msg/transaction, %ld connections, %.1f s, body %ld B, "
             "relay %ld worker(s) (%s)",
             o->rate, o->jitter ? " (Poisson spacing)" : "", o->batch, o->connections[0],
             o->seconds, o->body_size, o->workers[0], o->nats_core ? "core" : "jetstream");
    if ((t = report_table_new(title, 2, hdr, "lr")) == NULL)
        goto done;
    kv(t, res, "sent", "messages committed", (double)pr.msgs, "%.0f", "");
    kv(t, res, "received", "messages received", (double)nlat, "%.0f", "");
    kv(t, res, "missing", "missing", (double)missing, "%.0f", "");
    kv(t, res, "duplicates", "duplicates", (double)natsub_duplicates(sub), "%.0f", "");
    kv(t, res, "achieved_rate", "achieved rate", (double)pr.msgs / pr.elapsed_s, "%.1f", " msg/s");
    kv(t, res, "p50_ms", "latency p50", none + (double)ls.p50 / 1000, "%.3f", " ms");
    kv(t, res, "p90_ms", "latency p90", none + (double)ls.p90 / 1000, "%.3f", " ms");
    kv(t, res, "p99_ms", "latency p99", none + (double)ls.p99 / 1000, "%.3f", " ms");
    kv(t, res, "p999_ms", "latency p99.9", none + (double)ls.p999 / 1000, "%.3f", " ms");
    kv(t, res, "max_ms", "latency max", none + (double)ls.max / 1000, "%.3f", " ms");
    kv(t, res, "mean_ms", "latency mean", none + ls.mean / 1000, "%.3f", " ms");
    kv(t, res, "backlog", "backlog at end (pending rows)", (double)backlog, "%.0f", "");
    kv(t, res, "producer_max_lag_ms", "producer max start lag", (double)pr.max_lag_us / 1000,
       "%.3f", " ms");
    if (cpu_ok) {
        kv(t, NULL, NULL, "relay CPU (all processes)", relay_cpu, "%.2f", " s");
        report_json_num(res, "relay_cpu_s", relay_cpu);
        report_json_num(res, "relay_cpu_pct_of_core", relay_cpu / wall_s * 100);
        report_note(t, "relay CPU: %.1f%% of one core over %.1f s", relay_cpu / wall_s * 100,
                    wall_s);
    }
    if (pr.late > 0)
        report_note(t,
                    "%llu transactions started over 1 ms late: the producers could not hold "
                    "the rate exactly",
                    (unsigned long long)pr.late);
    if (natsub_foreign(sub) > 0)
        report_note(t, "%llu messages without a valid index were ignored",
                    (unsigned long long)natsub_foreign(sub));
    report_note(t,
                "latency = receive - COMMIT sent, same process, CLOCK_MONOTONIC; "
                "grace %.1f s after the last commit",
                o->grace);
    report_table_print(t, stdout);
    curve_json(lat, nlat, res); /* lat is sorted (stats_summarize) */
    json_object_set_new(doc, "results", res);
    res = NULL;
    if (missing > 0) {
        bench_err("steady: %llu of %llu committed messages missing after %.1f s grace",
                  (unsigned long long)missing, (unsigned long long)pr.msgs, o->grace);
        goto done;
    }
    rc = BENCH_EXIT_OK;
done:
    if (relay_stop(b, &relay) != 0)
        rc = BENCH_EXIT_FAIL;
    natsub_close(sub);
    bench_stream_drop(b, &st);
    report_table_free(t);
    json_decref(res);
    free(qtable);
    PQfinish(admin);
    free(sched);
    free(sent);
    free(lat);
    return rc;
}
