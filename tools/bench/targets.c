/*
 * Figures from the parts' JSON and target checks (see targets.h). Every
 * reader checks the part's "ok" first and returns NaN for anything absent
 * or of the wrong type, so a summary never invents a figure.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "targets.h"

int
target_met(const target_t *t)
{
    if (t->op == TARGET_INFO || isnan(t->value))
        return -1;
    switch (t->op) {
    case TARGET_GE: return t->value >= t->limit;
    case TARGET_LT: return t->value < t->limit;
    case TARGET_LE: return t->value <= t->limit;
    case TARGET_INFO: break;
    }
    return -1;
}

const char *
target_verdict(const target_t *t)
{
    if (t->op == TARGET_INFO)
        return "-";
    /* Quick sizes give no verdict (a NO would read as a failure), but a
     * figure missed for a stated reason (messages missing) still says NO. */
    if (t->quick && target_met(t) >= 0 && !isinf(t->value))
        return "n/a (--quick)";
    switch (target_met(t)) {
    case 1: return "yes";
    case 0: return "NO";
    }
    return "not measured";
}

/* Figures: whole numbers above 100, else three significant decimals. */
static const char *
num_fmt(double v)
{
    return fabs(v) >= 100 ? "%.0f" : fabs(v) >= 10 ? "%.1f" : "%.2f";
}

void
target_value_text(const target_t *t, char *out, size_t len)
{
    int n;

    if (isnan(t->value) || isinf(t->value)) { /* inf: no value, the detail says why */
        snprintf(out, len, "%s", isinf(t->value) && t->detail[0] ? t->detail : "-");
        return;
    }
    n = snprintf(out, len, num_fmt(t->value), t->value);
    if (n < 0 || (size_t)n >= len)
        return;
    snprintf(out + n, len - (size_t)n, "%s%s%s%s%s", t->unit[0] ? " " : "", t->unit,
             t->detail[0] ? " (" : "", t->detail, t->detail[0] ? ")" : "");
}

void
target_limit_text(const target_t *t, char *out, size_t len)
{
    const char *op = t->op == TARGET_GE ? ">= " : t->op == TARGET_LT ? "< " : "<= ";
    int n;

    if (t->op == TARGET_INFO) {
        snprintf(out, len, "-");
        return;
    }
    n = snprintf(out, len, "%s", op);
    if (n < 0 || (size_t)n >= len)
        return;
    n += snprintf(out + n, len - (size_t)n, "%g", t->limit);
    if ((size_t)n < len && t->unit[0])
        snprintf(out + n, len - (size_t)n, " %s", t->unit);
}

/* part["results"] of a part that ran to the end, else NULL. */
static const json_t *
results(const json_t *part)
{
    if (!json_is_object(part) || !json_is_true(json_object_get(part, "ok")))
        return NULL;
    return json_object_get(part, "results");
}

static double
num(const json_t *v)
{
    return json_is_number(v) ? json_number_value(v) : NAN;
}

double
fig_result(const json_t *part, const char *key)
{
    const json_t *r = results(part);

    return json_is_object(r) ? num(json_object_get(r, key)) : NAN;
}

double
fig_top(const json_t *part, const char *key)
{
    if (!json_is_object(part) || !json_is_true(json_object_get(part, "ok")))
        return NAN;
    return num(json_object_get(part, key));
}

double
fig_drain_best(const json_t *part, int *workers)
{
    const json_t *r = results(part), *row;
    double best = NAN, v;
    size_t i;

    json_array_foreach(r, i, row)
    {
        v = num(json_object_get(row, "msgs_per_s"));
        if (!isnan(v) && (isnan(best) || v > best)) {
            best = v;
            if (workers != NULL)
                *workers = (int)json_integer_value(json_object_get(row, "workers"));
        }
    }
    return best;
}

double
fig_drain_at(const json_t *part, int workers)
{
    const json_t *r = results(part), *row;
    size_t i;

    json_array_foreach(r, i, row)
    {
        if (json_integer_value(json_object_get(row, "workers")) == workers)
            return num(json_object_get(row, "msgs_per_s"));
    }
    return NAN;
}

double
fig_drain_rss(const json_t *part, int workers)
{
    const json_t *r = results(part), *row, *mb;
    double most = NAN, v;
    size_t i, j;

    json_array_foreach(r, i, row)
    {
        if (workers != 0 && json_integer_value(json_object_get(row, "workers")) != workers)
            continue;
        json_array_foreach(json_object_get(row, "worker_peak_rss_mb"), j, mb)
        {
            v = num(mb);
            if (!isnan(v) && (isnan(most) || v > most))
                most = v;
        }
    }
    return most;
}

double
fig_raw_step(const json_t *part, const char *step)
{
    const json_t *r = results(part), *row;
    const char *name;
    size_t i;

    json_array_foreach(r, i, row)
    {
        name = json_string_value(json_object_get(row, "step"));
        if (name != NULL && strcmp(name, step) == 0)
            return num(json_object_get(row, "msgs_per_s"));
    }
    return NAN;
}

double
fig_ratio(double a, double b)
{
    if (isnan(a) || isnan(b) || b <= 0)
        return NAN;
    return a / b;
}
