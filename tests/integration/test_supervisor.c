/*
 * The supervisor and its worker pool against a real PostgreSQL and
 * nats-server, driven by real signals and read through the stats region
 * and `outboxstat --json`: kill -9 of a worker, rolling restart on SIGHUP
 * with traffic flowing, pool resize, graceful stop, a hung worker, a
 * second supervisor, a SIGKILLed supervisor, an incompatible worker.
 * Every loop is bounded in count and time.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <nats/nats.h>

#include "harness.h"
#include "outbox/broker.h"
#include "outbox/outbox.h"
#include "outbox/store.h"
#include "stats.h"

static th_env_t env;

typedef struct ctx {
    char db[512];
    char stream[64];
    char prefix[64]; /* subject prefix and instance name */
    char log[256];
    char conf[256];
    pid_t sup;
    natsConnection *nc;
    jsCtx *js;
    /* producer thread */
    pthread_t prod;
    int prod_total, prod_per_tx, prod_pause_ms;
    atomic_int produced;
    atomic_bool prod_stop;
} ctx_t;

static void
ctx_open(ctx_t *c, const char *name)
{
    char subjects[96], err[512];
    outbox_nats_options_t no = {
        .url = env.nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    outbox_pg_options_t po;
    int from, to;

    memset(c, 0, sizeof(*c));
    th_db_create(&env, name, c->db, sizeof(c->db));
    th_unique(c->prefix, sizeof(c->prefix), name);
    snprintf(c->stream, sizeof(c->stream), "S_%s", c->prefix);
    snprintf(subjects, sizeof(subjects), "%s.>", c->prefix);
    snprintf(c->log, sizeof(c->log), "/tmp/outbox-sup-%s.log", c->prefix);
    snprintf(c->conf, sizeof(c->conf), "/tmp/outbox-sup-%s.conf", c->prefix);
    po = (outbox_pg_options_t){.conninfo = c->db};
    assert_int_equal(outbox_pg_migrate(&po, &from, &to, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(outbox_nats_stream_add(&no, c->stream, subjects, 0, err, sizeof(err)),
                     OUTBOX_OK);
    assert_int_equal(natsConnection_ConnectTo(&c->nc, env.nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&c->js, c->nc, NULL), NATS_OK);
}

static int log_has(const ctx_t *c, const char *needle);
static void dump_log(const ctx_t *c);

static void
ctx_close(ctx_t *c)
{
    jsErrCode jerr = 0;

    if (c->sup > 0)
        th_stop(c->sup, 20000);
    /* Under -fsanitize the supervisor and workers report into this log. */
    if (log_has(c, "Sanitizer") || log_has(c, "runtime error:")) {
        dump_log(c);
        fail_msg("a sanitizer reported an error in outboxd (log above)");
    }
    js_DeleteStream(c->js, c->stream, NULL, &jerr);
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    th_db_drop(&env, c->db);
    unlink(c->log);
    unlink(c->conf);
}

static void
dump_log(const ctx_t *c)
{
    char line[1024];
    FILE *f = fopen(c->log, "r");

    if (f == NULL)
        return;
    fprintf(stderr, "---- outboxd log %s ----\n", c->log);
    while (fgets(line, sizeof(line), f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

static int
log_has(const ctx_t *c, const char *needle)
{
    char line[1024];
    int found = 0;
    FILE *f = fopen(c->log, "r");

    if (f == NULL)
        return 0;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* Write the config file: db, nats, instance, fast intervals, plus extra
 * ("key = value" lines; a key given there replaces the default here). */
static void
write_conf(const ctx_t *c, int workers, const char *extra)
{
    char key[64];
    const char *defaults[][2] = {
        {"process_interval", "20ms"}, {"batch_size", "50"}, {"log_level", "debug"}};
    FILE *f = fopen(c->conf, "w");
    size_t i;

    assert_non_null(f);
    fprintf(f, "db = %s\nnats_url = %s\ninstance = %s\nworkers = %d\n", c->db, env.nats_url,
            c->prefix, workers);
    for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        snprintf(key, sizeof(key), "%s =", defaults[i][0]);
        if (extra == NULL || strstr(extra, key) == NULL)
            fprintf(f, "%s = %s\n", defaults[i][0], defaults[i][1]);
    }
    fprintf(f, "%s", extra ? extra : "");
    fclose(f);
}

static pid_t
sup_start(ctx_t *c)
{
    char bin[512];
    char *argv[] = {bin, "-c", c->conf, "run", NULL};

    th_bin(bin, sizeof(bin), "outboxd");
    c->sup = th_spawn(argv, c->log);
    return c->sup;
}

/* Snapshot of the instance's region; 0, or -1 if it is not there (yet). */
static int
snap(const ctx_t *c, outbox_stats_snapshot_t *s)
{
    const outbox_stats_region_t *r = NULL;
    char err[256];
    int why, rc;

    if (outbox_stats_open_ro(&r, c->prefix, &why, err, sizeof(err)) != 0)
        return -1;
    rc = outbox_stats_snapshot(r, s);
    outbox_stats_close_ro(r);
    return rc;
}

static outbox_stats_snapshot_t *
snap_new(void)
{
    outbox_stats_snapshot_t *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    return s;
}

/* Relays (role relay) that are ready and not stopping; pids into out. */
static int
ready_relays(const outbox_stats_snapshot_t *s, int64_t *pids, int max)
{
    unsigned i;
    int n = 0;

    for (i = 0; i < s->nslots; i++) {
        const outbox_stats_slot_snap_t *w = &s->slot[i];

        if (w->role != OUTBOX_ROLE_RELAY || w->ready_us == 0 || w->state == OUTBOX_WS_STOPPING ||
            w->state == OUTBOX_WS_EXITED || w->state == OUTBOX_WS_FREE)
            continue;
        if (pids != NULL && n < max)
            pids[n] = w->pid;
        n++;
    }
    return n;
}

static int64_t
keeper_pid(const outbox_stats_snapshot_t *s)
{
    unsigned i;

    for (i = 0; i < s->nslots; i++)
        if (s->slot[i].role == OUTBOX_ROLE_KEEPER && s->slot[i].ready_us != 0 &&
            s->slot[i].state != OUTBOX_WS_STOPPING)
            return s->slot[i].pid;
    return 0;
}

/* Wait until exactly n relays (and the keeper) are ready. */
static void
wait_ready(ctx_t *c, int n, int64_t timeout_ms)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t deadline = th_now_ms() + timeout_ms;

    for (;;) {
        if (snap(c, s) == 0 && ready_relays(s, NULL, 0) == n && keeper_pid(s) != 0 &&
            (int)s->nslots == n + 1)
            break;
        if (th_now_ms() > deadline) {
            dump_log(c);
            fail_msg("%d ready workers expected within %lld ms", n, (long long)timeout_ms);
        }
        th_sleep_ms(20);
    }
    free(s);
}

static void *
producer(void *arg)
{
    ctx_t *c = arg;
    PGconn *pg = th_connect(c->db);
    char topic[128], body[64], key[32], id[OUTBOX_ID_LEN + 1], err[256];
    int i = 0;

    snprintf(topic, sizeof(topic), "%s.orders", c->prefix);
    while (i < c->prod_total && !atomic_load(&c->prod_stop)) {
        int k;

        th_exec(pg, "BEGIN");
        for (k = 0; k < c->prod_per_tx && i < c->prod_total; k++, i++) {
            outbox_message_t m = {.topic = topic, .key = key, .body = body};

            snprintf(key, sizeof(key), "k%d", i % 17);
            m.body_len = (size_t)snprintf(body, sizeof(body), "order %d", i);
            if (outbox_enqueue(pg, NULL, NULL, &m, id, err, sizeof(err)) != OUTBOX_OK) {
                fprintf(stderr, "enqueue: %s\n", err);
                abort();
            }
        }
        th_exec(pg, "COMMIT");
        atomic_store(&c->produced, i);
        th_sleep_ms(c->prod_pause_ms);
    }
    PQfinish(pg);
    return NULL;
}

/* A steady stream: total messages, per_tx per commit, a pause between. */
static void
produce_start(ctx_t *c, int total, int per_tx, int pause_ms)
{
    c->prod_total = total;
    c->prod_per_tx = per_tx;
    c->prod_pause_ms = pause_ms;
    atomic_store(&c->produced, 0);
    atomic_store(&c->prod_stop, false);
    assert_int_equal(pthread_create(&c->prod, NULL, producer, c), 0);
}

static int
produce_join(ctx_t *c)
{
    pthread_join(c->prod, NULL);
    return atomic_load(&c->produced);
}

static uint64_t
stream_count(ctx_t *c)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    uint64_t n;

    assert_int_equal(js_GetStreamInfo(&si, c->js, c->stream, NULL, &jerr), NATS_OK);
    n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

static void
wait_drained(ctx_t *c, PGconn *pg, long long want, int64_t timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;

    while (th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1") < want ||
           stream_count(c) < (uint64_t)want) {
        if (th_now_ms() > deadline) {
            dump_log(c);
            fail_msg("%lld messages not delivered within %lld ms", want, (long long)timeout_ms);
        }
        th_sleep_ms(50);
    }
}

/* Nothing lost, nothing twice, nothing locked. */
static void
assert_exact(ctx_t *c, PGconn *pg, long long want)
{
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox"), want);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state <> 1"), 0);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"), 0);
    assert_int_equal(stream_count(c), (uint64_t)want);
}

/* `outboxstat -i NAME --json` parsed; caller json_decref()s. */
static json_t *
outboxstat_json(const ctx_t *c)
{
    char bin[512], out[256];
    char *argv[] = {bin, "-i", (char *)c->prefix, "--json", NULL};
    json_error_t jerr;
    json_t *j;
    int st;
    pid_t p;

    th_bin(bin, sizeof(bin), "outboxstat");
    snprintf(out, sizeof(out), "/tmp/outbox-sup-%s.json", c->prefix);
    unlink(out);
    p = th_spawn(argv, out);
    assert_int_equal(th_wait(p, 10000, &st), 1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    j = json_load_file(out, 0, &jerr);
    if (j == NULL)
        fail_msg("outboxstat --json is not JSON: %s (line %d)", jerr.text, jerr.line);
    unlink(out);
    return j;
}

/* `outboxstat -i NAME MODE` output (stdout and stderr); exit status checked. */
static char *
outboxstat_text(const ctx_t *c, const char *mode, int want_status)
{
    char bin[512], out[256], *text;
    char *argv[] = {bin, "-i", (char *)c->prefix, (char *)mode, NULL};
    FILE *f;
    long n;
    int st;
    pid_t p;

    th_bin(bin, sizeof(bin), "outboxstat");
    snprintf(out, sizeof(out), "/tmp/outbox-sup-%s.txt", c->prefix);
    unlink(out);
    p = th_spawn(argv, out);
    assert_int_equal(th_wait(p, 10000, &st), 1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), want_status);
    f = fopen(out, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    unlink(out);
    return text;
}

static long long
json_total(json_t *j, const char *counter)
{
    json_t *v = json_object_get(json_object_get(j, "totals"), counter);

    assert_non_null(v);
    return (long long)json_integer_value(v);
}

static int
alive(pid_t p)
{
    return kill(p, 0) == 0;
}

/* ---- tests ---- */

/* kill -9 a worker that holds claimed records: it is respawned, its exact
 * lock id is released at once (lock check effectively off), nothing lost,
 * and outboxstat's totals (dead worker's counters included) equal the
 * DELIVERED rows. */
static void
test_kill9_worker_respawned_locks_released(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8], victim, deadline;
    char victim_lock[OUTBOX_STATS_LOCKID_MAX];
    PGconn *pg;
    json_t *j;
    unsigned i;
    int n, k;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_kill9");
    write_conf(&c, 4, "lock_check_interval = 10m\nmax_lock_time = 10m\n");
    sup_start(&c);
    wait_ready(&c, 4, 20000);
    pg = th_connect(c.db);
    produce_start(&c, 3000, 10, 5);
    th_sleep_ms(500);

    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, pids, 8), 4);
    victim = pids[1];
    victim_lock[0] = '\0';
    for (i = 0; i < s->nslots; i++)
        if (s->slot[i].pid == victim)
            snprintf(victim_lock, sizeof(victim_lock), "%s", s->slot[i].lock_id);
    assert_true(victim_lock[0] != '\0');
    /* The victim "holds" 20 records: stop it between two passes (a kill -9
     * between a mark's commit and the stats write, a few microseconds, would
     * leave its last batch uncounted), lock them in its name, kill it. */
    for (k = 0;; k++) {
        kill((pid_t)victim, SIGSTOP);
        th_sleep_ms(10);
        assert_int_equal(snap(&c, s), 0);
        for (i = 0; i < s->nslots; i++)
            if (s->slot[i].pid == victim)
                break;
        assert_true(i < s->nslots);
        if (s->slot[i].state == OUTBOX_WS_IDLE)
            break;
        assert_true(k < 500);
        kill((pid_t)victim, SIGCONT);
        th_sleep_ms(3);
    }
    th_exec(pg, "BEGIN");
    th_exec(pg,
            "SELECT outbox_enqueue('%s.held', 'h', '{}', 'held'::bytea) "
            "FROM generate_series(1, 20)",
            c.prefix);
    th_exec(pg, "UPDATE outbox SET locked_by = '%s', locked_on = now() WHERE topic = '%s.held'",
            victim_lock, c.prefix);
    th_exec(pg, "COMMIT");
    kill((pid_t)victim, SIGKILL);

    /* respawned: 4 ready relays again, none of them the victim */
    deadline = th_now_ms() + 15000;
    for (;;) {
        assert_int_equal(snap(&c, s), 0);
        n = ready_relays(s, pids, 8);
        if (n == 4 && pids[0] != victim && pids[1] != victim && pids[2] != victim &&
            pids[3] != victim)
            break;
        if (th_now_ms() > deadline) {
            dump_log(&c);
            fail_msg("killed worker not replaced");
        }
        th_sleep_ms(20);
    }
    assert_true(s->crashes >= 1);
    n = produce_join(&c);
    /* the 20 held records are freed by the release, not by a 10 min lock check */
    wait_drained(&c, pg, n + 20, 30000);
    assert_exact(&c, pg, n + 20);
    assert_true(log_has(&c, "released 20 records still locked by"));

    j = outboxstat_json(&c);
    assert_int_equal(json_total(j, "delivered"),
                     th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"));
    assert_true(json_integer_value(json_object_get(json_object_get(j, "supervisor"), "crashes")) >=
                1);
    json_decref(j);
    {
        char want[160];
        char *text = outboxstat_text(&c, "--prometheus", 0);

        snprintf(want, sizeof(want), "outbox_delivered_total{outbox_instance=\"%s\"} %lld\n",
                 c.prefix, th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"));
        assert_non_null(strstr(text, want));
        assert_non_null(strstr(text, "# TYPE outbox_delivered_total counter"));
        assert_non_null(strstr(text, "outbox_worker_delivered_total{"));
        assert_non_null(strstr(text, "outbox_batch_latency_seconds_bucket{"));
        free(text);
        text = outboxstat_text(&c, "-1", 0);
        assert_non_null(strstr(text, c.prefix));
        free(text);
    }

    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    PQfinish(pg);
    ctx_close(&c);
    free(s);
}

/* SIGHUP with traffic flowing: a new configuration (3 workers) is applied by
 * a rolling restart; every pid is replaced; at every sample at least one
 * relay is ready; nothing lost. A bad file on SIGHUP is rejected and the
 * running workers are kept. */
static void
test_sighup_rolling_restart(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t before[8], after[8], kb, ka, deadline;
    PGconn *pg;
    int n, i, k, min_ready = 99, samples = 0;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_hup");
    write_conf(&c, 2, NULL);
    sup_start(&c);
    wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, before, 8), 2);
    kb = keeper_pid(s);

    produce_start(&c, 4000, 10, 5);
    th_sleep_ms(300);
    write_conf(&c, 3, NULL);
    kill(c.sup, SIGHUP);
    deadline = th_now_ms() + 30000;
    for (;;) {
        if (snap(&c, s) == 0) {
            samples++;
            n = ready_relays(s, after, 8);
            if (n < min_ready)
                min_ready = n;
            if (s->restarts >= 1 && n == 3 && (int)s->nslots == 4 && keeper_pid(s) != 0)
                break;
        }
        if (th_now_ms() > deadline) {
            dump_log(&c);
            fail_msg("rolling restart did not finish");
        }
        th_sleep_ms(5);
    }
    assert_true(min_ready >= 1); /* delivery never dropped to zero workers */
    assert_true(samples > 5);
    ka = keeper_pid(s);
    assert_true(ka != kb);
    for (i = 0; i < 3; i++)
        for (k = 0; k < 2; k++)
            assert_true(after[i] != before[k]);
    for (k = 0; k < 2; k++)
        assert_false(alive((pid_t)before[k]));
    assert_int_equal(s->reloads, 1);
    assert_int_equal(s->target_workers, 3);

    /* a bad file: rejected, same pids */
    {
        FILE *f = fopen(c.conf, "a");

        fprintf(f, "batch_size = many\n");
        fclose(f);
    }
    kill(c.sup, SIGHUP);
    deadline = th_now_ms() + 10000;
    while (!log_has(&c, "reload rejected") && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_true(log_has(&c, "reload rejected, keeping the running configuration"));
    th_sleep_ms(300);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(s->reload_errors, 1);
    {
        int64_t now[8];

        assert_int_equal(ready_relays(s, now, 8), 3);
        for (i = 0; i < 3; i++) {
            int same = 0;

            for (k = 0; k < 3; k++)
                same |= now[i] == after[k];
            assert_true(same);
        }
    }

    n = produce_join(&c);
    wait_drained(&c, pg, n, 30000);
    assert_exact(&c, pg, n);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    PQfinish(pg);
    ctx_close(&c);
    free(s);
}

/* SIGTTIN / SIGTTOU change the count; SIGUSR2 restarts with the same
 * configuration. */
static void
test_ttin_ttou_usr2(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t before[8], after[8], deadline;
    int i, k;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_ttin");
    write_conf(&c, 2, NULL);
    sup_start(&c);
    wait_ready(&c, 2, 20000);
    kill(c.sup, SIGTTIN);
    wait_ready(&c, 3, 10000);
    kill(c.sup, SIGTTOU);
    th_sleep_ms(50);
    kill(c.sup, SIGTTOU);
    wait_ready(&c, 1, 10000);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(s->target_workers, 1);

    assert_int_equal(ready_relays(s, before, 8), 1);
    kill(c.sup, SIGUSR2);
    deadline = th_now_ms() + 20000;
    for (;;) {
        assert_int_equal(snap(&c, s), 0);
        if (s->restarts >= 1 && ready_relays(s, after, 8) == 1 && s->nslots == 2)
            break;
        if (th_now_ms() > deadline) {
            dump_log(&c);
            fail_msg("SIGUSR2 rolling restart did not finish");
        }
        th_sleep_ms(20);
    }
    assert_true(after[0] != before[0]);
    for (i = 0, k = 0; i < 1; i++)
        k += alive((pid_t)before[i]);
    assert_int_equal(k, 0);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    ctx_close(&c);
    free(s);
}

/* SIGTERM mid-stream: every process exits, the supervisor with 0, no record
 * keeps a lock, the region is gone; a restart delivers the rest exactly. */
static void
test_sigterm_stops_everything(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8], kp;
    char shm[128], pidfile[160], extra[200];
    PGconn *pg;
    int i, n, st;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_term");
    snprintf(pidfile, sizeof(pidfile), "/tmp/outbox-sup-%s.pid", c.prefix);
    snprintf(extra, sizeof(extra), "pid_file = %s\n", pidfile);
    write_conf(&c, 3, extra);
    sup_start(&c);
    wait_ready(&c, 3, 20000);
    {
        FILE *f = fopen(pidfile, "r");
        long pid = 0;

        assert_non_null(f);
        assert_int_equal(fscanf(f, "%ld", &pid), 1);
        fclose(f);
        assert_int_equal(pid, c.sup);
    }
    pg = th_connect(c.db);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, pids, 8), 3);
    kp = keeper_pid(s);
    produce_start(&c, 2000, 20, 2);
    th_sleep_ms(400);
    st = th_stop(c.sup, 30000);
    c.sup = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    for (i = 0; i < 3; i++)
        assert_false(alive((pid_t)pids[i]));
    assert_false(alive((pid_t)kp));
    assert_int_equal(access(pidfile, F_OK), -1); /* removed at exit */
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"), 0);
    snprintf(shm, sizeof(shm), "/outbox-%s", c.prefix);
    assert_int_equal(shm_open(shm, O_RDONLY, 0), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(snap(&c, s), -1);
    {
        char *text = outboxstat_text(&c, "--json", 1);

        assert_non_null(strstr(text, "no outboxd instance"));
        free(text);
    }

    n = produce_join(&c);
    sup_start(&c);
    wait_drained(&c, pg, n, 30000);
    assert_exact(&c, pg, n);
    PQfinish(pg);
    ctx_close(&c);
    free(s);
}

