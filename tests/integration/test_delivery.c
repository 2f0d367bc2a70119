/*
 * Delivery semantics against a real PostgreSQL and nats-server (JetStream),
 * through `outboxd run`: a poison record that kills its worker is parked
 * and its batch mates delivered; per-key ordering across workers, retries
 * and a killed worker; dead letters and the `outboxd dead` commands; retry
 * backoff; outages of both servers (restart, killed connections, a paused
 * nats-server) ending with every committed message in the stream once; the
 * duplicate-window warning. Every loop is bounded in count and time.
 */
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

static th_env_t env;

/* `outboxd -c CONF args...`: exit status; output (stdout+stderr) into out
 * (malloc'd, caller frees) when out is not NULL. */
static int
outboxd(const pool_t *c, char **out, const char *a1, const char *a2, const char *a3, const char *a4,
        const char *a5)
{
    char bin[512];
    char *argv[] = {bin,        "-c",       (char *)c->conf, (char *)a1, (char *)a2,
                    (char *)a3, (char *)a4, (char *)a5,      NULL};

    th_bin(bin, sizeof(bin), "outboxd");
    return th_run(argv, out, 30000);
}

/* Wait until the SQL count query returns want. */
static void
wait_count(pool_t *c, PGconn *pg, long long want, int64_t timeout_ms, const char *sql)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    long long n;

    while ((n = th_query_ll(pg, "%s", sql)) != want) {
        if (th_now_ms() > deadline) {
            pool_dump_log(c);
            fail_msg("%s: %lld, expected %lld within %lld ms", sql, n, want, (long long)timeout_ms);
        }
        th_sleep_ms(20);
    }
}

