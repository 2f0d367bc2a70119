/*
 * claimcost: does the relay's claim stay as cheap with 10M DELIVERED rows in
 * the table as with 10k? One table in a schema of its own
 * (bench_<pid>_claimcost: the other commands' tables stay small, and
 * dropping it frees the gigabytes at once), grown from one size to the
 * next, never rebuilt. Per size D: delivered rows added up to D, pending
 * rows for the rounds, VACUUM ANALYZE and CHECKPOINT (the state autovacuum
 * reaches), then claim and mark-delivered timed through liboutbox's Store
 * (rawsql.c, the relay's own statements). Claimed rows stay DELIVERED, so a
 * size holds D plus what earlier sizes claimed, and the table says so.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "db.h"
#include "latstats.h"
#include "rawsql.h"
#include "report.h"
#include "space.h"
#include "util.h"

#define WARMUP 2 /* untimed claims first: the first one after a CHECKPOINT reads cold pages */
#define BODY_SIZE 256
#define HEADERS 2

typedef struct cc_size {
    long long delivered, bytes;
    double load_s, vacuum_s;
    lat_summary_t claim, mark; /* microseconds */
} cc_size_t;

typedef struct cc {
    bench_t *b;
    const bench_opts_t *o;
    PGconn *admin;
    rawsql_t *store;
    char schema[96], *qtable, topic[96];
    int64_t *claim_us, *mark_us; /* per timed round */
    long long have;              /* delivered rows in the table now */
} cc_t;

/* The schema and table, by liboutbox's migration (what `outboxd migrate`
 * runs). */
static int
make_table(cc_t *x)
{
    outbox_pg_options_t po = {.conninfo = x->b->db, .schema = x->schema, .table = BENCH_TABLE};
    char err[512];
    int from = 0, to = 0;

    bench_info("claimcost: schema %s", x->schema);
    if (outbox_pg_migrate(&po, &from, &to, err, sizeof(err)) != OUTBOX_OK) {
        bench_err("claimcost: migrating schema %s: %s", x->schema, err);
        return -1;
    }
    if ((x->qtable = db_qtable(x->admin, x->schema)) == NULL) {
        bench_err("out of memory");
        return -1;
    }
    return rawsql_open(&x->store, x->b->db, x->schema, false);
}

static void
drop_table(cc_t *x)
{
    char sql[256], *q;

    if ((q = db_qident(x->admin, x->schema)) == NULL)
        return;
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", q);
    if (db_exec(x->admin, sql) != 0)
        bench_err("schema %s was not dropped: drop it by hand", x->schema);
    free(q);
}

/* WARMUP + rounds claims of exactly batch rows, each marked delivered. */
static int
time_rounds(cc_t *x, long batch, long rounds)
{
    const outbox_batch_t *bt;
    int64_t t0, t1, t2;
    long i;

    for (i = 0; i < WARMUP + rounds; i++) {
        if (bench_stopping())
            return -1;
        t0 = bench_now_us();
        if (rawsql_claim(x->store, batch, &bt) != 0)
            return -1;
        t1 = bench_now_us();
        if (bt->n != (size_t)batch) {
            bench_err("claimcost: claim %ld returned %zu rows, expected %ld", i + 1, bt->n, batch);
            return -1;
        }
        if (rawsql_mark(x->store) != 0)
            return -1;
        t2 = bench_now_us();
        if (i >= WARMUP) {
            x->claim_us[i - WARMUP] = t1 - t0;
            x->mark_us[i - WARMUP] = t2 - t1;
        }
    }
    x->have += (WARMUP + rounds) * (long long)batch;
    return 0;
}

static int
one_size(cc_t *x, long long d, cc_size_t *out)
{
    const bench_opts_t *o = x->o;
    long long pending = (WARMUP + o->rounds) * (long long)o->relay_batch;
    int64_t t0 = bench_now_us();
    char sql[512];

    memset(out, 0, sizeof(*out));
    if (d > x->have) {
        bench_info("claimcost: growing the table from %lld to %lld delivered rows", x->have, d);
        if (db_preload_delivered(x->admin, x->qtable, x->topic, d - x->have, BODY_SIZE, HEADERS) !=
            0)
            return -1;
        x->have = d;
    }
    out->load_s = (double)(bench_now_us() - t0) / 1e6;
    out->delivered = x->have;
    if (db_preload(x->admin, x->qtable, x->topic, 0, pending, BODY_SIZE, HEADERS) != 0)
        return -1;
    bench_info("claimcost: VACUUM ANALYZE, CHECKPOINT");
    t0 = bench_now_us();
    snprintf(sql, sizeof(sql), "VACUUM ANALYZE %s", x->qtable);
    if (db_exec(x->admin, sql) != 0 || db_checkpoint(x->admin) != 0)
        return -1;
    out->vacuum_s = (double)(bench_now_us() - t0) / 1e6;
    if (db_table_bytes(x->admin, x->qtable, &out->bytes) != 0)
        return -1;
    bench_info("claimcost: %lld delivered rows (%.0f MB): %ld claims of %ld", out->delivered,
               (double)out->bytes / 1e6, o->rounds, o->relay_batch);
    if (time_rounds(x, o->relay_batch, o->rounds) != 0)
        return -1;
    stats_summarize(x->claim_us, (size_t)o->rounds, &out->claim);
    stats_summarize(x->mark_us, (size_t)o->rounds, &out->mark);
    return 0;
}