/* A worker that stops beating (SIGSTOP: as hung as it gets) is killed and
 * replaced after worker_timeout. */
static void
test_hung_worker_replaced(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8], deadline;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_hung");
    write_conf(&c, 1,
               "publish_timeout = 1s\nstatement_timeout = 1s\nconnect_timeout = 1s\n"
               "max_lock_time = 10s\nworker_timeout = 5s\n");
    sup_start(&c);
    wait_ready(&c, 1, 20000);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, pids, 8), 1);
    kill((pid_t)pids[0], SIGSTOP);
    deadline = th_now_ms() + 20000;
    for (;;) {
        int64_t now[8];

        assert_int_equal(snap(&c, s), 0);
        if (s->heartbeat_kills >= 1 && ready_relays(s, now, 8) == 1 && now[0] != pids[0])
            break;
        if (th_now_ms() > deadline) {
            kill((pid_t)pids[0], SIGKILL);
            dump_log(&c);
            fail_msg("hung worker not replaced");
        }
        th_sleep_ms(50);
    }
    assert_true(log_has(&c, "no heartbeat for"));
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    ctx_close(&c);
    free(s);
}

/* Start the supervisor as the leader of its own process group (as a shell
 * or systemd does), so the test can signal the whole group. */
static pid_t
sup_start_group(ctx_t *c)
{
    char bin[512];
    char *argv[] = {bin, "-c", c->conf, "run", NULL};
    pid_t p;

    th_bin(bin, sizeof(bin), "outboxd");
    p = fork();
    assert_true(p >= 0);
    if (p == 0) {
        int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND, 0600);

        setsid();
        dup2(fd, 1);
        dup2(fd, 2);
        execv(bin, argv);
        _exit(127);
    }
    c->sup = p;
    return p;
}