static void
set_stream_subjects(pool_t *c, const char *subjects)
{
    outbox_nats_options_t no = {
        .url = pool_env->nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    char err[512];

    if (outbox_nats_stream_update(&no, c->stream, subjects, 0, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("stream update: %s", err);
}

/* Stream message seq: subject, body and a header into the buffers. */
static void
stream_msg(pool_t *c, uint64_t seq, char *subj, size_t slen, char *body, size_t blen,
           const char *hdr, char *hval, size_t hlen)
{
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    const char *v = NULL;
    int n;

    if (js_GetMsg(&m, c->js, c->stream, seq, NULL, &jerr) != NATS_OK)
        fail_msg("stream %s has no message %llu (err %d)", c->stream, (unsigned long long)seq,
                 (int)jerr);
    snprintf(subj, slen, "%s", natsMsg_GetSubject(m));
    n = natsMsg_GetDataLength(m);
    snprintf(body, blen, "%.*s", n, natsMsg_GetData(m) != NULL ? natsMsg_GetData(m) : "");
    if (hdr != NULL) {
        hval[0] = '\0';
        if (natsMsgHeader_Get(m, hdr, &v) == NATS_OK)
            snprintf(hval, hlen, "%s", v);
    }
    natsMsg_Destroy(m);
}

/* ---- a poison record ---- */

/* A record whose publishing kills its worker (SIGKILL, as the OOM killer
 * would) must not crash-loop the pool: after crash_limit deaths it is dead
 * with the reason, and the innocent records that shared its batch are
 * delivered. Needs the fault-injection build (tools/check.sh makes one). */
static void
test_poison_record_is_parked_innocents_delivered(void **state)
{
#ifndef OUTBOX_FAULT_INJECTION
    (void)state;
    skip();
#else
    char poison[128];
    PGconn *pg;
    json_t *j;
    pool_t c;
    (void)state;

    pool_open(&c, "poison");
    snprintf(poison, sizeof(poison), "%s.poison", c.prefix);
    pg = th_connect(c.db);
    /* one transaction: 10 innocents, the poison, 10 innocents */
    th_exec(pg,
            "SELECT outbox_enqueue(CASE WHEN g = 11 THEN '%s' ELSE '%s.ok' END, NULL, '{}', "
            "convert_to('m' || g, 'UTF8')) FROM generate_series(1, 21) g",
            poison, c.prefix);
    pool_write_conf(&c, 2, "batch_size = 50\nprocess_interval = 50ms\n");
    setenv("OUTBOX_FAULT_KILL_TOPIC", poison, 1);
    pool_start(&c);
    unsetenv("OUTBOX_FAULT_KILL_TOPIC");
    wait_count(&c, pg, 1, 90000, "SELECT count(*) FROM outbox WHERE state = 2");
    wait_count(&c, pg, 20, 30000, "SELECT count(*) FROM outbox WHERE state = 1");
    assert_int_equal(th_query_ll(pg,
                                 "SELECT count(*) FROM outbox WHERE state = 2 AND topic = "
                                 "'%s' AND crashes = 3 AND last_error = 'worker died while "
                                 "processing (3 times)'",
                                 poison),
                     1);
    /* innocents: at most the one crash of the shared batch */
    if (th_query_ll(pg, "SELECT max(crashes) FROM outbox WHERE state = 1") != 1) {
        PGresult *r = PQexec(pg, "SELECT seq || ' ' || topic || ' crashes ' || crashes FROM "
                                 "outbox ORDER BY seq");
        int i;

        pool_dump_log(&c);
        for (i = 0; i < PQntuples(r); i++)
            fprintf(stderr, "row %s\n", PQgetvalue(r, i, 0));
        PQclear(r);
    }
    assert_int_equal(th_query_ll(pg, "SELECT max(crashes) FROM outbox WHERE state = 1"), 1);
    assert_int_equal(pool_stream_count(&c), 20);
    assert_true(pool_alive(c.sup));
    j = pool_outboxstat_json(&c);
    assert_true(json_integer_value(json_object_get(json_object_get(j, "supervisor"), "crashes")) >=
                3);
    json_decref(j);
    assert_true(pool_log_has(&c, "worker died while processing"));
    PQfinish(pg);
    pool_close(&c);
#endif
}

/* ---- per-key ordering ---- */

#define ORD_KEYS 10
#define ORD_PER_KEY 40

/* Records of one key reach the stream in creation order, with 3 workers,
 * retries (a subject no stream captures yet) and a worker killed -9 in
 * between; a failing record holds back only its own key: the keys that do
 * not fail are delivered meanwhile. */
static void
test_per_key_order_across_workers_and_failures(void **state)
{
    char subjects[128], subj[128], body[64], key[64];
    int last[ORD_KEYS], seen[ORD_KEYS][ORD_PER_KEY], k, j;
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8];
    uint64_t seq, total = ORD_KEYS * ORD_PER_KEY;
    PGconn *pg;
    pool_t c;
    (void)state;

    pool_open(&c, "order");
    snprintf(subjects, sizeof(subjects), "%s.ok.>", c.prefix);
    set_stream_subjects(&c, subjects);
    pg = th_connect(c.db);
    /* keys k0..k4 have a record at j = 3 on a subject no stream takes yet;
     * k5..k9 never fail. Creation order: j-major, 5 records a commit. */
    th_exec(pg, "BEGIN");
    for (j = 0; j < ORD_PER_KEY; j++) {
        for (k = 0; k < ORD_KEYS; k++)
            th_exec(pg, "SELECT outbox_enqueue('%s.%s.x', 'k%d', '{}', 'k%d:%d')", c.prefix,
                    k < 5 && j == 3 ? "late" : "ok", k, k, j);
        if (j % 5 == 4) {
            th_exec(pg, "COMMIT");
            th_exec(pg, "BEGIN");
        }
    }
    th_exec(pg, "COMMIT");
    pool_write_conf(&c, 3,
                    "per_key_order = on\nbatch_size = 20\nretry_initial = 100ms\n"
                    "retry_max = 400ms\nmax_attempts = 0\n");
    pool_start(&c);
    pool_wait_ready(&c, 3, 20000);
    /* the keys that never fail are all delivered while k0..k4 wait at j=3 */
    wait_count(&c, pg, 5 * ORD_PER_KEY, 30000,
               "SELECT count(*) FROM outbox WHERE state = 1 AND msg_key IN "
               "('k5','k6','k7','k8','k9')");
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1 AND msg_key IN "
                                     "('k0','k1','k2','k3','k4')"),
                     5 * 3);
    assert_true(th_query_ll(pg, "SELECT min(attempts) FROM outbox WHERE topic LIKE '%%.late.x'") >=
                1);
    /* a worker killed -9, then the stream takes the late subject */
    assert_int_equal(pool_snap(&c, s), 0);
    assert_true(pool_ready_relays(s, pids, 8) >= 1);
    kill((pid_t)pids[0], SIGKILL);
    snprintf(subjects, sizeof(subjects), "%s.>", c.prefix);
    set_stream_subjects(&c, subjects);
    pool_wait_drained(&c, pg, (long long)total, 60000);
    pool_assert_exact(&c, pg, (long long)total);

    /* stream order, per key: 0, 1, 2 ... ORD_PER_KEY-1, each once */
    memset(seen, 0, sizeof(seen));
    for (k = 0; k < ORD_KEYS; k++)
        last[k] = -1;
    for (seq = 1; seq <= total; seq++) {
        int kk, jj;

        stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_KEY, key,
                   sizeof(key));
        if (sscanf(body, "k%d:%d", &kk, &jj) != 2 || kk < 0 || kk >= ORD_KEYS || jj < 0 ||
            jj >= ORD_PER_KEY)
            fail_msg("stream message %llu has body '%s'", (unsigned long long)seq, body);
        if (jj != last[kk] + 1)
            fail_msg("key k%d: record %d arrived after %d (stream seq %llu)", kk, jj, last[kk],
                     (unsigned long long)seq);
        last[kk] = jj;
        seen[kk][jj]++;
    }
    for (k = 0; k < ORD_KEYS; k++)
        assert_int_equal(last[k], ORD_PER_KEY - 1);
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* ---- dead letters and `outboxd dead` ---- */

