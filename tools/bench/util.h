/*
 * outboxbench's shared helpers: the monotonic clock every figure is taken
 * on, sleeps that end early when a stop was requested (SIGINT/SIGTERM only
 * set a flag), one-line errors on stderr, progress lines, list parsing.
 * Invariant: stdout carries only the result tables; everything else goes to
 * stderr, so `outboxbench ... > result.txt` keeps just the figures.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_EXIT_OK 0
#define BENCH_EXIT_FAIL 1  /* messages missing, server error, interrupted */
#define BENCH_EXIT_USAGE 2 /* bad option or value */

/* CLOCK_MONOTONIC in microseconds: the one clock for every figure. */
int64_t bench_now_us(void);

/* Sleep until the monotonic time t_us (or for us); return early, with -1,
 * once a stop was requested. */
int bench_sleep_until_us(int64_t t_us);
int bench_sleep_us(int64_t us);

/* SIGINT/SIGTERM set the stop flag; SIGPIPE is ignored. */
void bench_signals_install(void);
int bench_stopping(void);
/* Set the flag from code (a producer thread that failed, say). */
void bench_request_stop(void);

/* "outboxbench: <text>" on stderr, one line. */
void bench_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Progress, "outboxbench: <text>" on stderr; silent with --quiet. */
void bench_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_set_quiet(int quiet);

/* Parse "1,8,32" into out[0..max): each item an integer in [min, max_v].
 * Returns the count, or -1 (with an error naming opt) when malformed. */
int bench_parse_list(const char *s, const char *opt, long min, long max_v, long *out, int max);
/* One integer / number in [min, max]; -1 with an error naming opt. */
int bench_parse_long(const char *s, const char *opt, long min, long max, long *out);
int bench_parse_double(const char *s, const char *opt, double min, double max, double *out);

/* Directory of the running executable (/proc/self/exe); -1 on failure. */
int bench_exe_dir(char *out, size_t len);

#endif
