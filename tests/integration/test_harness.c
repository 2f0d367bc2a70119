/*
 * Self-test of the integration harness: the fixture's servers answer on
 * loopback at the recorded ports (JetStream on), per-test databases come and
 * go, processes are spawned, reaped and stopped, the env file parser reads
 * shell quoting, and private servers really stop and restart on the same port.
 */
#include "harness.h"

#include <errno.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* NATS_OK when a connection to url succeeds and round-trips a PING. */
static natsStatus
nats_probe(const char *url, int want_js)
{
    natsConnection *nc = NULL;
    natsOptions *opts = NULL;
    jsCtx *js = NULL;
    jsAccountInfo *ai = NULL;
    jsErrCode jerr = 0;
    natsStatus s;

    s = natsOptions_Create(&opts);
    if (s == NATS_OK) {
        s = natsOptions_SetURL(opts, url);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetTimeout(opts, 2000);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetAllowReconnect(opts, false);
    }
    if (s == NATS_OK) {
        s = natsConnection_Connect(&nc, opts);
    }
    if (s == NATS_OK) {
        s = natsConnection_FlushTimeout(nc, 2000);
    }
    if (s == NATS_OK && want_js) {
        s = natsConnection_JetStream(&js, nc, NULL);
        if (s == NATS_OK) {
            s = js_GetAccountInfo(&ai, js, NULL, &jerr);
        }
    }
    jsAccountInfo_Destroy(ai);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    return s;
}

/* 1 when a libpq connection to conninfo succeeds. */
static int
pg_up(const char *conninfo)
{
    char ci[600];
    PGconn *c;
    int ok;

    snprintf(ci, sizeof(ci), "%s connect_timeout=3", conninfo);
    c = PQconnectdb(ci);
    ok = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    return ok;
}

static void
test_fixture_pg_on_loopback(void **state)
{
    th_env_t e;
    PGconn *c;

    (void)state;
    th_env_load(&e);
    c = th_connect(e.pg_admin);
    if (e.dir[0] != '\0') { /* our own servers, not OUTBOX_TEST_DB ones */
        assert_string_equal(e.pg_host, "127.0.0.1");
        assert_string_equal(e.pg_user, "postgres");
        assert_in_range(e.pg_port, 20000, 60999);
        assert_int_equal(th_query_ll(c, "SELECT inet_server_port()"), e.pg_port);
        assert_int_equal(th_query_ll(c, "SELECT count(*) FROM (SELECT 1) x "
                                        "WHERE host(inet_server_addr()) = '127.0.0.1'"),
                         1);
        assert_int_equal(th_query_ll(c, "SELECT count(*) FROM pg_settings WHERE name = "
                                        "'listen_addresses' AND setting = '127.0.0.1'"),
                         1);
    }
    assert_true(th_query_ll(c, "SELECT current_setting('server_version_num')::int") >= 150000);
    PQfinish(c);
}

static void
test_fixture_nats_accepts_jetstream(void **state)
{
    th_env_t e;
    char url[160];
    natsStatus s;

    (void)state;
    th_env_load(&e);
    if (e.dir[0] != '\0') {
        assert_in_range(e.nats_port, 20000, 60999);
        snprintf(url, sizeof(url), "nats://127.0.0.1:%d", e.nats_port);
        assert_string_equal(e.nats_url, url);
    }
    s = nats_probe(e.nats_url, 1);
    if (s != NATS_OK) {
        fail_msg("NATS %s: %s", e.nats_url, natsStatus_GetText(s));
    }
}

static void
test_db_create_and_drop(void **state)
{
    th_env_t e;
    char a[512], b[512];
    PGconn *c;

    (void)state;
    th_env_load(&e);
    th_db_create(&e, "Th-Self", a, sizeof(a));
    th_db_create(&e, "Th-Self", b, sizeof(b));
    assert_string_not_equal(a, b);
    assert_non_null(strstr(a, " dbname=th_self_"));
    assert_non_null(strstr(a, "host="));

    c = th_connect(a);
    assert_memory_equal(PQdb(c), "th_self_", 8);
    th_exec(c, "CREATE TABLE t (v int)");
    th_exec(c, "INSERT INTO t SELECT generate_series(1, %d)", 7);
    assert_int_equal(th_query_ll(c, "SELECT sum(v) FROM t"), 28);
    /* The drop must succeed with this session still open (WITH (FORCE)). */
    th_db_drop(&e, a);
    PQfinish(c);
    assert_false(pg_up(a));
    assert_true(pg_up(b));
    th_db_drop(&e, b);
    assert_false(pg_up(b));
}

static void
test_unique_names_differ(void **state)
{
    char a[64], b[64], pid[32];

    (void)state;
    th_unique(a, sizeof(a), "subj");
    th_unique(b, sizeof(b), "subj");
    assert_string_not_equal(a, b);
    snprintf(pid, sizeof(pid), "subj_%ld_", (long)getpid());
    assert_memory_equal(a, pid, strlen(pid));
}

