/*
 * Clock, stop flag, messages and option-value parsing for outboxbench.
 * The signal handler only sets a sig_atomic_t; every loop of the tool polls
 * bench_stopping() at least every 100 ms, so Ctrl-C always reaches the
 * cleanup (relay stopped, schema and stream dropped, servers stopped).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define SLEEP_SLICE_US 100000 /* longest sleep between two looks at the stop flag */

static volatile sig_atomic_t stop_flag;
static int quiet;

int64_t
bench_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
bench_sleep_until_us(int64_t t_us)
{
    for (;;) {
        int64_t now = bench_now_us(), slice;
        struct timespec ts;

        if (stop_flag)
            return -1;
        if (now >= t_us)
            return 0;
        slice = t_us - now < SLEEP_SLICE_US ? t_us - now : SLEEP_SLICE_US;
        ts.tv_sec = (time_t)(slice / 1000000);
        ts.tv_nsec = (long)(slice % 1000000) * 1000;
        nanosleep(&ts, NULL); /* EINTR: loop re-reads the clock and the flag */
    }
}

int
bench_sleep_us(int64_t us)
{
    return bench_sleep_until_us(bench_now_us() + us);
}

static void
on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

void
bench_signals_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: sleeps and waits return */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

int
bench_stopping(void)
{
    return stop_flag != 0;
}

void
bench_request_stop(void)
{
    stop_flag = 1;
}

void
bench_err(const char *fmt, ...)
{
    va_list ap;
    char line[2048];

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "outboxbench: %s\n", line);
}

void
bench_info(const char *fmt, ...)
{
    va_list ap;
    char line[2048];

    if (quiet)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "outboxbench: %s\n", line);
}

void
bench_set_quiet(int q)
{
    quiet = q;
}

int
bench_parse_long(const char *s, const char *opt, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        bench_err("%s: \"%s\" is not an integer from %ld to %ld", opt, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int
bench_parse_double(const char *s, const char *opt, double min, double max, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < min || v > max) {
        bench_err("%s: \"%s\" is not a number from %g to %g", opt, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int
bench_parse_list(const char *s, const char *opt, long min, long max_v, long *out, int max)
{
    char item[32];
    const char *p = s, *comma;
    int n = 0;
    size_t len;

    if (*s == '\0') {
        bench_err("%s: empty list", opt);
        return -1;
    }
    for (;;) {
        comma = strchr(p, ',');
        len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (n == max) {
            bench_err("%s: more than %d items in \"%s\"", opt, max, s);
            return -1;
        }
        if (len == 0 || len >= sizeof(item)) {
            bench_err("%s: \"%s\" is not a comma-separated list of integers", opt, s);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (bench_parse_long(item, opt, min, max_v, &out[n]) != 0)
            return -1;
        n++;
        if (comma == NULL)
            return n;
        p = comma + 1;
    }
}

int
bench_exe_dir(char *out, size_t len)
{
    char exe[PATH_MAX], *slash;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    if (n <= 0) {
        bench_err("cannot resolve /proc/self/exe: %s", strerror(errno));
        return -1;
    }
    exe[n] = '\0';
    if ((slash = strrchr(exe, '/')) == NULL)
        return -1;
    *slash = '\0';
    snprintf(out, len, "%s", exe);
    return 0;
}
