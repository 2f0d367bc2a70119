/*
 * Start and stop the harness servers. servers.sh writes DIR/env as
 * KEY='value' lines (shell single quotes, ' written '\''); only the two
 * keys we need are read. The script runs in its own process group, so a
 * Ctrl-C during start does not kill it half-way; we stop it afterwards.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc.h"
#include "servers.h"
#include "util.h"

#ifndef OUTBOX_SOURCE_DIR
#define OUTBOX_SOURCE_DIR "."
#endif

#define START_TIMEOUT_MS 180000
#define STOP_TIMEOUT_MS 120000

/* Undo shell single quoting of v in place: 'a'\''b' -> a'b. */
static void
unquote(char *v)
{
    char *o = v, *p = v;
    int in = 0;

    for (; *p != '\0'; p++) {
        if (*p == '\'')
            in = !in;
        else if (*p == '\\' && !in && p[1] != '\0')
            *o++ = *++p;
        else
            *o++ = *p;
    }
    *o = '\0';
}

static int
read_env(servers_t *s)
{
    char path[PATH_MAX + 8], line[2048];
    FILE *f;

    snprintf(path, sizeof(path), "%s/env", s->dir);
    if ((f = fopen(path, "r")) == NULL) {
        bench_err("servers.sh wrote no %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *eq = strchr(line, '=');

        line[strcspn(line, "\n")] = '\0';
        if (eq == NULL)
            continue;
        *eq = '\0';
        unquote(eq + 1);
        if (strcmp(line, "OUTBOX_TEST_DB") == 0)
            snprintf(s->db, sizeof(s->db), "%s", eq + 1);
        else if (strcmp(line, "OUTBOX_TEST_NATS") == 0)
            snprintf(s->nats, sizeof(s->nats), "%s", eq + 1);
    }
    fclose(f);
    if (s->db[0] == '\0' || s->nats[0] == '\0') {
        bench_err("%s lacks OUTBOX_TEST_DB or OUTBOX_TEST_NATS", path);
        return -1;
    }
    return 0;
}

int
servers_start(servers_t *s, const char *script)
{
    char log[PATH_MAX + 16], tail[512];
    char *argv[6];
    int rc;

    memset(s, 0, sizeof(*s));
    if (script != NULL)
        snprintf(s->script, sizeof(s->script), "%s", script);
    else
        snprintf(s->script, sizeof(s->script), "%s/tests/harness/servers.sh", OUTBOX_SOURCE_DIR);
    if (access(s->script, R_OK) != 0) {
        bench_err("servers script %s: %s (give --servers-script PATH)", s->script, strerror(errno));
        return -1;
    }
    snprintf(s->dir, sizeof(s->dir), "/tmp/outboxbench-servers.XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        bench_err("mkdtemp(%s) failed: %s", s->dir, strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    snprintf(log, sizeof(log), "%s/servers.log", s->dir);
    bench_info("starting PostgreSQL + nats-server (durable) with %s", s->script);
    argv[0] = "/bin/bash";
    argv[1] = s->script;
    argv[2] = "start";
    argv[3] = s->dir;
    argv[4] = "--durable";
    argv[5] = NULL;
    rc = proc_run(argv, log, START_TIMEOUT_MS);
    if (rc != 0) {
        proc_log_tail(log, tail, sizeof(tail));
        bench_err("servers.sh start failed (%s; log %s): %s",
                  rc < 0 ? "killed or timed out" : "non-zero exit", log, tail);
        servers_stop(s);
        return -1;
    }
    if (read_env(s) != 0) {
        servers_stop(s);
        return -1;
    }
    proc_log_tail(log, tail, sizeof(tail));
    bench_info("%s", tail);
    return 0;
}

void
servers_stop(servers_t *s)
{
    char log[PATH_MAX + 16], path[PATH_MAX + 16];
    char *argv[5];

    if (s->dir[0] == '\0')
        return;
    snprintf(log, sizeof(log), "%s/servers.log", s->dir);
    argv[0] = "/bin/bash";
    argv[1] = s->script;
    argv[2] = "stop";
    argv[3] = s->dir;
    argv[4] = NULL;
    if (proc_run(argv, log, STOP_TIMEOUT_MS) != 0) {
        bench_err("servers.sh stop %s failed: see %s", s->dir, log);
    } else {
        bench_info("servers stopped");
        unlink(log);
        snprintf(path, sizeof(path), "%s", s->dir);
        if (rmdir(path) != 0)
            bench_err("rmdir %s: %s", path, strerror(errno));
    }
    s->dir[0] = '\0';
}
