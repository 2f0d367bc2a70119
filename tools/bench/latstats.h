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

/* Percent difference of x against base ((x - base) / base * 100); 0 when
 * base is 0. */
double stats_diff_pct(double x, double base);

#endif