static void
test_spawn_wait_stop(void **state)
{
    char dir[] = "/tmp/th-self.XXXXXX", log[64], buf[64] = "";
    char *echo[] = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    char *sleeper[] = {"/bin/sleep", "30", NULL};
    char *stubborn[] = {"/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done", NULL};
    char *missing[] = {"/nonexistent/th-binary", NULL};
    int64_t t0;
    FILE *f;
    pid_t p;
    int st = 0;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(log, sizeof(log), "%s/log", dir);

    p = th_spawn(echo, log);
    assert_int_equal(th_wait(p, 5000, &st), 1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 3);
    f = fopen(log, "r");
    assert_non_null(f);
    assert_int_equal(fread(buf, 1, sizeof(buf) - 1, f), 8);
    fclose(f);
    assert_string_equal(buf, "out\nerr\n");

    /* 127 normally; valgrind turns it into its own error exit code. */
    p = th_spawn(missing, log);
    assert_int_equal(th_wait(p, 5000, &st), 1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    f = fopen(log, "r");
    assert_non_null(f);
    memset(buf, 0, sizeof(buf));
    assert_true(fread(buf, 1, sizeof(buf) - 1, f) > 8);
    fclose(f);
    assert_non_null(strstr(buf, "exec /nonexistent/th-binary failed"));

    t0 = th_now_ms();
    p = th_spawn(sleeper, NULL);
    assert_int_equal(th_wait(p, 200, &st), 0); /* time-out: still running */
    assert_true(th_now_ms() - t0 >= 200);
    st = th_stop(p, 5000);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGTERM);
    assert_true(th_now_ms() - t0 < 5000);

    p = th_spawn(stubborn, NULL);
    th_sleep_ms(200); /* let the shell install its trap */
    st = th_stop(p, 300);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);

    unlink(log);
    rmdir(dir);
}

static void
test_env_file_quoting(void **state)
{
    char dir[] = "/tmp/th-self.XXXXXX", path[64];
    const char *old = getenv("OUTBOX_TESTENV");
    char *saved = old != NULL ? strdup(old) : NULL;
    th_env_t e;
    FILE *f;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/env", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("# comment\n"
          "OUTBOX_TEST_DB='host=127.0.0.1 port=1 password='\\''x y'\\'' dbname=postgres'\n"
          "OUTBOX_TEST_NATS=nats://127.0.0.1:2\n"
          "export OUTBOX_TEST_PG_PORT=\"1\"\n"
          "OUTBOX_TEST_NATS_PORT=2\n"
          "OUTBOX_TEST_DIR=/tmp/a\\ b\n"
          "OUTBOX_TEST_UNKNOWN=ignored\n",
          f);
    fclose(f);
    setenv("OUTBOX_TESTENV", dir, 1);
    th_env_load(&e);
    if (saved != NULL) {
        setenv("OUTBOX_TESTENV", saved, 1);
        free(saved);
    } else {
        unsetenv("OUTBOX_TESTENV");
    }
    unlink(path);
    rmdir(dir);
    assert_string_equal(e.pg_admin, "host=127.0.0.1 port=1 password='x y' dbname=postgres");
    assert_string_equal(e.nats_url, "nats://127.0.0.1:2");
    assert_int_equal(e.pg_port, 1);
    assert_int_equal(e.nats_port, 2);
    assert_string_equal(e.dir, "/tmp/a b");
}

static void
test_private_servers_outage(void **state)
{
    th_servers_t s;
    th_env_t before;
    struct stat sb;

    (void)state;
    th_servers_start(&s);
    before = s.env;
    assert_string_equal(s.env.pg_host, "127.0.0.1");
    assert_true(pg_up(s.env.pg_admin));
    assert_int_equal(nats_probe(s.env.nats_url, 1), NATS_OK);

    th_pg_stop(&s);
    assert_false(pg_up(s.env.pg_admin));
    assert_int_equal(nats_probe(s.env.nats_url, 0), NATS_OK); /* nats unaffected */
    th_pg_start(&s);
    assert_int_equal(s.env.pg_port, before.pg_port);
    assert_string_equal(s.env.pg_admin, before.pg_admin);
    assert_true(pg_up(s.env.pg_admin));

    th_nats_stop(&s);
    assert_int_not_equal(nats_probe(s.env.nats_url, 0), NATS_OK);
    assert_true(pg_up(s.env.pg_admin));
    th_nats_start(&s);
    assert_string_equal(s.env.nats_url, before.nats_url);
    assert_int_equal(nats_probe(s.env.nats_url, 1), NATS_OK);

    th_servers_stop(&s);
    assert_false(pg_up(before.pg_admin));
    assert_int_not_equal(nats_probe(before.nats_url, 0), NATS_OK);
    assert_int_equal(stat(before.dir, &sb), -1);
    assert_int_equal(errno, ENOENT);
    th_servers_stop(&s); /* twice is harmless */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_pg_on_loopback),
        cmocka_unit_test(test_fixture_nats_accepts_jetstream),
        cmocka_unit_test(test_db_create_and_drop),
        cmocka_unit_test(test_unique_names_differ),
        cmocka_unit_test(test_spawn_wait_stop),
        cmocka_unit_test(test_env_file_quoting),
        cmocka_unit_test(test_private_servers_outage),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);

    nats_CloseAndWait(5000); /* joins cnats threads: no leak reports */
    return rc;
}
