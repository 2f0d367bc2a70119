/*
 * outboxbench's pure parts: nearest-rank percentiles and the latency curve,
 * percent differences, list parsing, the option table (defaults per command,
 * options refused where they do not apply, --relay-arg splitting), report's
 * figures and target checks, claimcost's disk space estimate.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <math.h>

#include "options.h"
#include "latstats.h"
#include "space.h"
#include "targets.h"
#include "util.h"

static void
test_percentiles_nearest_rank(void **state)
{
    int64_t v[100];
    lat_summary_t s;
    int i;

    (void)state;
    for (i = 0; i < 100; i++)
        v[i] = 100 - i; /* reversed: summarize must sort */
    stats_summarize(v, 100, &s);
    assert_int_equal(s.n, 100);
    assert_int_equal(s.min, 1);
    assert_int_equal(s.p50, 50);
    assert_int_equal(s.p90, 90);
    assert_int_equal(s.p99, 99);
    assert_int_equal(s.p999, 100);
    assert_int_equal(s.max, 100);
    assert_true(s.mean > 50.49 && s.mean < 50.51);
}

static void
test_percentiles_small_samples(void **state)
{
    int64_t one[1] = {7}, two[2] = {9, 3};
    lat_summary_t s;

    (void)state;
    stats_summarize(one, 1, &s);
    assert_int_equal(s.p50, 7);
    assert_int_equal(s.p999, 7);
    stats_summarize(two, 2, &s);
    assert_int_equal(s.p50, 3); /* rank ceil(0.5 * 2) = 1: the lower value */
    assert_int_equal(s.p90, 9);
    stats_summarize(NULL, 0, &s);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.max, 0);
}

static void
test_percentile_exact_rank(void **state)
{
    int64_t v[1000];
    int i;

    (void)state;
    for (i = 0; i < 1000; i++)
        v[i] = i + 1;
    /* 99.9 / 100 * 1000 is 999.0000000000001 in floating point: rank 999. */
    assert_int_equal(stats_percentile(v, 1000, 99.9), 999);
    assert_int_equal(stats_percentile(v, 1000, 99.95), 1000);
    assert_int_equal(stats_percentile(v, 1000, 0.1), 1);
    assert_int_equal(stats_percentile(v, 1000, 0.15), 2);
    assert_int_equal(stats_percentile(v, 1000, 100), 1000);
}

static void
test_latency_curve(void **state)
{
    int64_t v[1000];
    double p[STATS_CURVE_MAX];
    int64_t c[STATS_CURVE_MAX];
    size_t n, i;

    (void)state;
    for (i = 0; i < 1000; i++)
        v[i] = (int64_t)i + 1; /* sorted, 1..1000 */
    n = stats_curve(v, 1000, p, c, STATS_CURVE_MAX);
    assert_true(n > 200 && n <= STATS_CURVE_MAX);
    assert_true(p[0] == 0);
    assert_int_equal(c[0], 1); /* p 0: the minimum */
    assert_true(p[n - 1] == 100);
    assert_int_equal(c[n - 1], 1000);
    for (i = 1; i < n; i++) {
        assert_true(p[i] > p[i - 1]); /* strictly increasing, no float drift */
        assert_true(c[i] >= c[i - 1]);
        if (p[i] == 50)
            assert_int_equal(c[i], 500);
        if (fabs(p[i] - 99.9) < 1e-9)
            assert_int_equal(c[i], 999);
    }
    /* Truncated to max, nothing for an empty sample. */
    assert_int_equal(stats_curve(v, 1000, p, c, 3), 3);
    assert_true(p[2] == 1.0);
    assert_int_equal(stats_curve(v, 0, p, c, STATS_CURVE_MAX), 0);
}

static void
test_diff_pct(void **state)
{
    (void)state;
    assert_true(stats_diff_pct(110, 100) > 9.99 && stats_diff_pct(110, 100) < 10.01);
    assert_true(stats_diff_pct(50, 100) < -49.99 && stats_diff_pct(50, 100) > -50.01);
    assert_true(stats_diff_pct(5, 0) == 0);
}