static void
add_row(report_table_t *t, json_t *rows, const cc_size_t *r, double first_p50)
{
    double p50 = (double)r->claim.p50 / 1000, vs = first_p50 > 0 ? p50 / first_p50 : NAN;
    json_t *row = json_pack("{s:I, s:I}", "delivered", (json_int_t)r->delivered, "table_bytes",
                            (json_int_t)r->bytes);

    report_row_begin(t);
    report_cell(t, "%lld", r->delivered);
    report_cell(t, "%.0f", (double)r->bytes / 1e6);
    report_cell(t, "%.1f", r->load_s);
    report_cell(t, "%.3f", p50);
    report_cell(t, "%.3f", (double)r->claim.p90 / 1000);
    report_cell(t, "%.3f", (double)r->claim.max / 1000);
    report_cell(t, "%.3f", (double)r->mark.p50 / 1000);
    report_cell(t, "%.2f", vs);
    report_json_num(row, "claim_p50_ms", p50);
    report_json_num(row, "claim_p90_ms", (double)r->claim.p90 / 1000);
    report_json_num(row, "claim_max_ms", (double)r->claim.max / 1000);
    report_json_num(row, "mark_p50_ms", (double)r->mark.p50 / 1000);
    report_json_num(row, "mark_p90_ms", (double)r->mark.p90 / 1000);
    report_json_num(row, "claim_p50_vs_first", vs);
    report_json_num(row, "load_s", r->load_s);
    report_json_num(row, "vacuum_s", r->vacuum_s);
    json_array_append_new(rows, row);
}

long long
claimcost_rows(const bench_opts_t *o)
{
    return o->delivered[o->ndelivered - 1] +
           (long long)o->ndelivered * (WARMUP + o->rounds) * o->relay_batch;
}

int
cmd_claimcost(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    static const char *const hdr[] = {"delivered rows", "table MB",     "load s",
                                      "claim p50 ms",   "claim p90 ms", "claim max ms",
                                      "mark p50 ms",    "p50 vs first"};
    bench_stream_t names;
    cc_t x;
    cc_size_t *sz = NULL;
    report_table_t *t = NULL;
    json_t *rows = json_array();
    char title[256];
    double ratio;
    int rc = BENCH_EXIT_FAIL, made = 0, i;

    memset(&x, 0, sizeof(x));
    x.b = b;
    x.o = o;
    snprintf(x.schema, sizeof(x.schema), "%s_claimcost", b->schema);
    bench_stream_names(b, "claimcost", &names); /* a topic only: nothing is published */
    snprintf(x.topic, sizeof(x.topic), "%s", names.topic);
    if ((x.claim_us = calloc((size_t)o->rounds, sizeof(int64_t))) == NULL ||
        (x.mark_us = calloc((size_t)o->rounds, sizeof(int64_t))) == NULL ||
        (sz = calloc((size_t)o->ndelivered, sizeof(*sz))) == NULL || rows == NULL) {
        bench_err("out of memory");
        goto done;
    }
    if ((x.admin = db_connect(b->db, "claimcost admin")) == NULL)
        goto done;
    if (space_check(x.admin, claimcost_rows(o), "claimcost") != 0)
        goto done;
    made = 1; /* from here on, even a half-made schema is dropped */
    if (make_table(&x) != 0)
        goto done;
    for (i = 0; i < o->ndelivered; i++)
        if (one_size(&x, o->delivered[i], &sz[i]) != 0)
            goto done;

    snprintf(title, sizeof(title),
             "claimcost: claims of %ld rows + mark delivered (liboutbox Store), %ld timed "
             "rounds per size after %d untimed, body %d B",
             o->relay_batch, o->rounds, WARMUP, BODY_SIZE);
    if ((t = report_table_new(title, 8, hdr, "rrrrrrrr")) == NULL)
        goto done;
    for (i = 0; i < o->ndelivered; i++)
        add_row(t, rows, &sz[i], (double)sz[0].claim.p50 / 1000);
    ratio = sz[0].claim.p50 > 0 ? (double)sz[o->ndelivered - 1].claim.p50 / (double)sz[0].claim.p50
                                : NAN;
    report_note(t, "claim p50 at %lld delivered rows / at %lld: %.2f",
                sz[o->ndelivered - 1].delivered, sz[0].delivered, ratio);
    report_note(t, "each size's table holds its delivered rows plus the claimed rows of "
                   "earlier sizes; VACUUM ANALYZE + CHECKPOINT before timing");
    report_table_print(t, stdout);
    json_object_set_new(doc, "results", rows);
    rows = NULL;
    report_json_num(doc, "claim_p50_ratio", ratio);
    json_object_set_new(doc, "batch_size", json_integer(o->relay_batch));
    json_object_set_new(doc, "rounds", json_integer(o->rounds));
    json_object_set_new(doc, "warmup_rounds", json_integer(WARMUP));
    rc = BENCH_EXIT_OK;
done:
    rawsql_close(x.store);
    if (made && x.admin != NULL) {
        bench_info("claimcost: dropping schema %s", x.schema);
        drop_table(&x);
    }
    report_table_free(t);
    json_decref(rows);
    free(x.qtable);
    free(x.claim_us);
    free(x.mark_us);
    free(sz);
    PQfinish(x.admin);
    return rc;
}
