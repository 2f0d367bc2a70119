/*
 * drain: relay throughput on a preloaded table. For each worker count: an
 * empty table, M messages preloaded, an empty stream, then `outboxd run`
 * and the clock runs until the stream holds M messages (core mode: a
 * subscription received M distinct ones) and no row is pending. CPU time
 * and peak RSS are read from /proc while the relay still runs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "db.h"
#include "jsadmin.h"
#include "natsub.h"
#include "relay.h"
#include "report.h"
#include "util.h"

#define POLL_US 10000

typedef struct drain_result {
    double seconds, startup_s, after_first_s;
    uint64_t at_first, delivered, dups;
    proc_tree_t tree;
    double exit_cpu_s; /* cross-check: wait4() of the supervisor, startup and stop included */
} drain_result_t;

/* Delivered so far: stream count, or distinct indexes received. */
static int
delivered(jsadm_t *js, const char *stream, natsub_t *sub, uint64_t *n)
{
    if (sub != NULL) {
        *n = natsub_unique(sub);
        return 0;
    }
    return jsadm_msgs(js, stream, n);
}

static int
one_run(bench_t *b, const bench_opts_t *o, PGconn *admin, const char *qtable, jsadm_t *js,
        const bench_stream_t *st, int workers, drain_result_t *out)
{
    relay_t relay = {.pid = -1};
    natsub_t *sub = NULL;
    uint64_t n = 0, m = (uint64_t)o->messages;
    long long pending = -1;
    int64_t t0, t_first = 0, t_end, deadline;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (db_empty(admin, qtable) != 0 ||
        db_preload(admin, qtable, st->topic, 0, o->messages, o->body_size, o->headers) != 0 ||
        db_checkpoint(admin) != 0)
        goto done;
    if (o->nats_core) {
        if (natsub_open(&sub, b->nats, st->subjects, (size_t)o->messages) != 0)
            goto done;
    } else if (jsadm_purge(js, st->name) != 0) {
        goto done;
    }
    bench_info("drain: %ld messages, %d worker(s)", o->messages, workers);
    t0 = bench_now_us();
    deadline = t0 + (int64_t)(o->timeout * 1e6);
    if (relay_start(b, &relay, workers, o->nats_core, NULL, 0, 0) != 0)
        goto done;
    for (;;) {
        if (bench_stopping()) {
            bench_err("interrupted");
            goto done;
        }
        if (!relay_alive(&relay) || delivered(js, st->name, sub, &n) != 0)
            goto done;
        if (n > 0 && t_first == 0) {
            t_first = bench_now_us();
            out->at_first = n;
        }
        /* Marks follow PubAcks: once all are in NATS, wait for the table. */
        if (n >= m) {
            if (db_pending(admin, qtable, &pending) != 0)
                goto done;
            if (pending == 0)
                break;
        }
        if (bench_now_us() >= deadline) {
            if (db_pending(admin, qtable, &pending) != 0)
                goto done;
            bench_err("drain: %d worker(s): after %.0f s, %llu of %llu messages in NATS, "
                      "%lld rows pending (--timeout)",
                      workers, o->timeout, (unsigned long long)n, (unsigned long long)m, pending);
            goto done;
        }
        bench_sleep_us(POLL_US);
    }
    t_end = bench_now_us();
    if (relay_sample(&relay, &out->tree) != 0)
        goto done;
    if (relay_stop(b, &relay) != 0)
        goto done;
    out->exit_cpu_s = relay.exit_cpu_s;
    /* Final count after the stop: anything beyond M would be a duplicate
     * the stream failed to drop. */
    if (delivered(js, st->name, sub, &n) != 0)
        goto done;
    out->delivered = n;
    out->dups = sub != NULL ? natsub_duplicates(sub) : 0;
    out->seconds = (double)(t_end - t0) / 1e6;
    out->startup_s = (double)(t_first - t0) / 1e6;
    out->after_first_s = (double)(t_end - t_first) / 1e6;
    if (n != m) {
        bench_err("drain: %d worker(s): NATS holds %llu messages, expected %llu", workers,
                  (unsigned long long)n, (unsigned long long)m);
        goto done;
    }
    rc = 0;
done:
    relay_stop(b, &relay);
    natsub_close(sub);
    return rc;
}

/* "a/b/c" of the relay workers' VmHWM in MB; the keeper's apart. */
static void
rss_text(const proc_tree_t *t, char *out, size_t len, double *keeper_mb, json_t *arr)
{
    size_t o = 0;
    int i;

    out[0] = '\0';
    *keeper_mb = NAN;
    for (i = 0; i < t->nchildren; i++) {
        double mb = (double)t->children[i].vmhwm_kb / 1024.0;

        if (strcmp(t->children[i].role, "keeper") == 0) {
            *keeper_mb = mb;
            continue;
        }
        if (o < len)
            o += (size_t)snprintf(out + o, len - o, "%s%.1f", o ? "/" : "", mb);
        json_array_append_new(arr, json_real(mb));
    }
}

