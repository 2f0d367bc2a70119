/*
 * Plot files for report --plots. Data files hold plain columns with a
 * comment header, so they serve any other plotting tool as well. gnuplot
 * runs with DIR as its working directory (a `cd` before the script), so the
 * script names its files relative to DIR and can be re-run by hand there.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plots.h"
#include "proc.h"
#include "util.h"

#define GNUPLOT_TIMEOUT_MS 60000
#define SCRIPT "report.gp"

int
plots_prepare(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        bench_err("--plots %s: mkdir failed: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        bench_err("--plots %s: not a directory", dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        bench_err("--plots %s: not writable: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* fopen DIR/name for writing; NULL with an error. */
static FILE *
open_in(const char *dir, const char *name)
{
    char path[PATH_MAX];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((f = fopen(path, "w")) == NULL)
        bench_err("plots: cannot write %s: %s", path, strerror(errno));
    return f;
}

static int
close_checked(FILE *f, const char *dir, const char *name)
{
    int bad = ferror(f);

    if (fclose(f) != 0 || bad) {
        bench_err("plots: writing %s/%s failed", dir, name);
        return -1;
    }
    return 0;
}

/* DIR/<key>.dat with "workers msgs_per_s" rows; 1 written, 0 no figures,
 * -1 error. */
static int
write_throughput(const char *dir, const plot_series_t *s)
{
    const json_t *rows = json_object_get(s->part, "results"), *row;
    char name[128];
    FILE *f;
    size_t i;
    int n = 0;

    if (!json_is_true(json_object_get(s->part, "ok")) || json_array_size(rows) == 0)
        return 0;
    snprintf(name, sizeof(name), "%s.dat", s->key);
    if ((f = open_in(dir, name)) == NULL)
        return -1;
    fprintf(f, "# %s: relay workers, msgs/s (outboxbench report)\n", s->label);
    json_array_foreach(rows, i, row)
    {
        const json_t *w = json_object_get(row, "workers"), *m = json_object_get(row, "msgs_per_s");

        if (json_is_integer(w) && json_is_number(m)) {
            fprintf(f, "%lld %.1f\n", (long long)json_integer_value(w), json_number_value(m));
            n++;
        }
    }
    if (close_checked(f, dir, name) != 0)
        return -1;
    return n > 0;
}

/* DIR/<key>.dat with "latency_ms fraction" rows from the steady curve. */
static int
write_latency(const char *dir, const plot_series_t *s)
{
    const json_t *res = json_object_get(s->part, "results");
    const json_t *curve = json_object_get(res, "latency_curve"), *pt;
    char name[128];
    FILE *f;
    size_t i;
    int n = 0;

    if (json_array_size(curve) == 0)
        return 0;
    snprintf(name, sizeof(name), "%s.dat", s->key);
    if ((f = open_in(dir, name)) == NULL)
        return -1;
    fprintf(f, "# %s: latency ms, fraction of messages at or below (outboxbench report)\n",
            s->label);
    json_array_foreach(curve, i, pt)
    {
        double p = json_number_value(json_array_get(pt, 0));
        double ms = json_number_value(json_array_get(pt, 1));

        if (ms > 0) { /* log-scale x */
            fprintf(f, "%.4f %.6f\n", ms, p / 100);
            n++;
        }
    }
    if (close_checked(f, dir, name) != 0)
        return -1;
    return n > 0;
}

static void
plot_cmd(FILE *f, const plot_series_t *s, const int *have, int n, const char *style)
{
    int i, first = 1;

    for (i = 0; i < n; i++) {
        if (!have[i])
            continue;
        fprintf(f, "%s'%s.dat' using 1:2 with %s title \"%s\"", first ? "plot " : ", \\\n     ",
                s[i].key, style, s[i].label);
        first = 0;
    }
}

/* The largest worker count of the drain series: the x range's end. */
static double
max_workers(const plot_series_t *s, int n)
{
    const json_t *row;
    double most = 1;
    size_t j;
    int i;

    for (i = 0; i < n; i++) {
        json_array_foreach(json_object_get(s[i].part, "results"), j, row)
        {
            double w = (double)json_integer_value(json_object_get(row, "workers"));

            most = w > most ? w : most;
        }
    }
    return most;
}

