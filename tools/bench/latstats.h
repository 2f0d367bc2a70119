/*
 * Latency statistics over a sample of microsecond values: nearest-rank
 * percentiles (the value below which p% of the sample lies, never an
 * interpolation that no message actually had), mean and max.
 */
#ifndef BENCH_LATSTATS_H
#define BENCH_LATSTATS_H

#include <stddef.h>
#include <stdint.h>

typedef struct lat_summary {
    size_t n;
    int64_t p50, p90, p99, p999, max, min;
    double mean;
} lat_summary_t;

/* Sorts v in place. With n == 0 everything is 0. */
void stats_summarize(int64_t *v, size_t n, lat_summary_t *out);
/* Nearest-rank percentile p (0 < p <= 100, at most three decimals) of
 * sorted v[0..n), n > 0. */
int64_t stats_percentile(const int64_t *sorted, size_t n, double p);

/* A percentile curve of sorted v[0..n) for plots: (p, value) pairs at
 * p = 0 (the minimum), every 0.5 to 99, every 0.05 to 99.9, every 0.005 to
 * 99.99, then 99.999 and 100: dense where a latency tail lives. Writes at
 * most max pairs (STATS_CURVE_MAX is all of them); returns the count, 0
 * when n is 0. */
#define STATS_CURVE_MAX 240
size_t stats_curve(const int64_t *sorted, size_t n, double *p, int64_t *v, size_t max);

/* Percent difference of x against base ((x - base) / base * 100); 0 when
 * base is 0. */
double stats_diff_pct(double x, double base);

#endif