/* Records made dead (attempts used up; too large for max_payload) are also
 * published to dead_letter_subject with the reason; the operator lists,
 * shows, requeues (fresh id, delivered) and purges them. */
static void
test_dead_letters_and_operator_commands(void **state)
{
    char subjects[160], subj[128], body[64], hval[600], extra[256],
        *out = NULL, pat[128], idA[OUTBOX_ID_LEN + 1], hid[128];
    PGconn *pg;
    PGresult *r;
    uint64_t seq, n;
    int dead_copies = 0;
    pool_t c;
    (void)state;

    pool_open(&c, "dead");
    snprintf(subjects, sizeof(subjects), "%s.ok.>,%s.dead", c.prefix, c.prefix);
    set_stream_subjects(&c, subjects);
    pg = th_connect(c.db);
    th_exec(pg, "SELECT outbox_enqueue('%s.nostream.a', 'ka', '{\"h\":\"v\"}', 'a')", c.prefix);
    th_exec(pg,
            "SELECT outbox_enqueue('%s.ok.big', NULL, '{}', decode(repeat('ab', 1048576), "
            "'hex'))",
            c.prefix);
    th_exec(pg, "SELECT outbox_enqueue('%s.ok.c', NULL, '{}', 'c')", c.prefix);
    r = PQexec(pg, "SELECT id FROM outbox ORDER BY seq LIMIT 1");
    snprintf(idA, sizeof(idA), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    snprintf(extra, sizeof(extra),
             "dead_letter_subject = %s.dead\nmax_attempts = 2\nretry_initial = 50ms\n", c.prefix);
    pool_write_conf(&c, 1, extra);
    pool_start(&c);
    wait_count(&c, pg, 2, 30000, "SELECT count(*) FROM outbox WHERE state = 2");
    wait_count(&c, pg, 1, 30000, "SELECT count(*) FROM outbox WHERE state = 1");
    /* c, and one dead-letter copy per dead record, in the stream */
    n = pool_stream_count(&c);
    assert_int_equal(n, 3);
    for (seq = 1; seq <= n; seq++) {
        stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_DEAD_REASON, hval,
                   sizeof(hval));
        if (strstr(subj, ".dead") == NULL)
            continue;
        dead_copies++;
        stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_TOPIC, hid,
                   sizeof(hid));
        if (strstr(hid, ".nostream.a") != NULL) {
            assert_string_equal(body, "a");
            stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_DEAD_REASON,
                       hval, sizeof(hval));
            assert_non_null(strstr(hval, "max attempts (2) reached"));
            stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_ID, hid,
                       sizeof(hid));
            assert_string_equal(hid, idA);
        } else {
            assert_non_null(strstr(hid, ".ok.big"));
            assert_string_equal(body, ""); /* too large: sent without its body */
            stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_BODY_OMITTED,
                       hid, sizeof(hid));
            assert_string_equal(hid, "1048576");
            stream_msg(&c, seq, subj, sizeof(subj), body, sizeof(body), OUTBOX_HDR_DEAD_REASON,
                       hval, sizeof(hval));
            assert_non_null(strstr(hval, "max_payload"));
        }
    }
    assert_int_equal(dead_copies, 2);

    /* list, filters, show */
    assert_int_equal(outboxd(&c, &out, "dead", "list", "--json", NULL, NULL), 0);
    assert_non_null(strstr(out, "\"total\": 2"));
    free(out);
    snprintf(pat, sizeof(pat), "%s.nostream.*", c.prefix);
    assert_int_equal(outboxd(&c, &out, "dead", "list", "--topic", pat, NULL), 0);
    assert_non_null(strstr(out, idA));
    assert_non_null(strstr(out, "1 dead record"));
    free(out);
    assert_int_equal(outboxd(&c, &out, "dead", "show", idA, NULL, NULL), 0);
    assert_non_null(strstr(out, "max attempts (2) reached"));
    free(out);
    /* requeue and purge refuse to act on everything by accident */
    assert_int_equal(outboxd(&c, &out, "dead", "requeue", NULL, NULL, NULL), 2);
    assert_non_null(strstr(out, "--all"));
    free(out);
    assert_int_equal(outboxd(&c, NULL, "dead", "show", "not-an-id", NULL, NULL), 2);
    /* --all beside an id or a filter: which one was meant? usage error, nothing done */
    assert_int_equal(outboxd(&c, &out, "dead", "purge", "--all", idA, NULL), 2);
    assert_non_null(strstr(out, "--all acts on every dead record"));
    free(out);
    assert_int_equal(outboxd(&c, NULL, "dead", "requeue", "--all", "--topic", pat), 2);
    assert_int_equal(outboxd(&c, NULL, "dead", "list", "--all", NULL, NULL), 2);

    /* the stream now takes the subject: requeue, delivered under a new id */
    snprintf(subjects, sizeof(subjects), "%s.>", c.prefix);
    set_stream_subjects(&c, subjects);
    snprintf(pat, sizeof(pat), "%s.nostream.>", c.prefix);
    assert_int_equal(outboxd(&c, &out, "dead", "requeue", "--topic", pat, NULL), 0);
    assert_non_null(strstr(out, "1 dead record requeued"));
    free(out);
    wait_count(&c, pg, 2, 30000, "SELECT count(*) FROM outbox WHERE state = 1");
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE id = '%s'", idA), 0);
    assert_int_equal(th_query_ll(pg,
                                 "SELECT count(*) FROM outbox WHERE state = 1 AND attempts "
                                 "= 0 AND last_error LIKE 'requeued from dead (was %s)%%'",
                                 idA),
                     1);
    assert_int_equal(pool_stream_count(&c), 4);
    /* empty filters match everything: refused without --all */
    assert_int_equal(outboxd(&c, &out, "dead", "purge", "--error", "", NULL), 2);
    assert_non_null(strstr(out, "--all"));
    free(out);
    /* purge: the other dead one goes, nothing else */
    assert_int_equal(outboxd(&c, &out, "dead", "purge", "--all", NULL, NULL), 0);
    assert_non_null(strstr(out, "1 dead record purged"));
    free(out);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox"), 2);

    /* requeue keeps a key's order: 30 dead records of one key, inserted in
     * reverse physical order, get new seqs in their old order; --limit takes
     * the oldest deaths first */
    th_exec(pg,
            "INSERT INTO outbox (topic, msg_key, body, state, processed_on) SELECT '%s.rq', "
            "'K', convert_to('r' || lpad(g::text, 2, '0'), 'UTF8'), 2, now() FROM "
            "generate_series(1, 30) g",
            c.prefix);
    th_exec(pg, "UPDATE outbox SET headers = '{}' WHERE topic = '%s.rq' AND seq %% 2 = 0",
            c.prefix); /* scatter them in the heap */
    snprintf(pat, sizeof(pat), "%s.rq", c.prefix);
    assert_int_equal(outboxd(&c, &out, "dead", "requeue", "--topic", pat, "--limit=10"), 0);
    assert_non_null(strstr(out, "10 dead records requeued"));
    free(out);
    assert_int_equal(outboxd(&c, &out, "dead", "requeue", "--topic", pat, NULL), 0);
    assert_non_null(strstr(out, "20 dead records requeued"));
    free(out);
    {
        PGresult *order = PQexec(pg, "SELECT string_agg(convert_from(body, 'UTF8'), ',' ORDER "
                                     "BY seq) FROM outbox WHERE msg_key = 'K'");
        char want[256] = "";
        int k;

        for (k = 1; k <= 30; k++)
            snprintf(want + strlen(want), sizeof(want) - strlen(want), "%sr%02d", k > 1 ? "," : "",
                     k);
        assert_string_equal(PQgetvalue(order, 0, 0), want);
        PQclear(order);
    }

    /* Ids that are not dead records (delivered, missing) are named and the
     * exit is 1; the dead ones given with them are still acted on. A filter
     * matching nothing is no failure. */
    {
        static const char dead1[] = "00000000-0000-4000-8000-0000000000d1",
                          dead2[] = "00000000-0000-4000-8000-0000000000d2",
                          gone[] = "00000000-0000-4000-8000-00000000beef";
        char delivered[OUTBOX_ID_LEN + 1];

        th_exec(pg,
                "INSERT INTO outbox (id, topic, body, state, processed_on) VALUES ('%s', "
                "'%s.mix', 'x', 2, now()), ('%s', '%s.mix', 'y', 2, now())",
                dead1, c.prefix, dead2, c.prefix);
        r = PQexec(pg, "SELECT id FROM outbox WHERE state = 1 LIMIT 1");
        assert_int_equal(PQntuples(r), 1);
        snprintf(delivered, sizeof(delivered), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        assert_int_equal(outboxd(&c, &out, "dead", "requeue", dead1, delivered, gone), 1);
        assert_non_null(strstr(out, "1 dead record requeued"));
        assert_non_null(strstr(out, "2 of 3 given ids not requeued"));
        assert_non_null(strstr(out, delivered));
        assert_non_null(strstr(out, "delivered, not dead"));
        assert_non_null(strstr(out, gone));
        assert_non_null(strstr(out, "no such record"));
        free(out);
        assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE id = '%s'", dead1), 0);
        assert_int_equal(outboxd(&c, &out, "dead", "purge", gone, dead2, "--json"), 1);
        assert_non_null(strstr(out, "{\"purged\": 1}"));
        assert_non_null(strstr(out, "1 of 2 given ids not purged"));
        free(out);
        assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE id = '%s'", dead2), 0);
        assert_int_equal(outboxd(&c, &out, "dead", "purge", delivered, NULL, NULL), 1);
        assert_non_null(strstr(out, "0 dead records purged"));
        free(out);
        assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE id = '%s'", delivered),
                         1);
        assert_int_equal(outboxd(&c, &out, "dead", "show", gone, NULL, NULL), 1);
        assert_non_null(strstr(out, gone));
        free(out);
        assert_int_equal(outboxd(&c, &out, "dead", "purge", "--topic", "no.such.topic", NULL), 0);
        assert_non_null(strstr(out, "0 dead records purged"));
        free(out);
    }
    PQfinish(pg);
    pool_close(&c);
}

