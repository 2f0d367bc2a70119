/*
 * report's summary: figures read back from the parts' JSON (what each
 * command put in its document) and the targets they are held to. Pure, no
 * I/O. A part that failed ("ok": false) or is absent yields no figure (NaN):
 * its target reads "not measured", never "met".
 */
#ifndef BENCH_TARGETS_H
#define BENCH_TARGETS_H

#include <stddef.h>

#include <jansson.h>

typedef enum target_op {
    TARGET_GE,  /* value >= limit */
    TARGET_LT,  /* value < limit */
    TARGET_LE,  /* value <= limit */
    TARGET_INFO /* a figure shown with the targets, held to none */
} target_op_t;

typedef struct target {
    char name[96];
    double value; /* NaN: not measured; INFINITY: missed, detail says why */
    target_op_t op;
    double limit;
    char unit[16];   /* "msgs/s", "ms", "MiB", "%", "" */
    char detail[64]; /* shown after the value: "2 workers", "52000 / 56000" */
    int quick;       /* measured at --quick sizes: too small to be held to the target */
} target_t;

/* 1 met, 0 missed, -1 not measured or TARGET_INFO (quick does not change it). */
int target_met(const target_t *t);
/* "yes", "NO", "not measured", "n/a (--quick)" (measured at quick sizes;
 * a value missed for a stated reason stays "NO") or "-" (TARGET_INFO). */
const char *target_verdict(const target_t *t);
/* "value unit (detail)" and ">= limit unit" for the summary table. */
void target_value_text(const target_t *t, char *out, size_t len);
void target_limit_text(const target_t *t, char *out, size_t len);

/* part["results"][key] of an object results (steady). */
double fig_result(const json_t *part, const char *key);
/* part[key] (claimcost's claim_p50_ratio). */
double fig_top(const json_t *part, const char *key);
/* drain: the highest msgs_per_s of its rows; *workers (may be NULL) gets
 * that row's worker count. */
double fig_drain_best(const json_t *part, int *workers);
/* drain: msgs_per_s of the row with this worker count. */
double fig_drain_at(const json_t *part, int workers);
/* drain: the largest worker_peak_rss_mb of the rows (workers 0) or of the
 * row with this worker count. */
double fig_drain_rss(const json_t *part, int workers);
/* raw: msgs_per_s of the step named step ("claim + publish + mark"). */
double fig_raw_step(const json_t *part, const char *step);
/* a / b; NaN when either is NaN or b <= 0. */
double fig_ratio(double a, double b);

#endif
