/*
 * Running outboxd. Every invocation logs to a file in the run's workdir, so
 * a failure can be reported with the relay's own last words. `run` gets an
 * instance name of its own (bench-<pid>-<n>): its stats region and
 * single-instance lock never collide with a production relay or with a
 * previous measurement still shutting down.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "relay.h"
#include "util.h"

#define ARGV_MAX (BENCH_RELAY_ARGS_MAX + 48)
#define ADMIN_TIMEOUT_MS 60000
#define READY_TIMEOUT_MS 20000
#define STOP_GRACE_MS 40000 /* outboxd's drain_timeout (30 s) plus margin */

static void
log_path(bench_t *b, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s.log", b->workdir, name);
}

/* Run an outboxd admin command; 0 or -1 with its last log line. */
static int
admin(bench_t *b, const char *what, char **argv)
{
    char log[PATH_MAX + 32], tail[600];
    int rc;

    log_path(b, "outboxd-admin", log, sizeof(log));
    rc = proc_run(argv, log, ADMIN_TIMEOUT_MS);
    if (rc != 0) {
        proc_log_tail(log, tail, sizeof(tail));
        bench_err("outboxd %s failed (%s%d): %s", what, rc < 0 ? "" : "exit ", rc, tail);
        b->failed_keep = 1;
        return -1;
    }
    return 0;
}

int
relay_migrate(bench_t *b)
{
    char *argv[] = {b->outboxd, "migrate", "--db",   (char *)b->db, "--schema",
                    b->schema,  "--table", "outbox", NULL};

    return admin(b, "migrate", argv);
}

int
relay_stream_add(bench_t *b, const char *name, const char *subjects)
{
    char *argv[] = {b->outboxd,       "stream", "add",           (char *)name,
                    (char *)subjects, "--nats", (char *)b->nats, NULL};

    return admin(b, "stream add", argv);
}

int
relay_version(bench_t *b, char *out, size_t len)
{
    char log[PATH_MAX + 32];
    char *argv[] = {b->outboxd, "--version", NULL};

    out[0] = '\0';
    log_path(b, "outboxd-version", log, sizeof(log));
    if (proc_run(argv, log, ADMIN_TIMEOUT_MS) != 0)
        return -1;
    proc_log_tail(log, out, len);
    unlink(log);
    return 0;
}

int
relay_supports(bench_t *b, const char *flag, const char *value, char *why, size_t whylen)
{
    char log[PATH_MAX + 32];
    char *argv[] = {b->outboxd, "config", (char *)flag, (char *)value, NULL};
    int rc;

    log_path(b, "outboxd-probe", log, sizeof(log));
    unlink(log);
    rc = proc_run(argv, log, ADMIN_TIMEOUT_MS);
    why[0] = '\0';
    if (rc == 0)
        return 1;
    proc_log_tail(log, why, whylen);
    return rc == 2 ? 0 : -1;
}

/* Lines of the log that contain needle. */
static int
count_lines(const char *path, const char *needle)
{
    char line[2048];
    int n = 0;
    FILE *f;

    if ((f = fopen(path, "r")) == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

int
relay_alive(relay_t *r)
{
    char tail[600], st[32];
    int status = 0;

    if (r->pid <= 0)
        return 0;
    if (waitpid(r->pid, &status, WNOHANG) != r->pid)
        return 1;
    r->pid = -1;
    proc_status_text(status, st, sizeof(st));
    proc_log_tail(r->log, tail, sizeof(tail));
    bench_err("outboxd run exited early (%s): %s", st, tail);
    return 0;
}

int
relay_start(bench_t *b, relay_t *r, int workers, int core, const char *const *extra, int nextra,
            int wait_ready)
{
    const bench_opts_t *o = b->o;
    char *argv[ARGV_MAX];
    char nw[16], nb[16];
    int n = 0, i;
    int64_t deadline;

    memset(r, 0, sizeof(*r));
    r->pid = -1;
    r->exit_cpu_s = -1;
    r->workers = workers;
    snprintf(r->instance, sizeof(r->instance), "bench-%s-%d", b->tag, ++b->seq);
    snprintf(r->log, sizeof(r->log), "%s/relay-%d.log", b->workdir, b->seq);
    snprintf(nw, sizeof(nw), "%d", workers);
    snprintf(nb, sizeof(nb), "%ld", o->relay_batch);
    argv[n++] = b->outboxd;
    argv[n++] = "run";
    argv[n++] = "--db";
    argv[n++] = (char *)b->db;
    argv[n++] = "--nats";
    argv[n++] = (char *)b->nats;
    argv[n++] = "--schema";
    argv[n++] = b->schema;
    argv[n++] = "--table";
    argv[n++] = "outbox";
    argv[n++] = "--workers";
    argv[n++] = nw;
    argv[n++] = "--nats-mode";
    argv[n++] = core ? "core" : "jetstream";
    argv[n++] = "--instance";
    argv[n++] = r->instance;
    argv[n++] = "--log-file";
    argv[n++] = r->log;
    for (i = 0; i < nextra; i++)
        argv[n++] = (char *)extra[i];
    if (o->relay_batch_set) {
        argv[n++] = "--batch-size";
        argv[n++] = nb;
    }
    if (o->delete_delivered) {
        argv[n++] = "--retention";
        argv[n++] = "0";
    }
    for (i = 0; i < o->nrelay_args; i++)
        argv[n++] = (char *)o->relay_args[i];
    argv[n] = NULL;

    if ((r->pid = proc_spawn(argv, r->log)) < 0)
        return -1;
    if (!wait_ready)
        return 0;
    /* Each relay worker logs "relaying <schema>.<table> to NATS" once it is
     * connected to both servers, right before its first claim. */
    deadline = bench_now_us() + (int64_t)READY_TIMEOUT_MS * 1000;
    while (count_lines(r->log, "relaying ") < workers) {
        if (!relay_alive(r)) {
            b->failed_keep = 1;
            return -1;
        }
        if (bench_now_us() >= deadline || bench_stopping()) {
            if (!bench_stopping())
                bench_err("outboxd run: %d workers not ready within %d s (log %s)", workers,
                          READY_TIMEOUT_MS / 1000, r->log);
            b->failed_keep = 1;
            relay_stop(b, r);
            return -1;
        }
        bench_sleep_us(10000);
    }
    return 0;
}

int
relay_sample(relay_t *r, proc_tree_t *t)
{
    if (r->pid <= 0 || proc_tree_read(r->pid, t) != 0) {
        bench_err("outboxd run (pid %d) is gone: no CPU/RSS reading", (int)r->pid);
        return -1;
    }
    return 0;
}

int
relay_stop(bench_t *b, relay_t *r)
{
    char st[32], tail[600];
    int status;

    if (r->pid <= 0)
        return 0;
    status = proc_stop(r->pid, STOP_GRACE_MS, &r->exit_cpu_s);
    r->pid = -1;
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    proc_status_text(status, st, sizeof(st));
    proc_log_tail(r->log, tail, sizeof(tail));
    bench_err("outboxd run did not stop cleanly (%s): %s", st, tail);
    b->failed_keep = 1;
    return -1;
}
