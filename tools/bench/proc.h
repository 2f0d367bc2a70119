/*
 * Child processes of outboxbench (outboxd, servers.sh): spawn with output
 * appended to a log file and in a process group of their own (a Ctrl-C at
 * the terminal reaches outboxbench only, which then stops them in order),
 * bounded waits, and /proc readings of a process tree: CPU time and each
 * child's peak RSS, read while the processes still live.
 */
#ifndef BENCH_PROC_H
#define BENCH_PROC_H

#include <stdint.h>
#include <sys/types.h>

#define PROC_TREE_MAX 72 /* outboxd: up to 64 relays + the keeper */

/* fork+exec argv[0] (a path) with stdin /dev/null and stdout+stderr
 * appended to log (NULL: inherited). Returns the pid, or -1 (error printed). */
pid_t proc_spawn(char *const argv[], const char *log);

/* Wait up to timeout_ms for pid. 1 (and *status) when it exited, 0 on
 * time-out, -1 on error. Returns early, with 0, on a stop request only if
 * interruptible. */
int proc_wait(pid_t pid, int64_t timeout_ms, int interruptible, int *status);

/* Run argv to completion within timeout_ms (killed after it). Returns its
 * exit code, or -1 when it was killed, timed out or could not start. */
int proc_run(char *const argv[], const char *log, int64_t timeout_ms);

/* SIGTERM, wait up to grace_ms, then SIGKILL to its process group; returns
 * the wait status (-1 when it could not be reaped). cpu_s (may be NULL):
 * user+system seconds of pid and every descendant it reaped (wait4). */
int proc_stop(pid_t pid, int64_t grace_ms, double *cpu_s);

/* Describe a wait status: "exit 1", "signal 9". */
void proc_status_text(int status, char *out, size_t len);

typedef struct proc_child {
    pid_t pid;
    char role[16]; /* "relay", "keeper" (from the outboxd worker's argv), else "child" */
    long vmhwm_kb; /* peak resident set size (VmHWM) */
    double cpu_s;  /* utime + stime */
} proc_child_t;

typedef struct proc_tree {
    double cpu_s;      /* root + live children + children the root already reaped */
    double root_cpu_s; /* the root alone (its own utime + stime) */
    int nchildren;
    proc_child_t children[PROC_TREE_MAX];
} proc_tree_t;

/* Read /proc for root and its direct children. -1 if root is gone. */
int proc_tree_read(pid_t root, proc_tree_t *t);

/* Last line of a log file (for error messages), "" when none. */
void proc_log_tail(const char *path, char *out, size_t len);

#endif
