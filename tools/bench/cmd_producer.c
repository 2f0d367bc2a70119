/*
 * producer: commits/s of the producer path alone, per API, connection
 * count and variant. Variants and the baseline each is compared with:
 *   no-trigger           user triggers disabled          vs trigger-idle
 *   trigger-idle         triggers enabled, no relay      (baseline)
 *   relay-poll           outboxd run --wakeup poll       vs relay-notify
 *   relay-notify         outboxd run --wakeup notify     (baseline)
 *   notify-every-commit  no trigger, pg_notify per COMMIT vs trigger-idle
 * The relay variants run one relay worker publishing to a stream of this
 * run. Every measurement starts on an emptied table after a CHECKPOINT, so
 * none inherits another's rows or dirty pages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "db.h"
#include "producer.h"
#include "relay.h"
#include "report.h"
#include "latstats.h"
#include "util.h"

enum { V_NO_TRIGGER, V_TRIGGER_IDLE, V_RELAY_POLL, V_RELAY_NOTIFY, V_NOTIFY_EVERY, V_COUNT };

static const char *const vname[V_COUNT] = {"no-trigger", "trigger-idle", "relay-poll",
                                           "relay-notify", "notify-every-commit"};
static const int vbase[V_COUNT] = {V_TRIGGER_IDLE, -1, V_RELAY_NOTIFY, -1, V_TRIGGER_IDLE};

/* One variant at one connection count: a result per round. */
typedef struct measure {
    int rounds;
    producer_result_t r[BENCH_REPEAT_MAX];
} measure_t;

typedef struct ctx {
    bench_t *b;
    const bench_opts_t *o;
    PGconn *admin;
    char *qtable;
    bench_stream_t stream;
    int relay_ok[V_COUNT];
    char relay_why[256];
} ctx_t;

static int
is_relay(int v)
{
    return v == V_RELAY_POLL || v == V_RELAY_NOTIFY;
}

/* Empty table, triggers as the variant wants, a checkpoint. */
static int
prepare_table(ctx_t *x, int v)
{
    char sql[512];

    if (db_empty(x->admin, x->qtable) != 0)
        return -1;
    snprintf(sql, sizeof(sql), "ALTER TABLE %s %s TRIGGER USER", x->qtable,
             v == V_NO_TRIGGER || v == V_NOTIFY_EVERY ? "DISABLE" : "ENABLE");
    if (db_exec(x->admin, sql) != 0)
        return -1;
    return db_checkpoint(x->admin);
}

static int
measure(ctx_t *x, bench_api_t api, int conns, int v, producer_result_t *res)
{
    const bench_opts_t *o = x->o;
    producer_cfg_t cfg;
    relay_t relay = {.pid = -1};
    const char *wake[2] = {"--wakeup", v == V_RELAY_POLL ? "poll" : "notify"};
    int rc;

    if (prepare_table(x, v) != 0)
        return -1;
    if (is_relay(v) && relay_start(x->b, &relay, 1, 0, wake, 2, 1) != 0)
        return -1;
    memset(&cfg, 0, sizeof(cfg));
    cfg.conninfo = x->b->db;
    cfg.schema = x->b->schema;
    cfg.topic = x->stream.topic;
    cfg.api = api;
    cfg.connections = conns;
    cfg.batch = o->batch;
    cfg.body_size = o->body_size;
    cfg.headers = o->headers;
    cfg.notify = v == V_NOTIFY_EVERY;
    cfg.seconds = o->seconds;
    bench_info("producer: api %s, %d connection(s), %s, %.1f s", api == BENCH_API_SQL ? "sql" : "c",
               conns, vname[v], o->seconds);
    rc = producer_run(&cfg, res);
    if (is_relay(v) && (relay_stop(x->b, &relay) != 0 || rc != 0))
        rc = -1;
    return rc;
}

static double
per_s(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0;
}

static double
cps_of(const producer_result_t *r)
{
    return per_s(r->commits, r->elapsed_s);
}

/* The round with the median commits/s (the lower middle one for an even
 * count); *spread gets (max - min) / median in percent. */
