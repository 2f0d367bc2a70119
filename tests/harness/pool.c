/* A supervised relay under test: see pool.h. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "outbox/broker.h"
#include "outbox/outbox.h"
#include "outbox/store.h"
#include "pool.h"

th_env_t *pool_env;

void
pool_open(pool_t *c, const char *name)
{
    char subjects[96], err[512];
    outbox_nats_options_t no = {
        .url = pool_env->nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    outbox_pg_options_t po;
    int from, to;

    memset(c, 0, sizeof(*c));
    th_db_create(pool_env, name, c->db, sizeof(c->db));
    th_unique(c->prefix, sizeof(c->prefix), name);
    snprintf(c->stream, sizeof(c->stream), "S_%s", c->prefix);
    snprintf(subjects, sizeof(subjects), "%s.>", c->prefix);
    snprintf(c->log, sizeof(c->log), "/tmp/outbox-sup-%s.log", c->prefix);
    snprintf(c->conf, sizeof(c->conf), "/tmp/outbox-sup-%s.conf", c->prefix);
    /* a crashed earlier run may have left them (the pid in the name is reused) */
    unlink(c->log);
    unlink(c->conf);
    po = (outbox_pg_options_t){.conninfo = c->db};
    assert_int_equal(outbox_pg_migrate(&po, &from, &to, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(outbox_nats_stream_add(&no, c->stream, subjects, 0, err, sizeof(err)),
                     OUTBOX_OK);
    assert_int_equal(natsConnection_ConnectTo(&c->nc, pool_env->nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&c->js, c->nc, NULL), NATS_OK);
}

void
pool_close(pool_t *c)
{
    jsErrCode jerr = 0;

    if (c->sup > 0)
        th_stop(c->sup, 20000);
    /* Under -fsanitize the supervisor and workers report into this log. */
    if (pool_log_has(c, "Sanitizer") || pool_log_has(c, "runtime error:")) {
        pool_dump_log(c);
        fail_msg("a sanitizer reported an error in outboxd (log above)");
    }
    js_DeleteStream(c->js, c->stream, NULL, &jerr);
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    th_db_drop(pool_env, c->db);
    unlink(c->log);
    unlink(c->conf);
}

void
pool_dump_log(const pool_t *c)
{
    th_dump_file(c->log, "outboxd log");
}

int
pool_log_has(const pool_t *c, const char *needle)
{
    return th_file_has(c->log, needle);
}

/* Write the config file: db, nats, instance, fast intervals, plus extra
 * ("key = value" lines; a key given there replaces the default here). */
void
pool_write_conf(const pool_t *c, int workers, const char *extra)
{
    char key[64];
    const char *defaults[][2] = {{"process_interval", "20ms"},
                                 {"linger", "5ms"},
                                 {"batch_size", "50"},
                                 {"log_level", "debug"}};
    FILE *f = fopen(c->conf, "w");
    size_t i;

    assert_non_null(f);
    fprintf(f, "db = %s\nnats_url = %s\ninstance = %s\nworkers = %d\n", c->db, pool_env->nats_url,
            c->prefix, workers);
    for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        snprintf(key, sizeof(key), "%s =", defaults[i][0]);
        if (extra == NULL || strstr(extra, key) == NULL)
            fprintf(f, "%s = %s\n", defaults[i][0], defaults[i][1]);
    }
    fprintf(f, "%s", extra ? extra : "");
    fclose(f);
}

pid_t
pool_start(pool_t *c)
{
    char bin[512];
    char *argv[] = {bin, "-c", c->conf, "run", NULL};

    th_bin(bin, sizeof(bin), "outboxd");
    c->sup = th_spawn(argv, c->log);
    return c->sup;
}

/* Snapshot of the instance's region; 0, or -1 if it is not there (yet). */
int
pool_snap(const pool_t *c, outbox_stats_snapshot_t *s)
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

outbox_stats_snapshot_t *
pool_snap_new(void)
{
    outbox_stats_snapshot_t *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    return s;
}

/* Relays (role relay) that are ready and not stopping; pids into out. */
int
pool_ready_relays(const outbox_stats_snapshot_t *s, int64_t *pids, int max)
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

int64_t
pool_keeper_pid(const outbox_stats_snapshot_t *s)
{
    unsigned i;

    for (i = 0; i < s->nslots; i++)
        if (s->slot[i].role == OUTBOX_ROLE_KEEPER && s->slot[i].ready_us != 0 &&
            s->slot[i].state != OUTBOX_WS_STOPPING)
            return s->slot[i].pid;
    return 0;
}

/* Wait until exactly n relays (and the keeper) are ready. */
void
pool_wait_ready(pool_t *c, int n, int64_t timeout_ms)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t deadline = th_now_ms() + timeout_ms;

    for (;;) {
        if (pool_snap(c, s) == 0 && pool_ready_relays(s, NULL, 0) == n && pool_keeper_pid(s) != 0 &&
            (int)s->nslots == n + 1)
            break;
        if (th_now_ms() > deadline) {
            pool_dump_log(c);
            fail_msg("%d ready workers expected within %lld ms", n, (long long)timeout_ms);
        }
        th_sleep_ms(20);
    }
    free(s);
}

static void *
pool_producer(void *arg)
{
    pool_t *c = arg;
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
void
pool_produce_start(pool_t *c, int total, int per_tx, int pause_ms)
{
    c->prod_total = total;
    c->prod_per_tx = per_tx;
    c->prod_pause_ms = pause_ms;
    atomic_store(&c->produced, 0);
    atomic_store(&c->prod_stop, false);
    assert_int_equal(pthread_create(&c->prod, NULL, pool_producer, c), 0);
}

int
pool_produce_join(pool_t *c)
{
    pthread_join(c->prod, NULL);
    return atomic_load(&c->produced);
}

uint64_t
pool_stream_count(pool_t *c)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    uint64_t n;

    assert_int_equal(js_GetStreamInfo(&si, c->js, c->stream, NULL, &jerr), NATS_OK);
    n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

void
pool_wait_drained(pool_t *c, PGconn *pg, long long want, int64_t timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;

    while (th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1") < want ||
           pool_stream_count(c) < (uint64_t)want) {
        if (th_now_ms() > deadline) {
            pool_dump_log(c);
            fail_msg("%lld messages not delivered within %lld ms", want, (long long)timeout_ms);
        }
        th_sleep_ms(50);
    }
}

/* Nothing lost, nothing twice, nothing locked. */
void
pool_assert_exact(pool_t *c, PGconn *pg, long long want)
{
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox"), want);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state <> 1"), 0);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"), 0);
    assert_int_equal(pool_stream_count(c), (uint64_t)want);
}

/* `outboxstat -i NAME --json` parsed; caller json_decref()s. */
json_t *
pool_outboxstat_json(const pool_t *c)
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
char *
pool_outboxstat_text(const pool_t *c, const char *mode, int want_status)
{
    char bin[512], *text = NULL;
    char *argv[] = {bin, "-i", (char *)c->prefix, (char *)mode, NULL};

    th_bin(bin, sizeof(bin), "outboxstat");
    assert_int_equal(th_run(argv, &text, 10000), want_status);
    return text;
}

long long
pool_json_total(json_t *j, const char *counter)
{
    json_t *v = json_object_get(json_object_get(j, "totals"), counter);

    assert_non_null(v);
    return (long long)json_integer_value(v);
}

int
pool_alive(pid_t p)
{
    return kill(p, 0) == 0;
}