/* Rows written around the guard trigger (trigger disabled, a restore, an
 * old client) can hold any text. What outboxd prints of them, the relay's
 * log and `dead list`/`dead show`, is escaped: no raw control character
 * (a terminal escape sequence, a newline splitting a log line) gets out. */
static void
test_row_text_is_printed_escaped(void **state)
{
    char *out = NULL, id[OUTBOX_ID_LEN + 1];
    const char *p;
    PGconn *pg;
    PGresult *r;
    pool_t c;
    (void)state;

    pool_open(&c, "escape");
    pg = th_connect(c.db);
    th_exec(pg, "ALTER TABLE outbox DISABLE TRIGGER outbox_guard");
    /* pending, an invalid subject: the relay parks it and logs why */
    th_exec(pg,
            "INSERT INTO outbox (id, topic, msg_key, headers, body) VALUES (gen_random_uuid(),"
            " E'%s.t\\x1b[2J\\nfake log line', E'k\\x07', '{}', 'b')",
            c.prefix);
    /* already dead, control characters in every text column and the body */
    th_exec(pg,
            "INSERT INTO outbox (id, topic, msg_key, headers, body, state, processed_on,"
            " last_error) VALUES (gen_random_uuid(), E'%s.d\\x1b]0;title\\x07\\u009b\\u202e',"
            " E'key\\x1b[31m', E'{\"h\": \"v\\\\u001b\"}',"
            " E'body\\\\033[2Jmore\\\\012\\\\377', 2, now(), E'why\\x1b[5m\\r')",
            c.prefix);
    th_exec(pg, "ALTER TABLE outbox ENABLE TRIGGER outbox_guard");
    r = PQexec(pg, "SELECT id FROM outbox WHERE state = 2");
    assert_int_equal(PQntuples(r), 1);
    snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    pool_write_conf(&c, 1, NULL);
    pool_start(&c);
    wait_count(&c, pg, 2, 30000, "SELECT count(*) FROM outbox WHERE state = 2");
    {
        /* the line is written after the mark commits */
        int64_t deadline = th_now_ms() + 15000;

        while (!pool_log_has(&c, "parked as dead") && th_now_ms() < deadline)
            th_sleep_ms(50);
    }
    assert_true(pool_log_has(&c, "parked as dead"));
    assert_true(pool_log_has(&c, ".t\\x1b[2J\\nfake log line"));
    assert_false(pool_log_has(&c, "\x1b"));

    assert_int_equal(outboxd(&c, &out, "dead", "list", NULL, NULL, NULL), 0);
    assert_non_null(strstr(out, "2 dead records"));
    assert_non_null(strstr(out, "why\\x1b[5m\\r"));
    for (p = out; *p != '\0'; p++)
        if ((unsigned char)*p < ' ' && *p != '\n')
            fail_msg("dead list printed a raw 0x%02x:\n%s", (unsigned char)*p, out);
    free(out);
    assert_int_equal(outboxd(&c, &out, "dead", "show", id, NULL, NULL), 0);
    assert_non_null(strstr(out, ".d\\x1b]0;title\\x07\\u009b\\u202e"));
    assert_non_null(strstr(out, "key\\x1b[31m"));
    assert_non_null(strstr(out, "{\"h\": \"v\\u001b\"}")); /* JSON: its own escape, once */
    assert_non_null(strstr(out, "body\\x1b[2Jmore\\n\\xff"));
    for (p = out; *p != '\0'; p++)
        if ((unsigned char)*p < ' ' && *p != '\n')
            fail_msg("dead show printed a raw 0x%02x:\n%s", (unsigned char)*p, out);
    free(out);
    /* JSON: the exact text, every character past ASCII as \uXXXX */
    assert_int_equal(outboxd(&c, &out, "dead", "show", id, "--json", NULL), 0);
    assert_non_null(strstr(out, "title\\u0007\\u009B\\u202E"));
    for (p = out; *p != '\0'; p++)
        if ((unsigned char)*p >= 0x80 || ((unsigned char)*p < ' ' && *p != '\n'))
            fail_msg("dead show --json printed a raw 0x%02x:\n%s", (unsigned char)*p, out);
    free(out);
    PQfinish(pg);
    pool_close(&c);
}