static const producer_result_t *
median_round(const measure_t *m, double *spread)
{
    int idx[BENCH_REPEAT_MAX], i, j, k;
    double med;

    for (i = 0; i < m->rounds; i++)
        idx[i] = i;
    for (i = 1; i < m->rounds; i++) {
        for (j = i; j > 0 && cps_of(&m->r[idx[j - 1]]) > cps_of(&m->r[idx[j]]); j--) {
            k = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = k;
        }
    }
    k = idx[(m->rounds - 1) / 2];
    med = cps_of(&m->r[k]);
    *spread = med > 0 ? (cps_of(&m->r[idx[m->rounds - 1]]) - cps_of(&m->r[idx[0]])) / med * 100 : 0;
    return &m->r[k];
}

static void
add_results(ctx_t *x, bench_api_t api, int conns, const measure_t *m, report_table_t *t,
            json_t *rows)
{
    const char *an = api == BENCH_API_SQL ? "sql" : "c";
    int v, i;

    for (v = 0; v < V_COUNT; v++) {
        json_t *row =
            json_pack("{s:s, s:i, s:s}", "api", an, "connections", conns, "variant", vname[v]);
        json_t *all = json_array();
        const producer_result_t *r, *br;
        double cps, mps, spread, bspread;
        int base = vbase[v];

        report_row_begin(t);
        report_cell(t, "%s", an);
        report_cell(t, "%d", conns);
        report_cell(t, "%s", vname[v]);
        if (m[v].rounds == 0) {
            report_cell(t, "skipped");
            for (i = 0; i < 7; i++)
                report_cell(t, "-");
            json_object_set_new(row, "skipped", json_string(x->relay_why));
            json_array_append_new(rows, row);
            json_decref(all);
            continue;
        }
        r = median_round(&m[v], &spread);
        cps = cps_of(r);
        mps = per_s(r->msgs, r->elapsed_s);
        report_cell(t, "%.1f", cps);
        report_cell(t, "%.1f", mps);
        report_cell(t, "%.3f", (double)r->tx.p50 / 1000);
        report_cell(t, "%.3f", (double)r->tx.p99 / 1000);
        report_cell(t, "%.1f", (double)r->tx.max / 1000);
        if (m[v].rounds > 1)
            report_cell(t, "%.0f%%", spread);
        else
            report_cell(t, "-");
        json_object_set_new(row, "commits", json_integer((json_int_t)r->commits));
        json_object_set_new(row, "messages", json_integer((json_int_t)r->msgs));
        report_json_num(row, "seconds", r->elapsed_s);
        report_json_num(row, "commits_per_s", cps);
        report_json_num(row, "msgs_per_s", mps);
        report_json_num(row, "tx_p50_ms", (double)r->tx.p50 / 1000);
        report_json_num(row, "tx_p99_ms", (double)r->tx.p99 / 1000);
        report_json_num(row, "tx_max_ms", (double)r->tx.max / 1000);
        for (i = 0; i < m[v].rounds; i++)
            json_array_append_new(all, json_real(cps_of(&m[v].r[i])));
        json_object_set_new(row, "commits_per_s_rounds", all);
        report_json_num(row, "spread_pct", spread);
        if (base >= 0 && m[base].rounds > 0) {
            double d;

            br = median_round(&m[base], &bspread);
            d = stats_diff_pct(cps, cps_of(br));
            report_cell(t, "%s", vname[base]);
            report_cell(t, "%+.1f%%", d);
            json_object_set_new(row, "baseline", json_string(vname[base]));
            report_json_num(row, "diff_pct", d);
        } else {
            report_cell(t, "%s", base >= 0 ? vname[base] : "(baseline)");
            report_cell(t, "-");
        }
        json_array_append_new(rows, row);
    }
}

