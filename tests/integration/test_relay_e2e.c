/*
 * End to end against a real PostgreSQL and nats-server (JetStream): the
 * outboxd binary relays exactly the committed messages, byte-identical;
 * a SIGTERM mid-run leaves no lock and a restart still yields exactly the
 * committed set; two dispatchers never publish the same record; a record
 * re-published after a lost mark is dropped by the stream; core mode;
 * the commands refusing an unmigrated or half-dropped schema.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <pthread.h>

#include <nats/nats.h>

#include "harness.h"
#include "outbox/dispatcher.h"
#include "outbox/outbox.h"
#include "outbox/store.h"

static th_env_t env;

typedef struct ctx {
    char db[512];
    char stream[64];
    char prefix[64]; /* subject prefix, one per test */
    char log[256];
    natsConnection *nc;
    jsCtx *js;
} ctx_t;

static void
ctx_open(ctx_t *c, const char *name)
{
    char bin[512], subjects[96];
    char err[512];
    outbox_nats_options_t no = {
        .url = env.nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    int from, to;
    outbox_pg_options_t po;

    memset(c, 0, sizeof(*c));
    th_db_create(&env, name, c->db, sizeof(c->db));
    th_unique(c->prefix, sizeof(c->prefix), name);
    snprintf(c->stream, sizeof(c->stream), "S_%s", c->prefix);
    snprintf(subjects, sizeof(subjects), "%s.>", c->prefix);
    snprintf(c->log, sizeof(c->log), "/tmp/outbox-e2e-%s.log", c->prefix);
    po = (outbox_pg_options_t){.conninfo = c->db};
    assert_int_equal(outbox_pg_migrate(&po, &from, &to, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(outbox_nats_stream_add(&no, c->stream, subjects, 0, err, sizeof(err)),
                     OUTBOX_OK);
    assert_int_equal(natsConnection_ConnectTo(&c->nc, env.nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&c->js, c->nc, NULL), NATS_OK);
    th_bin(bin, sizeof(bin), "outboxd");
}

static void
ctx_close(ctx_t *c)
{
    jsErrCode jerr = 0;

    js_DeleteStream(c->js, c->stream, NULL, &jerr);
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    th_db_drop(&env, c->db);
    unlink(c->log);
}

static pid_t
relay_start(ctx_t *c, const char *mode)
{
    char bin[512];
    char *argv[] = {bin,
                    "run",
                    "--db",
                    c->db,
                    "--nats",
                    env.nats_url,
                    "--nats-mode",
                    (char *)mode,
                    "--process-interval",
                    "20ms",
                    "--linger",
                    "5ms",
                    "--batch-size",
                    "50",
                    "--log-level",
                    "debug",
                    "--instance",
                    c->prefix,
                    NULL};

    th_bin(bin, sizeof(bin), "outboxd");
    return th_spawn(argv, c->log);
}

static void
dump_log(const ctx_t *c)
{
    th_dump_file(c->log, "relay log");
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

/* Wait until no PENDING row is left (bounded). */
static void
wait_drained(ctx_t *c, PGconn *pg, int64_t timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;

    while (th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 0") > 0) {
        if (th_now_ms() > deadline) {
            dump_log(c);
            fail_msg("outbox not drained within %lld ms", (long long)timeout_ms);
        }
        th_sleep_ms(20);
    }
}

/* Enqueue count messages in transactions of per_tx; every rollback_every-th
 * transaction (1-based) is rolled back. Returns the number committed. */
static int
produce(ctx_t *c, PGconn *pg, int count, int per_tx, int rollback_every, int use_sql)
{
    char topic[128], key[32], body[64], id[OUTBOX_ID_LEN + 1], err[256];
    outbox_header_t h[2] = {{"content-type", "text/plain"}, {"trace", "t"}};
    int i = 0, tx = 0, committed = 0;

    while (i < count) {
        int in_tx = 0, rollback;

        tx++;
        rollback = rollback_every > 0 && tx % rollback_every == 0;
        th_exec(pg, "BEGIN");
        for (; i < count && in_tx < per_tx; i++, in_tx++) {
            outbox_message_t m = {.topic = topic,
                                  .key = key,
                                  .headers = h,
                                  .nheaders = 2,
                                  .body = body,
                                  .body_len = 0};

            snprintf(topic, sizeof(topic), "%s.orders.%s", c->prefix, rollback ? "rb" : "ok");
            snprintf(key, sizeof(key), "k%d", i);
            m.body_len = (size_t)snprintf(body, sizeof(body), "message %d", i);
            if (use_sql && i % 2 == 1) {
                th_exec(pg,
                        "SELECT outbox_enqueue('%s', '%s', '{\"content-type\":\"text/plain\"}',"
                        " convert_to('%s', 'UTF8'))",
                        topic, key, body);
            } else {
                assert_int_equal(outbox_enqueue(pg, NULL, NULL, &m, id, err, sizeof(err)),
                                 OUTBOX_OK);
            }
        }
        th_exec(pg, rollback ? "ROLLBACK" : "COMMIT");
        if (!rollback)
            committed += in_tx;
    }
    return committed;
}

static void
assert_no_locks(PGconn *pg)
{
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"), 0);
}

/* Every stream message is unique by Outbox-Id and none came from a rolled
 * back transaction. */
static void
assert_stream_exact(ctx_t *c, uint64_t want)
{
    uint64_t n = stream_count(c), seq;
    char **ids = calloc(n + 1, sizeof(char *));
    size_t i, j;

    assert_int_equal(n, want);
    for (seq = 1; seq <= n; seq++) {
        natsMsg *m = NULL;
        const char *id = NULL;
        jsErrCode jerr = 0;

        assert_int_equal(js_GetMsg(&m, c->js, c->stream, seq, NULL, &jerr), NATS_OK);
        assert_null(strstr(natsMsg_GetSubject(m), ".rb"));
        assert_int_equal(natsMsgHeader_Get(m, "Outbox-Id", &id), NATS_OK);
        ids[seq - 1] = strdup(id);
        natsMsg_Destroy(m);
    }
    for (i = 0; i < n; i++)
        for (j = i + 1; j < n; j++)
            if (strcmp(ids[i], ids[j]) == 0)
                fail_msg("record %s is in the stream twice", ids[i]);
    for (i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

static void
test_only_committed_messages_arrive(void **state)
{
    ctx_t c;
    PGconn *pg;
    pid_t relay;
    int committed;
    (void)state;

    ctx_open(&c, "e2e_commit");
    pg = th_connect(c.db);
    relay = relay_start(&c, "jetstream");
    committed = produce(&c, pg, 300, 10, 4, 1);
    assert_int_equal(committed, 230);
    wait_drained(&c, pg, 30000);
    th_sleep_ms(100);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"), committed);
    assert_stream_exact(&c, (uint64_t)committed);
    assert_int_equal(WEXITSTATUS(th_stop(relay, 10000)), 0);
    assert_no_locks(pg);
    PQfinish(pg);
    ctx_close(&c);
}

static void
test_byte_identical(void **state)
{
    static const unsigned char binary[] = {0x00, 0x01, 0xff, 'a', 0x00, '\n', '\r', 0x7f, 0x80};
    outbox_header_t h[] = {{"content-type", "application/octet-stream"},
                           {"x-greeting", "grüße, 世界 ✓"},
                           {"x-spaced", "a  b\tc"}};
    char topic[128], id1[OUTBOX_ID_LEN + 1], id2[OUTBOX_ID_LEN + 1], err[256];
    outbox_message_t m1, m2;
    natsMsg *got = NULL;
    const char *v = NULL;
    jsErrCode jerr = 0;
    PGconn *pg;
    pid_t relay;
    ctx_t c;
    (void)state;

    ctx_open(&c, "e2e_bytes");
    pg = th_connect(c.db);
    snprintf(topic, sizeof(topic), "%s.bin", c.prefix);
    m1 = (outbox_message_t){.topic = topic,
                            .key = "ключ-1",
                            .headers = h,
                            .nheaders = 3,
                            .body = binary,
                            .body_len = sizeof(binary)};
    m2 = (outbox_message_t){
        .topic = topic, .key = NULL, .headers = NULL, .nheaders = 0, .body = "", .body_len = 0};
    th_exec(pg, "BEGIN");
    assert_int_equal(outbox_enqueue(pg, NULL, NULL, &m1, id1, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(outbox_enqueue(pg, NULL, NULL, &m2, id2, err, sizeof(err)), OUTBOX_OK);
    th_exec(pg, "COMMIT");
    relay = relay_start(&c, "jetstream");
    wait_drained(&c, pg, 20000);
    assert_int_equal(stream_count(&c), 2);

    assert_int_equal(js_GetMsg(&got, c.js, c.stream, 1, NULL, &jerr), NATS_OK);
    assert_string_equal(natsMsg_GetSubject(got), topic);
    assert_int_equal(natsMsg_GetDataLength(got), sizeof(binary));
    assert_memory_equal(natsMsg_GetData(got), binary, sizeof(binary));
    assert_int_equal(natsMsgHeader_Get(got, "x-greeting", &v), NATS_OK);
    assert_string_equal(v, "grüße, 世界 ✓");
    assert_int_equal(natsMsgHeader_Get(got, "x-spaced", &v), NATS_OK);
    assert_string_equal(v, "a  b\tc");
    assert_int_equal(natsMsgHeader_Get(got, "content-type", &v), NATS_OK);
    assert_string_equal(v, "application/octet-stream");
    assert_int_equal(natsMsgHeader_Get(got, "Outbox-Key", &v), NATS_OK);
    assert_string_equal(v, "ключ-1");
    assert_int_equal(natsMsgHeader_Get(got, "Outbox-Id", &v), NATS_OK);
    assert_string_equal(v, id1);
    assert_int_equal(natsMsgHeader_Get(got, "Nats-Msg-Id", &v), NATS_OK);
    assert_string_equal(v, id1);
    natsMsg_Destroy(got);

    got = NULL;
    assert_int_equal(js_GetMsg(&got, c.js, c.stream, 2, NULL, &jerr), NATS_OK);
    assert_int_equal(natsMsg_GetDataLength(got), 0);
    assert_int_equal(natsMsgHeader_Get(got, "Outbox-Id", &v), NATS_OK);
    assert_string_equal(v, id2);
    assert_int_not_equal(natsMsgHeader_Get(got, "Outbox-Key", &v), NATS_OK);
    natsMsg_Destroy(got);

    th_stop(relay, 10000);
    PQfinish(pg);
    ctx_close(&c);
}

static void
test_sigterm_mid_run_then_restart(void **state)
{
    ctx_t c;
    PGconn *pg;
    pid_t relay;
    int committed, st, round;
    (void)state;

    ctx_open(&c, "e2e_term");
    pg = th_connect(c.db);
    committed = produce(&c, pg, 3000, 30, 7, 1);
    for (round = 0; round < 3; round++) {
        int64_t t0;

        relay = relay_start(&c, "jetstream");
        /* stop it while it is busy: after the first deliveries */
        t0 = th_now_ms();
        while (th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1") <
                   (long long)(round + 1) * 200 &&
               th_now_ms() - t0 < 20000)
            th_sleep_ms(2);
        st = th_stop(relay, 15000);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            dump_log(&c);
            fail_msg("relay did not stop cleanly on SIGTERM (status %d)", st);
        }
        assert_no_locks(pg);
    }
    relay = relay_start(&c, "jetstream");
    wait_drained(&c, pg, 60000);
    th_stop(relay, 15000);
    assert_no_locks(pg);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"), committed);
    assert_stream_exact(&c, (uint64_t)committed);
    PQfinish(pg);
    ctx_close(&c);
}

static void
test_republished_record_is_dropped_by_stream(void **state)
{
    ctx_t c;
    PGconn *pg;
    pid_t relay;
    int committed;
    (void)state;

    ctx_open(&c, "e2e_dup");
    pg = th_connect(c.db);
    committed = produce(&c, pg, 40, 10, 0, 0);
    relay = relay_start(&c, "jetstream");
    wait_drained(&c, pg, 20000);
    /* as if the relay died after publishing but before marking: the rows go
     * back to PENDING and are published again under the same id */
    th_exec(pg, "UPDATE outbox SET state = 0, processed_on = NULL WHERE seq %% 2 = 0");
    wait_drained(&c, pg, 20000);
    th_stop(relay, 10000);
    assert_stream_exact(&c, (uint64_t)committed);
    PQfinish(pg);
    ctx_close(&c);
}

/* ---- two dispatchers in one process, real store and broker ---- */

typedef struct counting_broker {
    outbox_broker_t base;
    outbox_broker_t *inner;
    pthread_mutex_t *mu;
    char (*ids)[OUTBOX_ID_LEN + 1];
    size_t *nids, cap;
} counting_broker_t;

static int
counting_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n,
                 outbox_pub_result_t *res)
{
    counting_broker_t *cb = (counting_broker_t *)b;
    size_t i;

    pthread_mutex_lock(cb->mu);
    for (i = 0; i < n && *cb->nids < cb->cap; i++)
        memcpy(cb->ids[(*cb->nids)++], recs[i].id, OUTBOX_ID_LEN + 1);
    pthread_mutex_unlock(cb->mu);
    return outbox_broker_publish(cb->inner, recs, n, res);
}

static void
counting_destroy(outbox_broker_t *b)
{
    (void)b;
}

static const outbox_broker_ops_t counting_ops = {.publish = counting_publish,
                                                 .destroy = counting_destroy};

typedef struct runner {
    const char *db, *lock_id;
    counting_broker_t cb;
    int passes;
} runner_t;

static void *
run_dispatcher(void *arg)
{
    runner_t *r = arg;
    outbox_pg_options_t po = {.conninfo = r->db};
    outbox_nats_options_t no = {
        .url = env.nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    outbox_dispatcher_settings_t s;
    outbox_dispatcher_t *d = NULL;
    outbox_store_t *store = NULL;
    outbox_broker_t *nats = NULL;
    char err[512];
    size_t claimed;
    int idle = 0;

    if (outbox_pg_store_create(&store, &po, err, sizeof(err)) != OUTBOX_OK ||
        outbox_nats_broker_create(&nats, &no, err, sizeof(err)) != OUTBOX_OK) {
        fprintf(stderr, "runner %s: %s\n", r->lock_id, err);
        return NULL;
    }
    r->cb.base.ops = &counting_ops;
    r->cb.inner = nats;
    outbox_dispatcher_settings_default(&s);
    s.batch_size = 7;
    if (outbox_dispatcher_create(&d, store, &r->cb.base, &s, r->lock_id, 1, err, sizeof(err)) !=
        OUTBOX_OK)
        return NULL;
    while (idle < 20 && r->passes < 100000) {
        r->passes++;
        if (outbox_dispatcher_process(d, &claimed) != OUTBOX_OK)
            fprintf(stderr, "runner %s: %s\n", r->lock_id, outbox_dispatcher_last_error(d));
        idle = claimed == 0 ? idle + 1 : 0;
    }
    outbox_dispatcher_release(d);
    outbox_dispatcher_destroy(d);
    outbox_broker_destroy(nats);
    outbox_store_destroy(store);
    return NULL;
}

static void
test_two_dispatchers_never_share_a_record(void **state)
{
    enum { N = 2000 };
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    char(*ids)[OUTBOX_ID_LEN + 1] = calloc(2 * N, OUTBOX_ID_LEN + 1);
    size_t nids = 0, i;
    runner_t r[2];
    pthread_t t[2];
    PGconn *pg;
    ctx_t c;
    int committed;
    (void)state;

    ctx_open(&c, "e2e_two");
    pg = th_connect(c.db);
    committed = produce(&c, pg, N, 100, 0, 0);
    memset(r, 0, sizeof(r));
    for (i = 0; i < 2; i++) {
        r[i].db = c.db;
        r[i].lock_id = i == 0 ? "relay-a" : "relay-b";
        r[i].cb.mu = &mu;
        r[i].cb.ids = ids;
        r[i].cb.nids = &nids;
        r[i].cb.cap = 2 * N;
        assert_int_equal(pthread_create(&t[i], NULL, run_dispatcher, &r[i]), 0);
    }
    for (i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"), committed);
    /* every record published exactly once across both dispatchers */
    assert_int_equal(nids, (size_t)committed);
    th_exec(pg, "CREATE TEMP TABLE seen (id uuid)");
    {
        char *sql = malloc((size_t)committed * 48 + 64), *p = sql;

        p += sprintf(p, "INSERT INTO seen VALUES ");
        for (i = 0; i < nids; i++)
            p += sprintf(p, "%s('%s')", i ? "," : "", ids[i]);
        th_exec(pg, "%s", sql);
        free(sql);
    }
    assert_int_equal(th_query_ll(pg, "SELECT count(DISTINCT id) FROM seen"), committed);
    assert_true(r[0].cb.base.ops != NULL && r[1].cb.base.ops != NULL);
    assert_no_locks(pg);
    free(ids);
    PQfinish(pg);
    ctx_close(&c);
}

static void
test_core_mode(void **state)
{
    natsSubscription *sub = NULL;
    char subj[96];
    ctx_t c;
    PGconn *pg;
    pid_t relay;
    int committed, got = 0;
    int64_t deadline;
    (void)state;

    ctx_open(&c, "e2e_core");
    pg = th_connect(c.db);
    snprintf(subj, sizeof(subj), "%s.>", c.prefix);
    assert_int_equal(natsConnection_SubscribeSync(&sub, c.nc, subj), NATS_OK);
    assert_int_equal(natsConnection_Flush(c.nc), NATS_OK);
    committed = produce(&c, pg, 100, 10, 3, 0);
    relay = relay_start(&c, "core");
    deadline = th_now_ms() + 20000;
    while (got < committed && th_now_ms() < deadline) {
        natsMsg *m = NULL;

        if (natsSubscription_NextMsg(&m, sub, 200) == NATS_OK) {
            const char *v = NULL;

            assert_null(strstr(natsMsg_GetSubject(m), ".rb"));
            assert_int_equal(natsMsgHeader_Get(m, "content-type", &v), NATS_OK);
            got++;
            natsMsg_Destroy(m);
        }
    }
    assert_int_equal(got, committed);
    wait_drained(&c, pg, 10000);
    th_stop(relay, 10000);
    natsSubscription_Destroy(sub);
    PQfinish(pg);
    ctx_close(&c);
}

static void
test_bad_config_exits_2_before_connecting(void **state)
{
    static const char *const cases[][3] = {
        {"--batch-size", "0", "batch_size"},
        {"--batch-size", "10001", "batch_size"},
        {"--retention", "10s", "retention"},
        {"--process-interval", "0", "process_interval"},
        {"--lock-check-interval", "-1s", "lock_check_interval"},
        {"--max-lock-time", "5s", "max_lock_time"}, /* < 2 x publish_timeout */
        {"--crash-limit", "1", "crash_limit"},
        {"--dead-letter-subject", "dead letters", "dead_letter_subject"},
        {"--per-key-order", "maybe", "per_key_order"},
        {"--linger", "-5ms", "linger"},
        {"--linger", "2s", "linger"}, /* not shorter than process_interval */
        /* a value quoted back is escaped: no terminal sequence reaches stderr */
        {"--batch-size", "5\x1b[2J", "\"5\\x1b[2J\" is not a whole number"},
    };
    char bin[512], log[256], line[1024];
    char *bogus[] = {bin, "bogus", NULL};
    size_t i;
    int st;
    (void)state;

    th_bin(bin, sizeof(bin), "outboxd");
    snprintf(log, sizeof(log), "/tmp/outbox-badcfg-%d.log", (int)getpid());
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[] = {
            bin, "run", "--db", "host=127.0.0.1 port=1", (char *)cases[i][0], (char *)cases[i][1],
            NULL};
        FILE *f;
        int named = 0;
        pid_t p;

        unlink(log);
        p = th_spawn(argv, log);
        assert_int_equal(th_wait(p, 5000, &st), 1);
        assert_true(WIFEXITED(st));
        if (WEXITSTATUS(st) != 2)
            fail_msg("%s %s: exit %d, expected 2", cases[i][0], cases[i][1], WEXITSTATUS(st));
        f = fopen(log, "r");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f) != NULL) {
            named |= strstr(line, cases[i][2]) != NULL;
            if (strchr(line, '\x1b') != NULL)
                fail_msg("%s %s: a raw ESC on stderr: %s", cases[i][0], cases[i][1], line);
        }
        fclose(f);
        if (!named)
            fail_msg("%s %s: the error does not name %s", cases[i][0], cases[i][1], cases[i][2]);
    }
    unlink(log);
    assert_int_equal(th_wait(th_spawn(bogus, NULL), 5000, &st), 1);
    assert_int_equal(WEXITSTATUS(st), 2);
}

static void
test_unmigrated_database_is_refused(void **state)
{
    char db[512], bin[512], log[] = "/tmp/outbox-e2e-nomig.log";
    char inst[64];
    char *argv[] = {bin, "run", "--db", db, "--nats", env.nats_url, "--instance", inst, NULL};
    int st;
    pid_t p;
    (void)state;

    th_unique(inst, sizeof(inst), "e2e_nomig");
    th_db_create(&env, "e2e_nomig", db, sizeof(db));
    th_bin(bin, sizeof(bin), "outboxd");
    unlink(log);
    p = th_spawn(argv, log);
    assert_int_equal(th_wait(p, 15000, &st), 1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    assert_true(th_file_has(log, "outboxd migrate"));
    unlink(log);
    th_db_drop(&env, db);
}

/* Run argv: it must exit with code and its output contain says. */
static void
run_says(char *const argv[], int code, const char *says)
{
    char *out = NULL;
    int rc = th_run(argv, &out, 30000);

    if (rc != code || strstr(out, says) == NULL)
        fail_msg("%s %s: exit %d, expected %d saying \"%s\"; it said: %s", argv[1],
                 argv[2] != NULL ? argv[2] : "", rc, code, says, out);
    free(out);
}

/* `outboxd migrate` when <table>_migrations records the schema but the
 * table was dropped: not "already at version 2" (the relay would then ask
 * for a migrate, a loop) but exit 1 naming the table and the statement
 * that clears the rest; after that statement migrate installs it again.
 * Any other object dropped or disabled by hand (functions, the guard
 * trigger, indexes, the wake-up objects, <table>_migrations) is named too,
 * and `migrate --repair` restores it, keeping the table's rows. */
static void
test_migrate_refuses_dropped_table(void **state)
{
    char db[512], bin[512], *out = NULL;
    char *argv[] = {bin, "migrate", "--db", db, NULL};
    const char *fix;
    PGconn *pg;
    (void)state;

    th_db_create(&env, "e2e_dropped", db, sizeof(db));
    th_bin(bin, sizeof(bin), "outboxd");
    assert_int_equal(th_run(argv, NULL, 30000), 0);
    pg = th_connect(db);
    th_exec(pg, "DROP TABLE outbox");
    assert_int_equal(th_run(argv, &out, 30000), 1);
    assert_null(strstr(out, "already at version"));
    assert_non_null(strstr(out, "table \"public\".\"outbox\" is missing"));
    assert_non_null(strstr(out, "\"public\".\"outbox_migrations\" records schema version 2"));
    fix = strstr(out, "DROP TABLE IF EXISTS");
    assert_non_null(fix);
    th_exec(pg, "%.*s", (int)strcspn(fix, "\n"), fix);
    free(out);
    /* the statement leaves nothing of the old install behind */
    assert_int_equal(th_query_ll(pg, "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE "
                                     "'outbox%%') + (SELECT count(*) FROM pg_proc WHERE proname "
                                     "LIKE 'outbox%%')"),
                     0);
    run_says(argv, 0, "migrated from version 0 to 2");

    /* objects dropped or disabled by hand: migrate names every one and
     * refers to --repair, which restores them and keeps the rows */
    {
        static const struct {
            const char *breaks, *says;
        } cases[] = {
            {"ALTER TABLE outbox DISABLE TRIGGER outbox_guard",
             "trigger \"outbox_guard\" is disabled"},
            {"DROP TRIGGER outbox_guard ON outbox", "trigger \"outbox_guard\" is missing"},
            {"ALTER TABLE outbox ENABLE REPLICA TRIGGER outbox_guard",
             "trigger \"outbox_guard\" is enabled for replicas only"},
            {"DELETE FROM outbox_migrations WHERE version = 2",
             "records only version 1 (rows deleted by hand?)"},
            {"DELETE FROM outbox_migrations WHERE version = 1",
             "records 1 of versions 1 to 2 (rows deleted by hand?)"},
            {"DROP TRIGGER outbox_guard ON outbox; CREATE TRIGGER outbox_guard AFTER DELETE ON "
             "outbox FOR EACH ROW EXECUTE FUNCTION outbox_guard()",
             "trigger \"outbox_guard\" is not the guard"},
            {"DROP FUNCTION outbox_guard() CASCADE",
             "\"public\".\"outbox_guard\"() is missing; trigger \"outbox_guard\" is missing"},
            {"DROP TABLE outbox_migrations",
             "\"public\".\"outbox_migrations\" records none (dropped by hand?)"},
            {"DROP TRIGGER outbox_guard ON outbox; DROP TABLE outbox_migrations",
             "records none (dropped by hand?), so migrate cannot tell what to apply; also trigger "
             "\"outbox_guard\" is missing"},
            {"DROP SEQUENCE outbox_idle; DROP TABLE outbox_listeners",
             "\"public\".\"outbox_listeners\", \"public\".\"outbox_idle\" are missing"},
            {"DROP FUNCTION outbox_enqueue; DROP FUNCTION outbox_invalid_why; DROP INDEX "
             "outbox_key_pending",
             "\"public\".\"outbox_key_pending\", \"public\".\"outbox_enqueue\"(text, text, jsonb, "
             "bytea), \"public\".\"outbox_invalid_why\"(text, text, jsonb) are missing"},
        };
        char *repair[] = {bin, "migrate", "--repair", "--db", db, NULL};
        size_t i;

        th_exec(pg, "SELECT outbox_enqueue('kept.' || g, NULL, '{}', 'x') FROM "
                    "generate_series(1, 5) g");
        for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            th_exec(pg, "%s", cases[i].breaks);
            assert_int_equal(th_run(argv, &out, 30000), 1);
            assert_null(strstr(out, "already at version"));
            if (strstr(out, cases[i].says) == NULL || strstr(out, "migrate --repair") == NULL)
                fail_msg("case %zu: \"%s\" lacks \"%s\"", i, out, cases[i].says);
            free(out);
            run_says(repair, 0, "repaired, at version 2");
            run_says(argv, 0, "already at version 2");
            /* validation, the wake-up flag and the rows are all back */
            assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM pg_trigger WHERE tgname = "
                                             "'outbox_guard' AND tgenabled = 'O'"),
                             1);
            assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE topic LIKE "
                                             "'kept.%%'"),
                             5);
            assert_int_equal(th_query_ll(pg, "SELECT max(version) FROM outbox_migrations"), 2);
        }
        /* a version newer than this build's: neither migrates nor repairs */
        th_exec(pg, "INSERT INTO outbox_migrations VALUES (3, 'from a newer build')");
        run_says(argv, 1, "records schema version 3, newer than this build's 2");
        run_says(repair, 1, "newer than this build's 2");
        th_exec(pg, "DELETE FROM outbox_migrations WHERE version = 3");
        /* a table of another application is named as such by both */
        th_exec(pg, "CREATE TABLE notob (id int, crashes int)");
        {
            char *other[] = {bin, "migrate", "--db", db, "--table", "notob", NULL};
            char *other_repair[] = {bin, "migrate", "--repair", "--db",
                                    db,  "--table", "notob",    NULL};

            run_says(other, 1, "it is not an outbox table");
            run_says(other_repair, 1, "it is not an outbox table");
        }
        /* repair on a healthy schema changes nothing; without the table it refuses */
        assert_int_equal(th_run(repair, &out, 30000), 0);
        free(out);
        th_exec(pg, "DROP TABLE outbox");
        run_says(repair, 1, "repair keeps a table, it does not make one");
    }
    PQfinish(pg);
    th_db_drop(&env, db);
}

/* A database whose encoding is not UTF8 (SQL_ASCII stores any bytes, and
 * one row that is not UTF-8 would fail every claim that reads it) is
 * refused by migrate and by the relay, naming the encoding. */
static void
test_non_utf8_database_refused(void **state)
{
    char db[512], bin[512], log[256], name[128];
    char *mig[] = {bin, "migrate", "--db", db, NULL};
    char *run[] = {bin, "run", "--db", db, "--nats", env.nats_url, "--instance", name, NULL};
    const char *p;
    PGconn *admin;
    int st;
    (void)state;

    th_db_create(&env, "e2e_ascii", db, sizeof(db));
    p = strstr(db, "dbname=");
    assert_non_null(p);
    snprintf(name, sizeof(name), "%.*s", (int)strcspn(p + 7, " '"), p + 7);
    admin = th_connect(env.pg_admin);
    th_exec(admin, "DROP DATABASE \"%s\"", name);
    th_exec(admin,
            "CREATE DATABASE \"%s\" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' "
            "LC_CTYPE 'C'",
            name);
    PQfinish(admin);
    th_bin(bin, sizeof(bin), "outboxd");
    run_says(mig, 1, "has encoding SQL_ASCII; outbox needs UTF8");
    snprintf(log, sizeof(log), "/tmp/outbox-ascii-%d.log", (int)getpid());
    unlink(log);
    assert_int_equal(th_wait(th_spawn(run, log), 20000, &st), 1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    if (!th_file_has(log, "outbox needs UTF8")) {
        th_dump_file(log, "outboxd log");
        fail_msg("the relay's log does not name the encoding");
    }
    unlink(log);
    th_db_drop(&env, db);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_committed_messages_arrive),
        cmocka_unit_test(test_byte_identical),
        cmocka_unit_test(test_sigterm_mid_run_then_restart),
        cmocka_unit_test(test_republished_record_is_dropped_by_stream),
        cmocka_unit_test(test_two_dispatchers_never_share_a_record),
        cmocka_unit_test(test_core_mode),
        cmocka_unit_test(test_bad_config_exits_2_before_connecting),
        cmocka_unit_test(test_unmigrated_database_is_refused),
        cmocka_unit_test(test_migrate_refuses_dropped_table),
        cmocka_unit_test(test_non_utf8_database_refused),
    };

    th_env_load(&env);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