/* The relay runs on a schema changed by hand (here the guard trigger
 * disabled: no validation, no wake-ups), but the keeper says so once at
 * start, naming the fix. */
static void
test_keeper_warns_of_schema_changed_by_hand(void **state)
{
    int64_t deadline;
    PGconn *pg;
    pool_t c;
    (void)state;

    pool_open(&c, "schemawarn");
    pg = th_connect(c.db);
    th_exec(pg, "ALTER TABLE outbox DISABLE TRIGGER outbox_guard");
    pool_write_conf(&c, 1, NULL);
    pool_start(&c);
    deadline = th_now_ms() + 20000;
    while (!pool_log_has(&c, "trigger \"outbox_guard\" is disabled") && th_now_ms() < deadline)
        th_sleep_ms(50);
    if (!pool_log_has(&c, "trigger \"outbox_guard\" is disabled")) {
        pool_dump_log(&c);
        fail_msg("no warning about the disabled trigger");
    }
    assert_true(pool_log_has(&c, "outboxd migrate --repair"));
    PQfinish(pg);
    pool_close(&c);
}

/* ---- retry backoff ---- */

/* A failing record is retried after retry_initial x multiplier^(n-1),
 * capped at retry_max (jitter 0 here), on the database clock; meanwhile
 * fresh records keep flowing. */