/* Ctrl-C (SIGINT to the whole process group) reaches the keeper too: it
 * must still stop last, and free the records of a relay killed at the
 * drain. */
static void
test_group_interrupt_keeper_stops_last(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8];
    char victim_lock[OUTBOX_STATS_LOCKID_MAX];
    PGconn *pg;
    unsigned i;
    int st;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_group");
    write_conf(&c, 2, "drain_timeout = 2s\nlock_check_interval = 10m\nmax_lock_time = 10m\n");
    sup_start_group(&c);
    wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, pids, 8), 2);
    victim_lock[0] = '\0';
    for (i = 0; i < s->nslots; i++)
        if (s->slot[i].pid == pids[0])
            snprintf(victim_lock, sizeof(victim_lock), "%s", s->slot[i].lock_id);
    kill((pid_t)pids[0], SIGSTOP); /* will not drain: killed at drain_timeout */
    th_exec(pg, "BEGIN");
    th_exec(pg,
            "SELECT outbox_enqueue('%s.held', 'h', '{}', 'held'::bytea) "
            "FROM generate_series(1, 20)",
            c.prefix);
    th_exec(pg, "UPDATE outbox SET locked_by = '%s', locked_on = now() WHERE topic = '%s.held'",
            victim_lock, c.prefix);
    th_exec(pg, "COMMIT");
    kill(-c.sup, SIGINT);
    assert_int_equal(th_wait(c.sup, 30000, &st), 1);
    c.sup = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    if (th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL") != 0) {
        dump_log(&c);
        fail_msg("records of the relay killed at the drain are still locked");
    }
    assert_true(log_has(&c, "released 20 records still locked by"));
    assert_false(log_has(&c, "error: keeper")); /* its exit is not a crash */
    PQfinish(pg);
    ctx_close(&c);
    free(s);
}

