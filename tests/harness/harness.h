/*
 * Integration-test harness. The ctest fixture "servers" (servers.sh start)
 * runs one PostgreSQL and one nats-server (JetStream on) on free loopback
 * ports and writes $OUTBOX_TESTENV/env; each test then makes its own
 * database and its own subject/stream names, so tests run in parallel.
 * Tests that must stop and restart servers (outages) start private ones
 * with th_servers_start(). All helpers fail the cmocka test on error.
 */
#ifndef OUTBOX_TEST_HARNESS_H
#define OUTBOX_TEST_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <sys/types.h>
#include <cmocka.h>
#include <libpq-fe.h>

typedef struct th_env {
    char pg_admin[512]; /* conninfo of the "postgres" database, superuser */
    char pg_host[64];
    int pg_port;
    char pg_user[64];
    char nats_url[128];
    int nats_port;
    char dir[512];        /* the servers' temp dir */
    int nats_pid, pg_pid; /* private servers: to pause or kill them */
} th_env_t;

/* Load $OUTBOX_TESTENV/env (written by servers.sh). Fails the test if the
 * fixture did not run. */
void th_env_load(th_env_t *e);

/* A fresh, empty database; conninfo (no password) written to conninfo.
 * Name derived from prefix, pid and a counter. */
void th_db_create(const th_env_t *e, const char *prefix, char *conninfo, size_t len);
void th_db_drop(const th_env_t *e, const char *conninfo);

PGconn *th_connect(const char *conninfo);
/* Run SQL (no parameters); fails the test on error. */
void th_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* First column of first row as integer; fails the test when no row. */
long long th_query_ll(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "prefix_<pid>_<n>" : unique subject token / stream name per test run. */
void th_unique(char *out, size_t len, const char *prefix);

/* Monotonic ms. */
int64_t th_now_ms(void);
void th_sleep_ms(int64_t ms);

/* Path of a built binary: $OUTBOX_BIN/name. */
void th_bin(char *out, size_t len, const char *name);

/* fork+exec argv (argv[0] a path) with stdout/stderr appended to logfile
 * (NULL: inherit). Returns the pid. */
pid_t th_spawn(char *const argv[], const char *logfile);
/* Wait up to timeout_ms for pid to exit; returns 1 and the wait status, or
 * 0 on time-out (process left running). */
int th_wait(pid_t pid, int64_t timeout_ms, int *status);
/* SIGTERM, wait up to timeout_ms, then SIGKILL; returns the wait status. */
int th_stop(pid_t pid, int64_t timeout_ms);
/* Run argv to its end (at most timeout_ms, else the test fails); its
 * stdout and stderr into *out (malloc'd, caller frees) when out is not
 * NULL. Returns the exit status, or 128 + the signal that ended it. */
int th_run(char *const argv[], char **out, int64_t timeout_ms);
/* Copy a file (a daemon's log) to stderr under a title; silent if absent. */
void th_dump_file(const char *path, const char *title);
/* 1 if a line of the file at path contains needle (0 if it cannot be read). */
int th_file_has(const char *path, const char *needle);

/* Private servers for tests that stop/restart them. */
typedef struct th_servers {
    th_env_t env;
    char script[512];
} th_servers_t;
void th_servers_start(th_servers_t *s); /* both servers, own dir */
void th_servers_stop(th_servers_t *s);  /* both, removes the dir */
void th_pg_stop(th_servers_t *s);       /* fast shutdown */
void th_pg_start(th_servers_t *s);      /* same port and data */
void th_nats_stop(th_servers_t *s);
void th_nats_start(th_servers_t *s);             /* same port and store dir */
void th_nats_pause(th_servers_t *s, int paused); /* SIGSTOP / SIGCONT nats-server */

#endif