static void
test_retry_backoff_schedule(void **state)
{
    const long long want[] = {0, 200, 400, 800, 800};
    long long delay[5] = {0}, a;
    char subjects[128];
    int64_t deadline;
    PGconn *pg;
    pool_t c;
    int i;
    (void)state;

    pool_open(&c, "retry");
    snprintf(subjects, sizeof(subjects), "%s.ok.>", c.prefix);
    set_stream_subjects(&c, subjects);
    pg = th_connect(c.db);
    th_exec(pg, "SELECT outbox_enqueue('%s.fail.x', NULL, '{}', 'f')", c.prefix);
    pool_write_conf(&c, 1,
                    "retry_initial = 200ms\nretry_multiplier = 2\nretry_max = 800ms\n"
                    "retry_jitter = 0\nmax_attempts = 0\n");
    pool_start(&c);
    deadline = th_now_ms() + 30000;
    for (i = 0; th_now_ms() < deadline; i++) {
        a = th_query_ll(pg, "SELECT attempts FROM outbox WHERE topic LIKE '%%.fail.x'");
        if (a >= 1 && a <= 4 && delay[a] == 0)
            delay[a] = th_query_ll(pg,
                                   "SELECT round(extract(epoch FROM next_attempt_at - "
                                   "last_attempt_on) * 1000)::bigint FROM outbox WHERE "
                                   "topic LIKE '%%.fail.x' AND attempts = %lld",
                                   a);
        /* fresh work meanwhile */
        if (i % 10 == 0)
            th_exec(pg, "SELECT outbox_enqueue('%s.ok.x', NULL, '{}', 'ok')", c.prefix);
        if (delay[4] != 0)
            break;
        th_sleep_ms(10);
    }
    for (i = 1; i <= 4; i++)
        if (delay[i] != want[i])
            fail_msg("retry %d scheduled %lld ms after the attempt, expected %lld", i, delay[i],
                     want[i]);
    /* every fresh record was delivered while the failing one kept retrying */
    wait_count(&c, pg, 0, 10000,
               "SELECT count(*) FROM outbox WHERE state = 0 AND topic NOT LIKE '%.fail.x'");
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 0"), 1);
    PQfinish(pg);
    pool_close(&c);
}