/* A stop right after a worker is forked (TTIN, then TERM at once) is not
 * lost between fork and exec: the supervisor exits well within
 * drain_timeout, no worker is killed. */
static void
test_stop_right_after_spawn(void **state)
{
    int k, st;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_race");
    write_conf(&c, 1, "drain_timeout = 20s\n");
    for (k = 0; k < 6; k++) {
        int64_t t0;

        sup_start(&c);
        wait_ready(&c, 1, 20000);
        kill(c.sup, SIGTTIN);
        if (k % 2)
            th_sleep_ms(k); /* land in fork, exec or handler setup */
        kill(c.sup, SIGTERM);
        t0 = th_now_ms();
        assert_int_equal(th_wait(c.sup, 15000, &st), 1);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
        assert_true(th_now_ms() - t0 < 10000);
        c.sup = 0;
    }
    assert_false(log_has(&c, "still running after drain_timeout"));
    assert_false(log_has(&c, "killed by signal 15"));
    ctx_close(&c);
}

/* Wait until the stream holds want messages; returns the ms it took. */
static int64_t
wait_stream(ctx_t *c, uint64_t want, int64_t timeout_ms)
{
    int64_t t0 = th_now_ms();

    while (stream_count(c) < want) {
        if (th_now_ms() - t0 > timeout_ms) {
            dump_log(c);
            fail_msg("stream did not reach %llu within %lld ms", (unsigned long long)want,
                     (long long)timeout_ms);
        }
        th_sleep_ms(2);
    }
    return th_now_ms() - t0;
}

