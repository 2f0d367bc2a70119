/*
 * report --plots DIR: gnuplot data files and one script (report.gp) in DIR,
 * then, when gnuplot is on PATH, the two PNGs it draws: drain throughput
 * against relay workers (a line per series) and the steady runs' latency
 * distribution (CDF, log-scale x). Without gnuplot the data and the script
 * stay for later (`cd DIR && gnuplot report.gp`).
 */
#ifndef BENCH_PLOTS_H
#define BENCH_PLOTS_H

#include <jansson.h>

typedef struct plot_series {
    const char *key;    /* data file name: DIR/<key>.dat */
    const char *label;  /* legend */
    const json_t *part; /* drain or steady part of the report; borrowed */
} plot_series_t;

/* Create DIR if missing and check it is a writable directory; 0 or -1
 * (error printed). Called before a long run, so it fails early. */
int plots_prepare(const char *dir);

/* Write the data and report.gp, then run gnuplot if present. thr: drain
 * parts (rows workers -> msgs_per_s); raw_mps: a dashed reference line
 * (NaN: none); lat: steady parts with a latency_curve. A series without
 * figures is left out. 0, or -1 when writing failed or gnuplot did (error
 * printed); no gnuplot is not a failure. */
int plots_write(const char *dir, const plot_series_t *thr, int nthr, double raw_mps,
                const char *raw_label, const plot_series_t *lat, int nlat);

#endif