/* ---- outages ---- */

/* n committed records on a connection of their own, 10 a transaction. */
static void
produce(const pool_t *c, int from, int n)
{
    PGconn *pg = th_connect(c->db);
    int i;

    for (i = from; i < from + n; i += 10)
        th_exec(pg,
                "SELECT outbox_enqueue('%s.orders', 'k' || (g %% 17), '{}', convert_to('o' || "
                "g, 'UTF8')) FROM generate_series(%d, %d) g",
                c->prefix, i, (i + 10 < from + n ? i + 10 : from + n) - 1);
    PQfinish(pg);
}

/* Both servers go away in every way while records flow: PostgreSQL
 * restarted, the relay's sessions killed, nats-server restarted and frozen
 * (SIGSTOP) past publish_timeout. The relay rides it out without a worker
 * crash, and every committed record ends in the stream exactly once. */
static void
test_outages_end_exactly_once(void **state)
{
    th_servers_t srv;
    PGconn *pg;
    json_t *j;
    pool_t c;
    (void)state;

    th_servers_start(&srv);
    pool_env = &srv.env;
    pool_open(&c, "outage");
    pool_write_conf(&c, 2,
                    "batch_size = 50\npublish_timeout = 1s\nconnect_timeout = 1s\n"
                    "statement_timeout = 5s\nmax_lock_time = 10s\nretry_initial = 100ms\n"
                    "retry_max = 1s\n");
    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);

    /* PostgreSQL restarted mid-stream */
    produce(&c, 0, 300);
    PQfinish(pg);
    th_pg_stop(&srv);
    th_sleep_ms(1500);
    th_pg_start(&srv);
    produce(&c, 300, 300);
    pg = th_connect(c.db);
    pool_wait_drained(&c, pg, 600, 60000);

    /* the relay's sessions killed by the server */
    produce(&c, 600, 200);
    th_query_ll(pg, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                    "application_name LIKE 'outboxd%%'");
    produce(&c, 800, 200);
    pool_wait_drained(&c, pg, 1000, 60000);

    /* nats-server restarted */
    produce(&c, 1000, 200);
    th_nats_stop(&srv);
    produce(&c, 1200, 200);
    th_sleep_ms(1000);
    th_nats_start(&srv);
    pool_wait_drained(&c, pg, 1400, 60000);

    /* nats-server frozen longer than publish_timeout, then thawed */
    th_nats_pause(&srv, 1);
    produce(&c, 1400, 300);
    th_sleep_ms(2500);
    th_nats_pause(&srv, 0);
    pool_wait_drained(&c, pg, 1700, 60000);

    pool_assert_exact(&c, pg, 1700);
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 2"), 0);
    /* no outage, the frozen server included, charged an attempt */
    assert_int_equal(th_query_ll(pg, "SELECT max(attempts) FROM outbox"), 0);
    j = pool_outboxstat_json(&c);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "supervisor"), "crashes")), 0);
    assert_true(pool_json_total(j, "reconnects") >= 2);
    json_decref(j);
    assert_true(pool_alive(c.sup));
    PQfinish(pg);
    pool_close(&c);
    th_servers_stop(&srv);
    pool_env = &env;
}