static void
test_parse_list(void **state)
{
    long out[4];

    (void)state;
    assert_int_equal(bench_parse_list("1,8,32", "--x", 1, 100, out, 4), 3);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[2], 32);
    assert_int_equal(bench_parse_list("5", "--x", 1, 100, out, 4), 1);
    assert_int_equal(bench_parse_list("", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("1,,2", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("1,", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("1,a", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("0", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("101", "--x", 1, 100, out, 4), -1);
    assert_int_equal(bench_parse_list("1,2,3,4,5", "--x", 1, 100, out, 4), -1);
}

/* Parse a NULL-terminated list of arguments (copied: parsing writes). */
static int
parse(bench_opts_t *o, ...)
{
    static char buf[16][64];
    char *argv[17];
    const char *a;
    va_list ap;
    int argc = 0;

    argv[argc++] = strcpy(buf[0], "outboxbench");
    va_start(ap, o);
    while ((a = va_arg(ap, const char *)) != NULL && argc < 16) {
        snprintf(buf[argc], sizeof(buf[argc]), "%s", a);
        argv[argc] = buf[argc];
        argc++;
    }
    va_end(ap);
    argv[argc] = NULL;
    return bench_options_parse(argc, argv, o);
}

static void
test_options_defaults_per_command(void **state)
{
    bench_opts_t o;

    (void)state;
    assert_int_equal(parse(&o, "--db", "d", "--nats", "n", "producer", NULL), 0);
    assert_int_equal(o.cmd, BENCH_PRODUCER);
    assert_int_equal(o.nconnections, 3);
    assert_int_equal(o.connections[2], 32);
    assert_true(o.seconds == 5);
    assert_int_equal(parse(&o, "steady", "--db", "d", "--nats", "n", NULL), 0);
    assert_int_equal(o.cmd, BENCH_STEADY);
    assert_int_equal(o.connections[0], 4);
    assert_true(o.seconds == 10);
    assert_int_equal(parse(&o, "--db", "d", "--nats", "n", "drain", NULL), 0);
    assert_int_equal(o.nworkers, 3);
    assert_int_equal(o.workers[2], 4);
    assert_int_equal(parse(&o, "--start-servers", "--smoke", NULL), 0);
    assert_int_equal(o.cmd, BENCH_SMOKE);
}

static void
test_options_refused_where_they_do_not_apply(void **state)
{
    bench_opts_t o;

    (void)state;
    assert_int_equal(parse(&o, "--start-servers", "producer", "--rate", "5", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "raw", "--seconds", "3", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "--smoke", "drain", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "steady", "--connections", "1,2", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "steady", "--api", "both", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "bogus", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "drain", "--nats-mode", "x", NULL), -1);
    unsetenv("OUTBOX_DB");
    assert_int_equal(parse(&o, "--nats", "n", "raw", NULL), -1);
}

static void
test_options_relay_args_split(void **state)
{
    bench_opts_t o;

    (void)state;
    assert_int_equal(parse(&o, "--start-servers", "drain", "--relay-arg",
                           "--process-interval  10ms", "--relay-arg", "--log-level=debug", NULL),
                     0);
    assert_int_equal(o.nrelay_args, 3);
    assert_string_equal(o.relay_args[0], "--process-interval");
    assert_string_equal(o.relay_args[1], "10ms");
    assert_string_equal(o.relay_args[2], "--log-level=debug");
    assert_int_equal(parse(&o, "--start-servers", "drain", "--relay-arg", "workers 2", NULL), -1);
}

static void
test_options_claimcost_and_report(void **state)
{
    bench_opts_t o;

    (void)state;
    assert_int_equal(parse(&o, "--start-servers", "claimcost", NULL), 0);
    assert_int_equal(o.cmd, BENCH_CLAIMCOST);
    assert_int_equal(o.ndelivered, 2);
    assert_int_equal(o.delivered[0], 10000);
    assert_int_equal(o.delivered[1], 10000000);
    assert_int_equal(o.relay_batch, 500);
    assert_int_equal(o.rounds, 30);
    assert_int_equal(parse(&o, "--start-servers", "claimcost", "--delivered", "0,200000",
                           "--batch-size", "100", "--rounds", "5", NULL),
                     0);
    assert_int_equal(o.delivered[1], 200000);
    assert_int_equal(o.relay_batch, 100);
    assert_int_equal(o.rounds, 5);
    /* Ascending only: the table grows from one size to the next. */
    assert_int_equal(parse(&o, "--start-servers", "claimcost", "--delivered", "10,5", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "claimcost", "--delivered", "10,10", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "claimcost", "--messages", "5", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "claimcost", "--quick", NULL), -1);

    assert_int_equal(parse(&o, "--start-servers", "report", NULL), 0);
    assert_int_equal(o.cmd, BENCH_REPORT);
    assert_int_equal(o.delivered[1], 10000000);
    assert_int_equal(parse(&o, "--start-servers", "report", "--quick", "--plots", "/tmp/x", NULL),
                     0);
    assert_int_equal(o.quick, 1);
    assert_string_equal(o.plots_dir, "/tmp/x");
    assert_int_equal(o.delivered[1], 200000); /* --quick: a smaller claimcost */
    assert_int_equal(parse(&o, "--start-servers", "report", "--no-claimcost", NULL), 0);
    assert_int_equal(o.no_claimcost, 1);
    assert_int_equal(
        parse(&o, "--start-servers", "report", "--no-claimcost", "--delivered", "1,2", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "report", "--rounds", "3", NULL), -1);
    assert_int_equal(parse(&o, "--start-servers", "drain", "--plots", "/tmp/x", NULL), -1);
}

static void
test_options_for_inner_command(void **state)
{
    bench_opts_t outer, in;

    (void)state;
    assert_int_equal(parse(&outer, "--db", "d", "--nats", "n", "--quiet", "report", "--quick",
                           "--json", "/tmp/r.json", NULL),
                     0);
    bench_options_for(&outer, BENCH_DRAIN, &in);
    assert_int_equal(in.cmd, BENCH_DRAIN);
    assert_string_equal(in.db, "d");
    assert_string_equal(in.nats, "n");
    assert_int_equal(in.quiet, 1);
    assert_null(in.json_file); /* the outer run writes the one document */
    assert_int_equal(in.nworkers, 3);
    assert_int_equal(in.messages, 100000);
    bench_options_for(&outer, BENCH_PRODUCER, &in);
    assert_int_equal(in.nconnections, 3);
    assert_true(in.seconds == 5);
    bench_options_for(&outer, BENCH_STEADY, &in);
    assert_true(in.seconds == 10);
    assert_int_equal(in.connections[0], 4);
}

/* A report part as the commands write it. */
static json_t *
part_of(json_t *results, int ok)
{
    return json_pack("{s:o, s:b}", "results", results, "ok", ok);
}

static void
test_figures_from_parts(void **state)
{
    json_t *drain =
        part_of(json_pack("[{s:i, s:f, s:[f, f]}, {s:i, s:f, s:[f]}, {s:i, s:f, s:[]}]", "workers",
                          1, "msgs_per_s", 30000.0, "worker_peak_rss_mb", 9.5, 11.0, "workers", 2,
                          "msgs_per_s", 52000.0, "worker_peak_rss_mb", 12.5, "workers", 4,
                          "msgs_per_s", 48000.0, "worker_peak_rss_mb"),
                1);
    json_t *raw =
        part_of(json_pack("[{s:s, s:f}, {s:s, s:f}]", "step", "sql: claim + mark", "msgs_per_s",
                          90000.0, "step", "claim + publish + mark", "msgs_per_s", 40000.0),
                1);
    json_t *steady = part_of(json_pack("{s:f, s:n}", "p99_ms", 4.5, "p50_ms"), 1);
    json_t *failed = part_of(json_pack("[{s:i, s:f}]", "workers", 1, "msgs_per_s", 9e9), 0);
    int w = 0;

    (void)state;
    assert_true(fig_drain_best(drain, &w) == 52000.0);
    assert_int_equal(w, 2);
    assert_true(fig_drain_at(drain, 4) == 48000.0);
    assert_true(isnan(fig_drain_at(drain, 3)));
    assert_true(fig_drain_rss(drain, 0) == 12.5);
    assert_true(fig_drain_rss(drain, 1) == 11.0);
    assert_true(isnan(fig_drain_rss(drain, 4))); /* no reading */
    assert_true(fig_raw_step(raw, "claim + publish + mark") == 40000.0);
    assert_true(isnan(fig_raw_step(raw, "nats")));
    assert_true(fig_result(steady, "p99_ms") == 4.5);
    assert_true(isnan(fig_result(steady, "p50_ms"))); /* null */
    assert_true(isnan(fig_result(steady, "p90_ms"))); /* absent */
    /* A failed or absent part gives no figure. */
    assert_true(isnan(fig_drain_best(failed, NULL)));
    assert_true(isnan(fig_drain_best(NULL, NULL)));
    assert_true(isnan(fig_top(failed, "msgs_per_s")));
    assert_true(fig_ratio(45, 50) == 0.9);
    assert_true(isnan(fig_ratio(45, 0)));
    assert_true(isnan(fig_ratio(NAN, 50)));
    json_decref(drain);
    json_decref(raw);
    json_decref(steady);
    json_decref(failed);
}

static void
test_target_checks(void **state)
{
    static const struct {
        double value;
        target_op_t op;
        double limit;
        int met;
        const char *verdict;
    } cases[] = {
        {50000, TARGET_GE, 50000, 1, "yes"},
        {49999, TARGET_GE, 50000, 0, "NO"},
        {9.99, TARGET_LT, 10, 1, "yes"},
        {10, TARGET_LT, 10, 0, "NO"},
        {2, TARGET_LE, 2, 1, "yes"},
        {2.01, TARGET_LE, 2, 0, "NO"},
        {NAN, TARGET_GE, 1, -1, "not measured"},
        {INFINITY, TARGET_LT, 50, 0, "NO"},
        {5, TARGET_INFO, 0, -1, "-"},
    };
    target_t t;
    char buf[160];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&t, 0, sizeof(t));
        t.value = cases[i].value;
        t.op = cases[i].op;
        t.limit = cases[i].limit;
        assert_int_equal(target_met(&t), cases[i].met);
        assert_string_equal(target_verdict(&t), cases[i].verdict);
    }
    memset(&t, 0, sizeof(t));
    t.value = 51496;
    t.op = TARGET_GE;
    t.limit = 50000;
    strcpy(t.unit, "msgs/s");
    strcpy(t.detail, "2 workers");
    target_value_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, "51496 msgs/s (2 workers)");
    target_limit_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, ">= 50000 msgs/s");
    t.value = 2.054;
    t.op = TARGET_LT;
    t.limit = 3;
    strcpy(t.unit, "ms");
    t.detail[0] = '\0';
    target_value_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, "2.05 ms");
    target_limit_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, "< 3 ms");
    t.value = NAN;
    target_value_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, "-");
    t.value = INFINITY;
    strcpy(t.detail, "12 messages missing");
    target_value_text(&t, buf, sizeof(buf));
    assert_string_equal(buf, "12 messages missing");
    assert_string_equal(target_verdict(&t), "NO");
    /* --quick: measured figures get no verdict; missing messages still NO */
    t.quick = 1;
    assert_string_equal(target_verdict(&t), "NO");
    t.value = 1;
    assert_string_equal(target_verdict(&t), "n/a (--quick)");
    t.value = 99;
    assert_string_equal(target_verdict(&t), "n/a (--quick)");
    assert_int_equal(target_met(&t), 0);
    t.value = NAN;
    assert_string_equal(target_verdict(&t), "not measured");
    t.op = TARGET_INFO;
    assert_string_equal(target_verdict(&t), "-");
}

static void
test_space_needed(void **state)
{
    (void)state;
    /* 10M delivered rows: the 12 GB the command asks for. */
    assert_true(space_needed(10000000) == (int64_t)12000000000);
    assert_true(space_needed(0) == 0);
    assert_true(space_needed(-5) == 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles_nearest_rank),
        cmocka_unit_test(test_percentiles_small_samples),
        cmocka_unit_test(test_percentile_exact_rank),
        cmocka_unit_test(test_latency_curve),
        cmocka_unit_test(test_diff_pct),
        cmocka_unit_test(test_parse_list),
        cmocka_unit_test(test_options_defaults_per_command),
        cmocka_unit_test(test_options_refused_where_they_do_not_apply),
        cmocka_unit_test(test_options_relay_args_split),
        cmocka_unit_test(test_options_claimcost_and_report),
        cmocka_unit_test(test_options_for_inner_command),
        cmocka_unit_test(test_figures_from_parts),
        cmocka_unit_test(test_target_checks),
        cmocka_unit_test(test_space_needed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