static int
write_script(const char *dir, const plot_series_t *thr, const int *have_thr, int nthr,
             double raw_mps, const char *raw_label, const plot_series_t *lat, const int *have_lat,
             int nlat, int *nplots)
{
    FILE *f;
    int i, any_thr = 0, any_lat = 0;

    for (i = 0; i < nthr; i++)
        any_thr |= have_thr[i];
    for (i = 0; i < nlat; i++)
        any_lat |= have_lat[i];
    *nplots = any_thr + any_lat;
    if ((f = open_in(dir, SCRIPT)) == NULL)
        return -1;
    fprintf(f,
            "# outboxbench report --plots: run `gnuplot %s` in this directory\n"
            "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
            "    set terminal pngcairo size 1000,650 noenhanced\n"
            "} else {\n"
            "    set terminal png size 1000,650 noenhanced\n"
            "}\n"
            "set grid\n",
            SCRIPT);
    if (any_thr) {
        fprintf(f,
                "\nset output 'throughput.png'\n"
                "set title 'outboxd drain: messages/s against relay workers'\n"
                "set xlabel 'relay workers'\nset ylabel 'messages/s'\n"
                "set logscale x 2\nset xtics (1, 2, 4, 8, 16, 32, 64)\n"
                "set xrange [0.8:%.2f]\nset yrange [0:*]\nset key below\n",
                max_workers(thr, nthr) * 1.25);
        plot_cmd(f, thr, have_thr, nthr, "linespoints lw 2");
        if (!isnan(raw_mps))
            fprintf(f, ", \\\n     %.0f with lines dt 2 lw 2 title \"%s\"", raw_mps, raw_label);
        fprintf(f, "\n");
    }
    if (any_lat) {
        fprintf(f, "\nset output 'latency.png'\n"
                   "set title 'steady: latency COMMIT sent -> NATS receipt (CDF)'\n"
                   "set xlabel 'latency (ms, log scale)'\nset ylabel 'fraction of messages'\n"
                   "set logscale x 10\nset xtics auto\nset xrange [*:*]\nset yrange [0:1]\n"
                   "set key below\n");
        plot_cmd(f, lat, have_lat, nlat, "lines lw 2");
        fprintf(f, "\n");
    }
    return close_checked(f, dir, SCRIPT);
}

/* gnuplot's path from PATH into out; 0 found, -1 not. */
static int
find_gnuplot(char *out, size_t len)
{
    const char *path = getenv("PATH"), *p, *colon;
    size_t n;

    for (p = path; p != NULL && *p != '\0'; p = colon != NULL ? colon + 1 : NULL) {
        colon = strchr(p, ':');
        n = colon != NULL ? (size_t)(colon - p) : strlen(p);
        if (n == 0 || n + 9 >= len)
            continue;
        snprintf(out, len, "%.*s/gnuplot", (int)n, p);
        if (access(out, X_OK) == 0)
            return 0;
    }
    return -1;
}

static int
run_gnuplot(const char *dir, int nplots)
{
    char gp[PATH_MAX], abs[PATH_MAX], cd[PATH_MAX + 8], script[PATH_MAX + 16], log[PATH_MAX + 16];
    char tail[512];
    char *argv[5];

    if (find_gnuplot(gp, sizeof(gp)) != 0) {
        bench_info("plots: gnuplot is not on PATH: data and %s kept in %s (run gnuplot there "
                   "for the PNGs)",
                   SCRIPT, dir);
        return 0;
    }
    if (realpath(dir, abs) == NULL) {
        bench_err("plots: realpath(%s) failed: %s", dir, strerror(errno));
        return -1;
    }
    if (strchr(abs, '\'') != NULL) {
        bench_err("plots: %s contains a quote, which gnuplot's cd cannot take: run %s there "
                  "by hand",
                  abs, SCRIPT);
        return -1;
    }
    snprintf(cd, sizeof(cd), "cd '%s'", abs);
    snprintf(script, sizeof(script), "%s/%s", abs, SCRIPT);
    snprintf(log, sizeof(log), "%s/gnuplot.log", abs);
    unlink(log);
    argv[0] = gp;
    argv[1] = "-e";
    argv[2] = cd;
    argv[3] = script;
    argv[4] = NULL;
    if (proc_run(argv, log, GNUPLOT_TIMEOUT_MS) != 0) {
        proc_log_tail(log, tail, sizeof(tail));
        bench_err("plots: gnuplot %s failed (log %s): %s", script, log, tail);
        return -1;
    }
    unlink(log); /* empty when all went well */
    bench_info("plots: gnuplot drew %d PNG(s) in %s", nplots, abs);
    return 0;
}

int
plots_write(const char *dir, const plot_series_t *thr, int nthr, double raw_mps,
            const char *raw_label, const plot_series_t *lat, int nlat)
{
    int have_thr[16] = {0}, have_lat[16] = {0}, i, nplots = 0;

    if (nthr > 16 || nlat > 16)
        return -1;
    for (i = 0; i < nthr; i++)
        if ((have_thr[i] = write_throughput(dir, &thr[i])) < 0)
            return -1;
    for (i = 0; i < nlat; i++)
        if ((have_lat[i] = write_latency(dir, &lat[i])) < 0)
            return -1;
    if (write_script(dir, thr, have_thr, nthr, raw_mps, raw_label, lat, have_lat, nlat, &nplots) !=
        0)
        return -1;
    if (nplots == 0) {
        bench_info("plots: no figures to plot (every drain and steady part failed)");
        return 0;
    }
    bench_info("plots: data and %s written to %s", SCRIPT, dir);
    return run_gnuplot(dir, nplots);
}