/* ---- duplicate window ---- */

/* A stream whose duplicate window is shorter than the relay's longest
 * re-publish span draws one warning naming the stream and the fix. */
static void
test_short_duplicate_window_warned(void **state)
{
    outbox_nats_options_t no = {
        .url = pool_env->nats_url, .publish_timeout_ms = 5000, .connect_timeout_ms = 2000};
    char subjects[128], err[512], line[512];
    PGconn *pg;
    pool_t c;
    (void)state;

    pool_open(&c, "dupwin");
    snprintf(subjects, sizeof(subjects), "%s.>", c.prefix);
    assert_int_equal(outbox_nats_stream_update(&no, c.stream, subjects, 5000, err, sizeof(err)),
                     OUTBOX_OK);
    pg = th_connect(c.db);
    th_exec(pg, "SELECT outbox_enqueue('%s.x', NULL, '{}', 'x')", c.prefix);
    pool_write_conf(&c, 1, "");
    pool_start(&c);
    pool_wait_drained(&c, pg, 1, 20000);
    snprintf(line, sizeof(line), "stream %s: its duplicate window (5000 ms) is shorter", c.stream);
    assert_true(pool_log_has(&c, line));
    assert_true(pool_log_has(&c, "--duplicate-window"));
    PQfinish(pg);
    pool_close(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_poison_record_is_parked_innocents_delivered),
        cmocka_unit_test(test_per_key_order_across_workers_and_failures),
        cmocka_unit_test(test_dead_letters_and_operator_commands),
        cmocka_unit_test(test_row_text_is_printed_escaped),
        cmocka_unit_test(test_keeper_warns_of_schema_changed_by_hand),
        cmocka_unit_test(test_retry_backoff_schedule),
        cmocka_unit_test(test_short_duplicate_window_warned),
        cmocka_unit_test(test_outages_end_exactly_once),
    };

    th_env_load(&env);
    pool_env = &env;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
