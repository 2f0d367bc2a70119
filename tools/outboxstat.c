/*
 * outboxstat: show an outboxd instance's stats region (live view, one frame,
 * JSON or Prometheus text). Maps the region read-only and never locks;
 * counter names come from the region, not from this binary, so a newer
 * daemon's counters show. Links only outbox_stats (libc).
 * Exit: 0 ok, 1 no instance / layout differs / permission, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

#define STALE_US (5 * 1000000LL) /* supervisor heartbeat older than this: STALE */

enum { MODE_LIVE, MODE_ONCE, MODE_JSON, MODE_PROM };

static const struct {
    const char *name, *help;
} known[] = {
#define OUTBOX_COUNTER(sym, name, help) {name, help},
#include "stats_counters.def"
#undef OUTBOX_COUNTER
};

static const char *const sup_states[] = {"running", "reloading", "rolling", "stopping"};

static volatile sig_atomic_t stop;

static void
on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: outboxstat [-i NAME] [-1] [--json] [--prometheus] [-d SECONDS]\n"
            "  -i, --instance NAME  instance to show (default $OUTBOX_INSTANCE or \"default\")\n"
            "  -1, --once           print one frame and exit (rates need -d)\n"
            "      --json           print one snapshot as JSON and exit\n"
            "      --prometheus     print one snapshot in Prometheus text format and exit\n"
            "  -d, --delay SECONDS  refresh interval of the live view (default 1); with -1,\n"
            "                       the interval rates are measured over\n"
            "  -h, --help           this text\n"
            "Exit status: 0 ok, 1 instance not running / layout differs / permission, 2 usage.\n");
}

