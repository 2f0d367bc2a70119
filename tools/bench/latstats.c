/* Percentiles by sorting: samples are at most a few million values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "latstats.h"

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* rank = ceil(p / 100 * n) in integers: in floating point 99.9 / 100 * 1000
 * is 999.0000000000001 and the rank came out one too high. */
int64_t
stats_percentile(const int64_t *sorted, size_t n, double p)
{
    uint64_t milli = (uint64_t)llround(p * 1000); /* p in thousandths of a percent */
    uint64_t rank = (milli * (uint64_t)n + 99999) / 100000;
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;

    return sorted[i < n ? i : n - 1];
}

void
stats_summarize(int64_t *v, size_t n, lat_summary_t *out)
{
    double sum = 0;
    size_t i;

    memset(out, 0, sizeof(*out));
    out->n = n;
    if (n == 0)
        return;
    qsort(v, n, sizeof(*v), cmp_i64);
    for (i = 0; i < n; i++)
        sum += (double)v[i];
    out->mean = sum / (double)n;
    out->min = v[0];
    out->max = v[n - 1];
    out->p50 = stats_percentile(v, n, 50);
    out->p90 = stats_percentile(v, n, 90);
    out->p99 = stats_percentile(v, n, 99);
    out->p999 = stats_percentile(v, n, 99.9);
}

/* The curve's percentiles, in integer steps so none drifts (0.5 * k, not
 * a sum of 0.5s). */
static size_t
curve_points(double *p, size_t max)
{
    size_t n = 0;
    int k;

    if (n < max)
        p[n++] = 0;
    for (k = 1; k <= 198 && n < max; k++)
        p[n++] = k * 0.5;
    for (k = 1; k <= 18 && n < max; k++)
        p[n++] = 99 + k * 0.05;
    for (k = 1; k <= 18 && n < max; k++)
        p[n++] = 99.9 + k * 0.005;
    if (n < max)
        p[n++] = 99.999;
    if (n < max)
        p[n++] = 100;
    return n;
}

size_t
stats_curve(const int64_t *sorted, size_t n, double *p, int64_t *v, size_t max)
{
    size_t i, np;

    if (n == 0)
        return 0;
    np = curve_points(p, max);
    for (i = 0; i < np; i++)
        v[i] = p[i] == 0 ? sorted[0] : stats_percentile(sorted, n, p[i]);
    return np;
}

double
stats_diff_pct(double x, double base)
{
    return base == 0 ? 0 : (x - base) / base * 100.0;
}