static long long
listeners(PGconn *pg)
{
    return th_query_ll(pg, "SELECT count(*) FROM outbox_listeners");
}

/* The wake-up: with the poll an hour apart, only a notification can
 * deliver. Idle workers are registered listeners; a killed worker's
 * registration is dropped; a listener connection killed by the server is
 * re-made (and a claim pass runs) without a busy loop; a graceful stop
 * leaves no registration. With wakeup = poll nothing is registered. */
static void
test_wakeup_delivers_without_polling(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8], deadline, took;
    PGconn *pg;
    int k;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_wake");
    write_conf(&c, 2, "process_interval = 1h\nlinger = 0\n");
    sup_start(&c);
    wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);
    deadline = th_now_ms() + 10000;
    while (listeners(pg) != 2 && th_now_ms() < deadline)
        th_sleep_ms(10);
    assert_int_equal(listeners(pg), 2);
    for (k = 1; k <= 20; k++) {
        /* both workers idle again (re-armed after the last delivery) */
        deadline = th_now_ms() + 10000;
        while (listeners(pg) != 2 && th_now_ms() < deadline)
            th_sleep_ms(2);
        th_exec(pg, "SELECT outbox_enqueue('%s.wake', 'k', '{}', 'w'::bytea)", c.prefix);
        took = wait_stream(&c, (uint64_t)k, 10000);
        assert_true(took < 5000); /* not the hourly poll */
    }

    /* the server kills the listener sessions: re-made, still woken */
    th_query_ll(pg, "SELECT count(pg_terminate_backend(backend_pid)) FROM outbox_listeners");
    th_sleep_ms(1500);
    th_exec(pg, "SELECT outbox_enqueue('%s.wake', 'k', '{}', 'again'::bytea)", c.prefix);
    wait_stream(&c, 21, 10000);
    assert_true(log_has(&c, "wake-up connection lost"));

    /* a worker killed -9 while registered: its registration goes with it */
    deadline = th_now_ms() + 10000;
    while (listeners(pg) != 2 && th_now_ms() < deadline)
        th_sleep_ms(10);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(ready_relays(s, pids, 8), 2);
    kill((pid_t)pids[0], SIGKILL);
    deadline = th_now_ms() + 10000;
    while (th_query_ll(pg, "SELECT count(*) FROM outbox_listeners l WHERE NOT EXISTS (SELECT 1 "
                           "FROM pg_stat_activity a WHERE a.pid = l.backend_pid)") != 0 &&
           th_now_ms() < deadline)
        th_sleep_ms(20);
    if (th_query_ll(pg, "SELECT count(*) FROM outbox_listeners l WHERE NOT EXISTS (SELECT 1 "
                        "FROM pg_stat_activity a WHERE a.pid = l.backend_pid)") != 0)
        dump_log(&c);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox_listeners l WHERE NOT EXISTS "
                                     "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = "
                                     "l.backend_pid)"),
                     0);

    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    assert_int_equal(listeners(pg), 0);

    /* poll mode registers nothing */
    write_conf(&c, 1, "process_interval = 50ms\nwakeup = poll\n");
    sup_start(&c);
    wait_ready(&c, 1, 20000);
    th_exec(pg, "SELECT outbox_enqueue('%s.wake', 'k', '{}', 'poll'::bytea)", c.prefix);
    wait_stream(&c, 22, 10000);
    assert_int_equal(listeners(pg), 0);
    PQfinish(pg);
    ctx_close(&c);
    free(s);
}