/* Sleeps; returns early when a signal set stop. */
static void
sleep_s(double s)
{
    struct timespec ts;

    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static const char *
sup_state_name(unsigned s)
{
    return s < sizeof(sup_states) / sizeof(sup_states[0]) ? sup_states[s] : "unknown";
}

static const char *
role_name(unsigned role)
{
    return role == OUTBOX_ROLE_KEEPER ? "keeper" : role == OUTBOX_ROLE_RELAY ? "relay" : "?";
}

/* Index of a counter in the region's own table, -1 if it has none. */
static int
counter_index(const outbox_stats_snapshot_t *s, const char *name)
{
    unsigned i;

    for (i = 0; i < s->ncounters; i++) {
        if (strcmp(s->counter_names[i], name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static const char *
counter_help(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(known[i].name, name) == 0) {
            return known[i].help;
        }
    }
    return "counter published by the daemon (unknown to this outboxstat)";
}

/* Upper bound of histogram bucket b in us (exact; +Inf for the last). */
static double
bucket_upper_us(unsigned b)
{
    unsigned k;

    if (b == 0) {
        return 1;
    }
    if (b >= OUTBOX_STATS_HIST_BUCKETS - 1) {
        return INFINITY;
    }
    k = (b - 1) / 2;
    return (b & 1) ? 1.5 * (double)(1ULL << k) : (double)(1ULL << (k + 1));
}

static bool
is_stale(const outbox_stats_region_t *r, const outbox_stats_snapshot_t *s)
{
    return !outbox_stats_supervisor_alive(r) || s->taken_us - s->sup_heartbeat_us > STALE_US;
}

/* ---- text ---- */

static void
fmt_age(char *buf, size_t len, int64_t us)
{
    int64_t s;

    if (us < 0) {
        us = 0;
    }
    s = us / 1000000;
    if (s < 10) {
        snprintf(buf, len, "%.1fs", (double)us / 1e6);
    } else if (s < 60) {
        snprintf(buf, len, "%" PRId64 "s", s);
    } else if (s < 3600) {
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    } else if (s < 86400) {
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
    } else {
        snprintf(buf, len, "%" PRId64 "d%02" PRId64 "h", s / 86400, s / 3600 % 24);
    }
}

static void
fmt_lat(char *buf, size_t len, uint64_t us)
{
    if (us < 1000) {
        snprintf(buf, len, "%" PRIu64 "us", us);
    } else if (us < 1000000) {
        snprintf(buf, len, "%.1fms", (double)us / 1e3);
    } else {
        snprintf(buf, len, "%.2fs", (double)us / 1e6);
    }
}

static void
fmt_u64(char *buf, size_t len, const uint64_t *v, int idx)
{
    if (idx < 0) {
        snprintf(buf, len, "-");
    } else {
        snprintf(buf, len, "%" PRIu64, v[idx]);
    }
}

static void
fmt_rate(char *buf, size_t len, uint64_t cur, uint64_t prev, int64_t dt_us)
{
    if (dt_us <= 0 || cur < prev) {
        snprintf(buf, len, "-");
    } else {
        snprintf(buf, len, "%.1f", (double)(cur - prev) * 1e6 / (double)dt_us);
    }
}

/* The previous frame's snapshot of the same process in the same slot. */
static const outbox_stats_slot_snap_t *
prev_slot(const outbox_stats_snapshot_t *prev, int index, const outbox_stats_slot_snap_t *cur)
{
    unsigned i;

    for (i = 0; i < prev->nslots; i++) {
        const outbox_stats_slot_snap_t *p = &prev->slot[i];

        if (prev->slot_index[i] == index && p->pid == cur->pid &&
            p->incarnation == cur->incarnation && p->started_us == cur->started_us) {
            return p;
        }
    }
    return NULL;
}

#define ROW "%4s %-6s %3s %7s %-10s %6s %5s %10s %8s %7s %6s %6s %7s %6s %8s  %s\n"

static void
print_frame(FILE *f, const outbox_stats_region_t *r, const outbox_stats_snapshot_t *s,
            const outbox_stats_snapshot_t *prev)
{
    int di = counter_index(s, "delivered"), fi = counter_index(s, "failed");
    int xi = counter_index(s, "dead"), dbi = counter_index(s, "db_errors");
    int pi = counter_index(s, "publish_errors");
    char up[32], age[32], del[24], rate[24], fl[24], dd[24], db[24], pe[24], bs[24], lat[24];
    char slot[16], no[16], pid[24], p50[24], p90[24], p99[24];
    int64_t dt = 0;
    bool alive = outbox_stats_supervisor_alive(r);
    uint64_t nbatches = 0;
    unsigned i, b;

    if (prev != NULL && prev->generation == s->generation && prev->start_us == s->start_us) {
        dt = s->taken_us - prev->taken_us;
    } else {
        prev = NULL;
    }
    fmt_age(up, sizeof(up), s->taken_us - s->start_us);
    fprintf(f,
            "outboxd \"%s\"  pid %" PRId64 "  up %s  run %" PRIu64 "  %s  workers %u/%u"
            "  spawns %" PRIu64 "  crashes %" PRIu64 "  restarts %" PRIu64 "  reloads %" PRIu64
            " ok, %" PRIu64 " failed  heartbeat kills %" PRIu64,
            s->instance, s->supervisor_pid, up, s->generation, sup_state_name(s->sup_state),
            s->live_workers, s->target_workers, s->spawns, s->crashes, s->restarts, s->reloads,
            s->reload_errors, s->heartbeat_kills);
    if (!alive) {
        fprintf(f, "  STALE (supervisor pid %" PRId64 " is gone)", s->supervisor_pid);
    } else if (is_stale(r, s)) {
        fmt_age(age, sizeof(age), s->taken_us - s->sup_heartbeat_us);
        fprintf(f, "  STALE (supervisor heartbeat %s ago)", age);
    }
    fprintf(f, "\n\n");
    fprintf(f, ROW, "SLOT", "ROLE", "NO", "PID", "STATE", "HB", "READY", "DELIVERED", "MSG/S",
            "FAILED", "DEAD", "DB_ERR", "PUB_ERR", "BATCH", "LATENCY", "LOCK_ID");
    for (i = 0; i < s->nslots; i++) {
        const outbox_stats_slot_snap_t *w = &s->slot[i];
        const outbox_stats_slot_snap_t *p = prev ? prev_slot(prev, s->slot_index[i], w) : NULL;

        snprintf(slot, sizeof(slot), "%d", s->slot_index[i]);
        if (w->role == OUTBOX_ROLE_KEEPER)
            snprintf(no, sizeof(no), "-"); /* not a relay number */
        else
            snprintf(no, sizeof(no), "%u", w->worker_no);
        snprintf(pid, sizeof(pid), "%" PRId64, w->pid);
        fmt_age(age, sizeof(age), s->taken_us - w->heartbeat_us);
        fmt_u64(del, sizeof(del), w->counters, di);
        if (p != NULL && di >= 0) {
            fmt_rate(rate, sizeof(rate), w->counters[di], p->counters[di], dt);
        } else {
            snprintf(rate, sizeof(rate), "-");
        }
        fmt_u64(fl, sizeof(fl), w->counters, fi);
        fmt_u64(dd, sizeof(dd), w->counters, xi);
        fmt_u64(db, sizeof(db), w->counters, dbi);
        fmt_u64(pe, sizeof(pe), w->counters, pi);
        if (w->last_batch_size == 0 && w->last_batch_us == 0) {
            snprintf(bs, sizeof(bs), "-");
            snprintf(lat, sizeof(lat), "-");
        } else {
            snprintf(bs, sizeof(bs), "%" PRIu64, w->last_batch_size);
            fmt_lat(lat, sizeof(lat), w->last_batch_us);
        }
        fprintf(f, ROW, slot, role_name(w->role), no, pid, outbox_worker_state_name(w->state), age,
                w->ready_us ? "yes" : "no", del, rate, fl, dd, db, pe, bs, lat, w->lock_id);
    }
    fmt_u64(del, sizeof(del), s->total, di);
    if (prev != NULL && di >= 0) {
        fmt_rate(rate, sizeof(rate), s->total[di], prev->total[di], dt);
    } else {
        snprintf(rate, sizeof(rate), "-");
    }
    fmt_u64(fl, sizeof(fl), s->total, fi);
    fmt_u64(dd, sizeof(dd), s->total, xi);
    fmt_u64(db, sizeof(db), s->total, dbi);
    fmt_u64(pe, sizeof(pe), s->total, pi);
    fprintf(f, ROW, "TOTAL", "", "", "", "", "", "", del, rate, fl, dd, db, pe, "", "",
            "(live + retired workers)");
    for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
        nbatches += s->total_hist[b];
    }
    fmt_lat(p50, sizeof(p50), outbox_stats_hist_quantile(s->total_hist, 0.50));
    fmt_lat(p90, sizeof(p90), outbox_stats_hist_quantile(s->total_hist, 0.90));
    fmt_lat(p99, sizeof(p99), outbox_stats_hist_quantile(s->total_hist, 0.99));
    if (nbatches > 0) {
        fprintf(f,
                "\nbatch latency (bucket upper bounds): p50 %s  p90 %s  p99 %s  (%" PRIu64
                " batches)\n",
                p50, p90, p99, nbatches);
    } else {
        fprintf(f, "\nbatch latency: no batches yet\n");
    }
}

/* ---- JSON ---- */

static void
json_str(FILE *f, const char *s, size_t max)
{
    size_t i;

    fputc('"', f);
    for (i = 0; i < max && s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
        } else if (c < 0x20 || c >= 0x7f) { /* region bytes: keep the output valid JSON */
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

static void
json_counters(FILE *f, const outbox_stats_snapshot_t *s, const uint64_t *v)
{
    unsigned i;

    fputc('{', f);
    for (i = 0; i < s->ncounters; i++) {
        fprintf(f, "%s", i ? "," : "");
        json_str(f, s->counter_names[i], OUTBOX_STATS_CNAME_MAX);
        fprintf(f, ":%" PRIu64, v[i]);
    }
    fputc('}', f);
}

static void
print_json(FILE *f, const outbox_stats_region_t *r, const outbox_stats_snapshot_t *s)
{
    uint64_t n = 0;
    unsigned i;

    for (i = 0; i < OUTBOX_STATS_HIST_BUCKETS; i++) {
        n += s->total_hist[i];
    }
    fprintf(f, "{\"instance\":");
    json_str(f, s->instance, sizeof(s->instance));
    fprintf(f,
            ",\"supervisor_pid\":%" PRId64 ",\"generation\":%" PRIu64 ",\"start_us\":%" PRId64
            ",\"taken_us\":%" PRId64 ",\"state\":\"%s\",\"target_workers\":%u"
            ",\"live_workers\":%u,\"sup_heartbeat_us\":%" PRId64
            ",\"supervisor_alive\":%s,\"stale\":%s",
            s->supervisor_pid, s->generation, s->start_us, s->taken_us,
            is_stale(r, s) ? "stale" : sup_state_name(s->sup_state), s->target_workers,
            s->live_workers, s->sup_heartbeat_us,
            outbox_stats_supervisor_alive(r) ? "true" : "false", is_stale(r, s) ? "true" : "false");
    fprintf(f,
            ",\"supervisor\":{\"spawns\":%" PRIu64 ",\"crashes\":%" PRIu64 ",\"restarts\":%" PRIu64
            ",\"reloads\":%" PRIu64 ",\"reload_errors\":%" PRIu64 ",\"heartbeat_kills\":%" PRIu64
            "}",
            s->spawns, s->crashes, s->restarts, s->reloads, s->reload_errors, s->heartbeat_kills);
    fprintf(f, ",\"totals\":");
    json_counters(f, s, s->total);
    fprintf(f,
            ",\"latency_us\":{\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p90\":%" PRIu64
            ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64 ",\"max_bucket\":%" PRIu64 "}",
            n, outbox_stats_hist_quantile(s->total_hist, 0.50),
            outbox_stats_hist_quantile(s->total_hist, 0.90),
            outbox_stats_hist_quantile(s->total_hist, 0.99),
            outbox_stats_hist_quantile(s->total_hist, 0.999),
            outbox_stats_hist_quantile(s->total_hist, 1.0));
    fprintf(f, ",\"workers\":[");
    for (i = 0; i < s->nslots; i++) {
        const outbox_stats_slot_snap_t *w = &s->slot[i];

        fprintf(f,
                "%s{\"slot\":%d,\"role\":\"%s\",\"worker_no\":%u,\"pid\":%" PRId64
                ",\"state\":\"%s\",\"lock_id\":",
                i ? "," : "", s->slot_index[i], role_name(w->role), w->worker_no, w->pid,
                outbox_worker_state_name(w->state));
        json_str(f, w->lock_id, sizeof(w->lock_id));
        fprintf(f,
                ",\"incarnation\":%" PRIu64 ",\"started_us\":%" PRId64 ",\"ready_us\":%" PRId64
                ",\"heartbeat_us\":%" PRId64 ",\"heartbeat_age_ms\":%" PRId64
                ",\"last_batch_size\":%" PRIu64 ",\"last_batch_us\":%" PRIu64 ",\"counters\":",
                w->incarnation, w->started_us, w->ready_us, w->heartbeat_us,
                (s->taken_us - w->heartbeat_us) / 1000, w->last_batch_size, w->last_batch_us);
        json_counters(f, s, w->counters);
        fputc('}', f);
    }
    fprintf(f, "]}\n");
}

/* ---- Prometheus text format ---- */

/* A label value: \, " and newline escaped. */
static void
prom_value(FILE *f, const char *s, size_t max)
{
    size_t i;

    for (i = 0; i < max && s[i] != '\0'; i++) {
        if (s[i] == '\\' || s[i] == '"') {
            fprintf(f, "\\%c", s[i]);
        } else if (s[i] == '\n') {
            fputs("\\n", f);
        } else {
            fputc(s[i], f);
        }
    }
}

/* A metric-name part: anything outside [A-Za-z0-9_] becomes _. */
static void
prom_name(char *out, size_t len, const char *s)
{
    size_t i;

    for (i = 0; i + 1 < len && s[i] != '\0'; i++) {
        char c = s[i];

        out[i] =
            ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) ? c : '_';
    }
    out[i] = '\0';
}

static void
prom_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
prom_inst(FILE *f, const outbox_stats_snapshot_t *s)
{
    /* not "instance": Prometheus sets that label to the scrape target */
    fputs("outbox_instance=\"", f);
    prom_value(f, s->instance, sizeof(s->instance));
    fputc('"', f);
}

static void
prom_worker_labels(FILE *f, const outbox_stats_snapshot_t *s, unsigned i)
{
    const outbox_stats_slot_snap_t *w = &s->slot[i];

    fputc('{', f);
    prom_inst(f, s);
    /* slot keeps series unique while old and new run side by side */
    fprintf(f, ",worker=\"%u\",slot=\"%d\",role=\"%s\",lock_id=\"", w->worker_no, s->slot_index[i],
            role_name(w->role));
    prom_value(f, w->lock_id, sizeof(w->lock_id));
    fputs("\"}", f);
}

static void
prom_sup(FILE *f, const outbox_stats_snapshot_t *s, const char *name, const char *type,
         const char *help, const char *value)
{
    prom_head(f, name, type, help);
    fprintf(f, "%s{", name);
    prom_inst(f, s);
    fprintf(f, "} %s\n", value);
}

static void
print_prom(FILE *f, const outbox_stats_region_t *r, const outbox_stats_snapshot_t *s)
{
    static const struct {
        const char *name, *help;
        size_t off;
    } sup[] = {
        {"spawns", "worker processes forked", offsetof(outbox_stats_snapshot_t, spawns)},
        {"crashes", "worker exits other than a requested stop",
         offsetof(outbox_stats_snapshot_t, crashes)},
        {"restarts", "rolling restarts completed", offsetof(outbox_stats_snapshot_t, restarts)},
        {"reloads", "configurations applied by SIGHUP", offsetof(outbox_stats_snapshot_t, reloads)},
        {"reload_errors", "configurations rejected on SIGHUP",
         offsetof(outbox_stats_snapshot_t, reload_errors)},
        {"heartbeat_kills", "hung workers killed",
         offsetof(outbox_stats_snapshot_t, heartbeat_kills)},
    };
    char name[96], part[OUTBOX_STATS_CNAME_MAX], v[48];
    uint64_t cum = 0;
    unsigned i, c, b;

    snprintf(v, sizeof(v), "%d", is_stale(r, s) ? 0 : 1);
    prom_sup(f, s, "outbox_supervisor_up", "gauge",
             "1 if the supervisor runs and its heartbeat is younger than 5 s", v);
    snprintf(v, sizeof(v), "%.6f", (double)s->start_us / 1e6);
    prom_sup(f, s, "outbox_supervisor_start_time_seconds", "gauge",
             "when the supervisor created the stats region", v);
    snprintf(v, sizeof(v), "%" PRIu64, s->generation);
    prom_sup(f, s, "outbox_stats_generation", "gauge",
             "stats regions created for this instance (supervisor starts)", v);
    snprintf(v, sizeof(v), "%u", s->target_workers);
    prom_sup(f, s, "outbox_workers_target", "gauge", "relay workers configured", v);
    snprintf(v, sizeof(v), "%u", s->live_workers);
    prom_sup(f, s, "outbox_workers_live", "gauge", "worker processes running", v);
    for (i = 0; i < sizeof(sup) / sizeof(sup[0]); i++) {
        snprintf(name, sizeof(name), "outbox_supervisor_%s_total", sup[i].name);
        snprintf(v, sizeof(v), "%" PRIu64, *(const uint64_t *)((const char *)s + sup[i].off));
        prom_sup(f, s, name, "counter", sup[i].help, v);
    }
    for (c = 0; c < s->ncounters; c++) {
        prom_name(part, sizeof(part), s->counter_names[c]);
        snprintf(name, sizeof(name), "outbox_%s_total", part);
        prom_head(f, name, "counter", counter_help(s->counter_names[c]));
        fprintf(f, "%s{", name);
        prom_inst(f, s);
        fprintf(f, "} %" PRIu64 "\n", s->total[c]);
    }
    /* Per-worker series under their own names, so sum() over outbox_*_total
     * never counts a record twice. */
    for (c = 0; c < s->ncounters; c++) {
        prom_name(part, sizeof(part), s->counter_names[c]);
        snprintf(name, sizeof(name), "outbox_worker_%s_total", part);
        prom_head(f, name, "counter", counter_help(s->counter_names[c]));
        for (i = 0; i < s->nslots; i++) {
            fputs(name, f);
            prom_worker_labels(f, s, i);
            fprintf(f, " %" PRIu64 "\n", s->slot[i].counters[c]);
        }
    }
    prom_head(f, "outbox_worker_up", "gauge", "1 if the worker is ready and not stopping");
    for (i = 0; i < s->nslots; i++) {
        const outbox_stats_slot_snap_t *w = &s->slot[i];
        bool up =
            w->ready_us != 0 && (w->state == OUTBOX_WS_IDLE || w->state == OUTBOX_WS_CLAIMING ||
                                 w->state == OUTBOX_WS_PUBLISHING);

        fputs("outbox_worker_up", f);
        prom_worker_labels(f, s, i);
        fprintf(f, " %d\n", up ? 1 : 0);
    }
    prom_head(f, "outbox_worker_heartbeat_age_seconds", "gauge",
              "time since the worker's main loop last reported");
    for (i = 0; i < s->nslots; i++) {
        fputs("outbox_worker_heartbeat_age_seconds", f);
        prom_worker_labels(f, s, i);
        fprintf(f, " %.3f\n", (double)(s->taken_us - s->slot[i].heartbeat_us) / 1e6);
    }
    prom_head(f, "outbox_batch_latency_seconds", "histogram",
              "claim to marks written, per batch, all workers (sum not recorded: no _sum)");
    for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
        double up = bucket_upper_us(b);

        cum += s->total_hist[b];
        fputs("outbox_batch_latency_seconds_bucket{", f);
        prom_inst(f, s);
        if (isinf(up)) {
            fprintf(f, ",le=\"+Inf\"} %" PRIu64 "\n", cum);
        } else {
            fprintf(f, ",le=\"%.9g\"} %" PRIu64 "\n", up / 1e6, cum);
        }
    }
    fputs("outbox_batch_latency_seconds_count{", f);
    prom_inst(f, s);
    fprintf(f, "} %" PRIu64 "\n", cum);
}

/* ---- main ---- */

static int
take(const outbox_stats_region_t *r, outbox_stats_snapshot_t *s, const char *instance)
{
    if (outbox_stats_snapshot(r, s) < 0) {
        fprintf(stderr,
                "outboxstat: stats region of instance \"%s\" was shut down or kept changing\n",
                instance);
        return -1;
    }
    return 0;
}

static int
live(const char *instance, const outbox_stats_region_t *r, double delay)
{
    outbox_stats_snapshot_t *cur, *prev, *t;
    bool tty = isatty(STDOUT_FILENO), have_prev = false;
    char err[512];
    int why;

    cur = malloc(sizeof(*cur));
    prev = malloc(sizeof(*prev));
    if (cur == NULL || prev == NULL) {
        fprintf(stderr, "outboxstat: out of memory\n");
        free(cur);
        free(prev);
        outbox_stats_close_ro(r);
        return 1;
    }
    while (!stop) {
        if (tty) {
            fputs("\033[H\033[2J", stdout);
        }
        if (r == NULL && outbox_stats_open_ro(&r, instance, &why, err, sizeof(err)) < 0) {
            printf("%s; waiting\n", err);
        } else if (outbox_stats_snapshot(r, cur) < 0) {
            /* shut down, or replaced by a new supervisor: map the new one */
            printf("stats region of instance \"%s\" was shut down or kept changing; "
                   "re-attaching\n",
                   instance);
            outbox_stats_close_ro(r);
            r = NULL;
            have_prev = false;
        } else {
            print_frame(stdout, r, cur, have_prev ? prev : NULL);
            t = prev;
            prev = cur;
            cur = t;
            have_prev = true;
        }
        if (!tty) {
            fputc('\n', stdout);
        }
        fflush(stdout);
        sleep_s(delay);
    }
    outbox_stats_close_ro(r);
    free(cur);
    free(prev);
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, 'i'},
        {"once", no_argument, NULL, '1'},
        {"json", no_argument, NULL, 'j'},
        {"prometheus", no_argument, NULL, 'p'},
        {"delay", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *instance = getenv("OUTBOX_INSTANCE");
    const outbox_stats_region_t *r = NULL;
    static outbox_stats_snapshot_t s1, s2;
    struct sigaction sa;
    double delay = 1;
    bool delay_set = false;
    char err[512], *end;
    int mode = MODE_LIVE, nmodes = 0, c, why = 0, rc = 1;

    if (instance == NULL || instance[0] == '\0') {
        instance = "default";
    }
    while ((c = getopt_long(argc, argv, "i:1d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': instance = optarg; break;
        case '1':
            mode = MODE_ONCE;
            nmodes++;
            break;
        case 'j':
            mode = MODE_JSON;
            nmodes++;
            break;
        case 'p':
            mode = MODE_PROM;
            nmodes++;
            break;
        case 'd':
            errno = 0;
            delay = strtod(optarg, &end);
            if (errno != 0 || end == optarg || *end != '\0' || !(delay >= 0.05) || delay > 3600) {
                fprintf(stderr, "outboxstat: -d: bad interval \"%s\" (0.05 to 3600 seconds)\n",
                        optarg);
                return 2;
            }
            delay_set = true;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "outboxstat: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (nmodes > 1) {
        fprintf(stderr, "outboxstat: -1, --json and --prometheus exclude each other\n");
        return 2;
    }
    if (outbox_stats_shm_name(instance, err, sizeof(err)) < 0) {
        fprintf(stderr,
                "outboxstat: invalid instance name \"%s\" (1-%d characters of "
                "A-Za-z0-9._-)\n",
                instance, OUTBOX_STATS_NAME_MAX - 1);
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: nanosleep returns on a signal */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (outbox_stats_open_ro(&r, instance, &why, err, sizeof(err)) < 0) {
        fprintf(stderr, "outboxstat: %s\n", err);
        return 1;
    }
    switch (mode) {
    case MODE_LIVE: return live(instance, r, delay);
    case MODE_ONCE:
        if (take(r, &s1, instance) < 0) {
            goto done;
        }
        if (delay_set) {
            sleep_s(delay);
            if (take(r, &s2, instance) < 0) {
                goto done;
            }
            print_frame(stdout, r, &s2, &s1);
        } else {
            print_frame(stdout, r, &s1, NULL);
        }
        break;
    case MODE_JSON:
        if (take(r, &s1, instance) < 0) {
            goto done;
        }
        print_json(stdout, r, &s1);
        break;
    case MODE_PROM:
        if (take(r, &s1, instance) < 0) {
            goto done;
        }
        print_prom(stdout, r, &s1);
        break;
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    outbox_stats_close_ro(r);
    return rc;
}