int
cmd_producer(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    static const char *const hdr[] = {"api",    "conns",     "variant",   "commits/s",
                                      "msgs/s", "tx p50 ms", "tx p99 ms", "tx max ms",
                                      "spread", "vs",        "diff"};
    ctx_t x;
    report_table_t *t = NULL;
    json_t *rows = json_array(), *notes = json_array();
    measure_t *m = calloc(V_COUNT, sizeof(*m));
    char title[256], why[256], sql[512];
    long long ntrig = 0;
    int rc = BENCH_EXIT_FAIL, a, p, v, wp, wn, round;

    memset(&x, 0, sizeof(x));
    x.b = b;
    x.o = o;
    if (bench_schema_ready(b) != 0)
        goto done;
    if ((x.admin = db_connect(b->db, "producer admin")) == NULL)
        goto done;
    if ((x.qtable = db_qtable(x.admin, b->schema)) == NULL)
        goto done;
    if (db_user_triggers(x.admin, x.qtable, &ntrig) != 0)
        goto done;
    wp = relay_supports(b, "--wakeup", "poll", why, sizeof(why));
    wn = wp == 1 ? relay_supports(b, "--wakeup", "notify", why, sizeof(why)) : wp;
    if (wp < 0 || wn < 0) {
        bench_err("outboxd %s cannot be run: %s", b->outboxd, why);
        goto done;
    }
    x.relay_ok[V_RELAY_POLL] = wp == 1;
    x.relay_ok[V_RELAY_NOTIFY] = wn == 1;
    if (wp != 1 || wn != 1)
        snprintf(x.relay_why, sizeof(x.relay_why), "this outboxd has no --wakeup %s (%s)",
                 wp != 1 ? "poll" : "notify", why);
    /* The relay variants need a stream to publish to; the others only a topic. */
    if (wp == 1 || wn == 1) {
        if (bench_stream_create(b, "producer", &x.stream) != 0)
            goto done;
    } else {
        bench_stream_names(b, "producer", &x.stream);
    }

    snprintf(title, sizeof(title),
             "producer: %ld msg/transaction, body %ld B, %ld headers, %.1f s per measurement, "
             "%ld round(s)",
             o->batch, o->body_size, o->headers, o->seconds, o->repeat);
    if ((t = report_table_new(title, 11, hdr, "lrlrrrrrrlr")) == NULL || rows == NULL ||
        notes == NULL || m == NULL) {
        bench_err("out of memory");
        goto done;
    }
    for (a = BENCH_API_SQL; a <= BENCH_API_C; a++) {
        if (((int)o->api & a) == 0)
            continue;
        for (p = 0; p < o->nconnections; p++) {
            memset(m, 0, V_COUNT * sizeof(*m));
            /* Rounds interleave the variants, so a slow spell of the
             * machine hits all of them rather than one. */
            for (round = 0; round < o->repeat; round++) {
                for (v = 0; v < V_COUNT; v++) {
                    if (is_relay(v) && !x.relay_ok[v])
                        continue;
                    if (measure(&x, (bench_api_t)a, (int)o->connections[p], v,
                                &m[v].r[m[v].rounds]) != 0)
                        goto done;
                    m[v].rounds++;
                }
            }
            add_results(&x, (bench_api_t)a, (int)o->connections[p], m, t, rows);
        }
    }
    if (ntrig == 0) {
        report_note(t, "the table has no user trigger (schema version of this build): "
                       "no-trigger and trigger-idle measure the same thing; their difference "
                       "is run-to-run noise");
        json_array_append_new(notes, json_string("no user trigger on the table: no-trigger "
                                                 "equals trigger-idle"));
    }
    if (x.relay_why[0] != '\0') {
        report_note(t, "relay-poll and relay-notify skipped: %s", x.relay_why);
        json_array_append_new(notes, json_string(x.relay_why));
    }
    report_note(t, "diff = (variant - baseline) / baseline in commits/s; "
                   "notify-every-commit runs without the trigger");
    report_note(t, "tx: BEGIN sent to COMMIT done; %s",
                o->repeat > 1 ? "median of the rounds, spread = (max - min) / median"
                              : "one round (--repeat R for a median and its spread)");
    report_table_print(t, stdout);
    json_object_set_new(doc, "results", rows);
    json_object_set_new(doc, "notes", notes);
    rows = notes = NULL;
    rc = BENCH_EXIT_OK;
done:
    if (x.admin != NULL && x.qtable != NULL) {
        snprintf(sql, sizeof(sql), "ALTER TABLE %s ENABLE TRIGGER USER", x.qtable);
        db_exec(x.admin, sql);
    }
    bench_stream_drop(b, &x.stream);
    report_table_free(t);
    json_decref(rows);
    json_decref(notes);
    free(x.qtable);
    free(m);
    PQfinish(x.admin);
    return rc;
}