/* A worker that keeps dying right after it starts is respawned with a
 * growing delay (1 s, 2 s, 4 s ...), not in a hot loop; the supervisor
 * counts the crashes. */
static void
test_crash_loop_backs_off(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t seen_at[5], deadline, last = 0, pid;
    int k;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_loop");
    write_conf(&c, 1, NULL);
    sup_start(&c);
    wait_ready(&c, 1, 20000);
    for (k = 0; k < 5; k++) {
        /* wait for a new relay pid, note when it appeared, kill it at once */
        deadline = th_now_ms() + 30000;
        for (;;) {
            pid = 0;
            if (snap(&c, s) == 0) {
                unsigned i;

                for (i = 0; i < s->nslots; i++)
                    if (s->slot[i].role == OUTBOX_ROLE_RELAY && s->slot[i].pid != last &&
                        s->slot[i].pid > 0)
                        pid = s->slot[i].pid;
            }
            if (pid != 0)
                break;
            if (th_now_ms() > deadline) {
                dump_log(&c);
                fail_msg("no respawn %d", k);
            }
            th_sleep_ms(10);
        }
        seen_at[k] = th_now_ms();
        kill((pid_t)pid, SIGKILL);
        last = pid;
    }
    /* Each victim died well within 1 s of its start: 1 s, 2 s, 4 s apart
     * (the first respawn may be immediate if the first worker ran > 1 s). */
    assert_true(seen_at[2] - seen_at[1] >= 900);
    assert_true(seen_at[3] - seen_at[2] >= 1900);
    assert_true(seen_at[4] - seen_at[3] >= 3900);
    assert_true(log_has(&c, "keeps failing: next start in 4s"));
    deadline = th_now_ms() + 5000; /* the last kill is reaped within a tick */
    while (snap(&c, s) == 0 && s->crashes < 5 && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_true(s->crashes >= 5);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    ctx_close(&c);
    free(s);
}

/* A second supervisor for the same instance refuses (exit 2, clear line);
 * after the first is SIGKILLed its workers stop by themselves, and a new
 * supervisor replaces the stale region (generation + 1). */
static void
test_second_supervisor_and_stale_region(void **state)
{
    outbox_stats_snapshot_t *s = snap_new();
    int64_t pids[8], kp, deadline;
    uint64_t gen;
    char bin[512], log2[300];
    pid_t p;
    int st;
    ctx_t c;
    (void)state;

    ctx_open(&c, "sup_twice");
    write_conf(&c, 2, NULL);
    sup_start(&c);
    wait_ready(&c, 2, 20000);
    assert_int_equal(snap(&c, s), 0);
    gen = s->generation;
    assert_int_equal(ready_relays(s, pids, 8), 2);
    kp = keeper_pid(s);

    th_bin(bin, sizeof(bin), "outboxd");
    snprintf(log2, sizeof(log2), "%s.second", c.log);
    {
        char *argv[] = {bin, "-c", c.conf, "run", NULL};

        p = th_spawn(argv, log2);
    }
    assert_int_equal(th_wait(p, 10000, &st), 1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    {
        FILE *f = fopen(log2, "r");
        char line[1024];
        int found = 0;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f) != NULL)
            found |= strstr(line, "is already run by another outboxd supervisor") != NULL;
        fclose(f);
        assert_true(found);
        unlink(log2);
    }

    kill(c.sup, SIGKILL);
    waitpid(c.sup, &st, 0);
    c.sup = 0;
    deadline = th_now_ms() + 15000;
    while ((alive((pid_t)pids[0]) || alive((pid_t)pids[1]) || alive((pid_t)kp)) &&
           th_now_ms() < deadline)
        th_sleep_ms(50);
    assert_false(alive((pid_t)pids[0]));
    assert_false(alive((pid_t)pids[1]));
    assert_false(alive((pid_t)kp));

    sup_start(&c);
    wait_ready(&c, 2, 20000);
    assert_int_equal(snap(&c, s), 0);
    assert_int_equal(s->generation, gen + 1);
    assert_int_equal(s->supervisor_pid, c.sup);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    ctx_close(&c);
    free(s);
}