int
cmd_drain(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    static const char *const hdr[] = {"workers",       "messages",     "seconds",     "msgs/s",
                                      "msgs/s*",       "startup s",    "relay CPU s", "CPU s/100k",
                                      "worker RSS MB", "keeper RSS MB"};
    bench_stream_t st;
    jsadm_t *js = NULL;
    PGconn *admin = NULL;
    report_table_t *t = NULL;
    json_t *rows = json_array();
    drain_result_t r;
    char *qtable = NULL, title[256], rss[256];
    double keeper_mb;
    int rc = BENCH_EXIT_FAIL, i;

    memset(&st, 0, sizeof(st));
    if (rows == NULL || bench_schema_ready(b) != 0)
        goto done;
    if (o->nats_core)
        bench_stream_names(b, "drain", &st);
    else if (bench_stream_create(b, "drain", &st) != 0)
        goto done;
    if ((admin = db_connect(b->db, "drain admin")) == NULL ||
        (qtable = db_qtable(admin, b->schema)) == NULL)
        goto done;
    if (!o->nats_core && jsadm_open(&js, b->nats) != 0)
        goto done;
    snprintf(title, sizeof(title), "drain: %ld messages, body %ld B, %ld headers, %s, batch %ld",
             o->messages, o->body_size, o->headers, o->nats_core ? "core" : "jetstream",
             o->relay_batch);
    if ((t = report_table_new(title, 10, hdr, "rrrrrrrrrr")) == NULL)
        goto done;
    for (i = 0; i < o->nworkers; i++) {
        json_t *row, *rssj = json_array();
        double mps, mps2, cpu100k;

        if (one_run(b, o, admin, qtable, js, &st, (int)o->workers[i], &r) != 0) {
            json_decref(rssj);
            goto done;
        }
        mps = (double)o->messages / r.seconds;
        mps2 = r.after_first_s > 0 && r.delivered > r.at_first
                   ? (double)(r.delivered - r.at_first) / r.after_first_s
                   : NAN;
        cpu100k = r.tree.cpu_s * 100000.0 / (double)o->messages;
        rss_text(&r.tree, rss, sizeof(rss), &keeper_mb, rssj);
        report_row_begin(t);
        report_cell(t, "%ld", o->workers[i]);
        report_cell(t, "%ld", o->messages);
        report_cell(t, "%.3f", r.seconds);
        report_cell(t, "%.0f", mps);
        report_cell(t, "%.0f", mps2);
        report_cell(t, "%.3f", r.startup_s);
        report_cell(t, "%.2f", r.tree.cpu_s);
        report_cell(t, "%.2f", cpu100k);
        report_cell(t, "%s", rss);
        report_cell(t, "%.1f", keeper_mb);
        row = json_pack("{s:i, s:I}", "workers", (int)o->workers[i], "messages",
                        (json_int_t)o->messages);
        report_json_num(row, "seconds", r.seconds);
        report_json_num(row, "msgs_per_s", mps);
        report_json_num(row, "msgs_per_s_after_first", mps2);
        report_json_num(row, "startup_s", r.startup_s);
        report_json_num(row, "relay_cpu_s", r.tree.cpu_s);
        report_json_num(row, "supervisor_cpu_s", r.tree.root_cpu_s);
        report_json_num(row, "relay_cpu_s_at_exit", r.exit_cpu_s);
        report_json_num(row, "cpu_s_per_100k", cpu100k);
        json_object_set_new(row, "worker_peak_rss_mb", rssj);
        report_json_num(row, "keeper_peak_rss_mb", keeper_mb);
        json_object_set_new(row, "duplicates", json_integer((json_int_t)r.dups));
        json_array_append_new(rows, row);
    }
    report_note(t, "msgs/s: from `outboxd run` start to the last mark; msgs/s*: from the first "
                   "message seen in NATS (startup excluded)");
    report_note(t, "CPU: utime+stime of the supervisor, relays and keeper (/proc, before stop); "
                   "RSS: VmHWM per relay worker");
    report_table_print(t, stdout);
    json_object_set_new(doc, "results", rows);
    rows = NULL;
    rc = BENCH_EXIT_OK;
done:
    bench_stream_drop(b, &st);
    jsadm_close(js);
    report_table_free(t);
    json_decref(rows);
    free(qtable);
    PQfinish(admin);
    return rc;
}