/* A worker binary whose stats layout differs from the supervisor's refuses
 * to start with a message naming the versions. */
static void
test_incompatible_layout_refused(void **state)
{
    char name[96], inst[64], bin[512], log[256], line[1024];
    char *argv[] = {bin,         "worker", "--role",   "relay", "--instance",  inst, "--slot", "0",
                    "--lock-id", "x-0-1",  "--parent", "1",     "--config-fd", "0",  NULL};
    outbox_stats_header_t h;
    FILE *f;
    int fd, st, found = 0, cfd;
    pid_t p;
    (void)state;

    th_unique(inst, sizeof(inst), "sup_layout");
    snprintf(name, sizeof(name), "/outbox-%s", inst);
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    memset(&h, 0, sizeof(h));
    h.magic = OUTBOX_STATS_MAGIC;
    h.version = OUTBOX_STATS_VERSION + 1;
    h.header_size = sizeof(h);
    h.total_size = sizeof(outbox_stats_region_t);
    assert_int_equal(ftruncate(fd, (off_t)sizeof(outbox_stats_region_t)), 0);
    assert_int_equal(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);

    /* a valid configuration on an fd, as the supervisor passes it */
    {
        char path[128];
        const char conf[] = "nats_url=nats://127.0.0.1:1";

        snprintf(path, sizeof(path), "/tmp/outbox-%s.cfg", inst);
        cfd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
        assert_true(cfd >= 0);
        assert_int_equal(write(cfd, conf, sizeof(conf)), (ssize_t)sizeof(conf));
        unlink(path);
    }
    /* th_spawn keeps fds open across exec unless CLOEXEC: pass it as fd 0 */
    th_bin(bin, sizeof(bin), "outboxd");
    snprintf(log, sizeof(log), "/tmp/outbox-%s.log", inst);
    p = fork();
    assert_true(p >= 0);
    if (p == 0) {
        int lf = open(log, O_CREAT | O_WRONLY | O_TRUNC, 0600);

        dup2(cfd, 0);
        dup2(lf, 1);
        dup2(lf, 2);
        execv(bin, argv);
        _exit(127);
    }
    close(cfd);
    assert_int_equal(th_wait(p, 10000, &st), 1);
    shm_unlink(name);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    f = fopen(log, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL)
        found |= strstr(line, "refusing to start") != NULL && strstr(line, "version") != NULL;
    fclose(f);
    unlink(log);
    assert_true(found);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_worker_respawned_locks_released),
        cmocka_unit_test(test_sighup_rolling_restart),
        cmocka_unit_test(test_ttin_ttou_usr2),
        cmocka_unit_test(test_sigterm_stops_everything),
        cmocka_unit_test(test_hung_worker_replaced),
        cmocka_unit_test(test_crash_loop_backs_off),
        cmocka_unit_test(test_wakeup_delivers_without_polling),
        cmocka_unit_test(test_group_interrupt_keeper_stops_last),
        cmocka_unit_test(test_stop_right_after_spawn),
        cmocka_unit_test(test_second_supervisor_and_stale_region),
        cmocka_unit_test(test_incompatible_layout_refused),
    };

    th_env_load(&env);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
