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
#include "pool.h"
#include "outbox/broker.h"
#include "outbox/outbox.h"
#include "outbox/store.h"
#include "stats.h"

static th_env_t env;

/* ---- tests ---- */

/* kill -9 a worker that holds claimed records: it is respawned, its exact
 * lock id is released at once (lock check effectively off), nothing lost,
 * and outboxstat's totals (dead worker's counters included) equal the
 * DELIVERED rows. */
static void
test_kill9_worker_respawned_locks_released(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8], victim, deadline;
    char victim_lock[OUTBOX_STATS_LOCKID_MAX];
    PGconn *pg;
    json_t *j;
    unsigned i;
    int n, k;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_kill9");
    pool_write_conf(&c, 4, "lock_check_interval = 10m\nmax_lock_time = 10m\n");
    pool_start(&c);
    pool_wait_ready(&c, 4, 20000);
    pg = th_connect(c.db);
    pool_produce_start(&c, 3000, 10, 5);
    th_sleep_ms(500);

    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, pids, 8), 4);
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
        assert_int_equal(pool_snap(&c, s), 0);
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
        assert_int_equal(pool_snap(&c, s), 0);
        n = pool_ready_relays(s, pids, 8);
        if (n == 4 && pids[0] != victim && pids[1] != victim && pids[2] != victim &&
            pids[3] != victim)
            break;
        if (th_now_ms() > deadline) {
            pool_dump_log(&c);
            fail_msg("killed worker not replaced");
        }
        th_sleep_ms(20);
    }
    assert_true(s->crashes >= 1);
    n = pool_produce_join(&c);
    /* the 20 held records are freed by the release, not by a 10 min lock check */
    pool_wait_drained(&c, pg, n + 20, 30000);
    pool_assert_exact(&c, pg, n + 20);
    assert_true(pool_log_has(&c, "released 20 records still locked by"));

    j = pool_outboxstat_json(&c);
    assert_int_equal(pool_json_total(j, "delivered"),
                     th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"));
    assert_true(json_integer_value(json_object_get(json_object_get(j, "supervisor"), "crashes")) >=
                1);
    json_decref(j);
    {
        char want[160];
        char *text = pool_outboxstat_text(&c, "--prometheus", 0);

        snprintf(want, sizeof(want), "outbox_delivered_total{outbox_instance=\"%s\"} %lld\n",
                 c.prefix, th_query_ll(pg, "SELECT count(*) FROM outbox WHERE state = 1"));
        assert_non_null(strstr(text, want));
        assert_non_null(strstr(text, "# TYPE outbox_delivered_total counter"));
        assert_non_null(strstr(text, "outbox_worker_delivered_total{"));
        assert_non_null(strstr(text, "outbox_batch_latency_seconds_bucket{"));
        free(text);
        text = pool_outboxstat_text(&c, "-1", 0);
        assert_non_null(strstr(text, c.prefix));
        free(text);
    }

    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* SIGHUP with traffic flowing: a new configuration (3 workers) is applied by
 * a rolling restart; every pid is replaced; at every sample at least one
 * relay is ready; nothing lost. A bad file on SIGHUP is rejected and the
 * running workers are kept. */
static void
test_sighup_rolling_restart(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t before[8], after[8], kb, ka, deadline;
    PGconn *pg;
    int n, i, k, min_ready = 99, samples = 0;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_hup");
    pool_write_conf(&c, 2, NULL);
    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, before, 8), 2);
    kb = pool_keeper_pid(s);

    pool_produce_start(&c, 4000, 10, 5);
    th_sleep_ms(300);
    pool_write_conf(&c, 3, NULL);
    kill(c.sup, SIGHUP);
    deadline = th_now_ms() + 30000;
    for (;;) {
        if (pool_snap(&c, s) == 0) {
            samples++;
            n = pool_ready_relays(s, after, 8);
            if (n < min_ready)
                min_ready = n;
            if (s->restarts >= 1 && n == 3 && (int)s->nslots == 4 && pool_keeper_pid(s) != 0)
                break;
        }
        if (th_now_ms() > deadline) {
            pool_dump_log(&c);
            fail_msg("rolling restart did not finish");
        }
        th_sleep_ms(5);
    }
    assert_true(min_ready >= 1); /* delivery never dropped to zero workers */
    assert_true(samples > 5);
    ka = pool_keeper_pid(s);
    assert_true(ka != kb);
    for (i = 0; i < 3; i++)
        for (k = 0; k < 2; k++)
            assert_true(after[i] != before[k]);
    for (k = 0; k < 2; k++)
        assert_false(pool_alive((pid_t)before[k]));
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
    while (!pool_log_has(&c, "reload rejected") && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_true(pool_log_has(&c, "reload rejected, keeping the running configuration"));
    th_sleep_ms(300);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(s->reload_errors, 1);
    {
        int64_t now[8];

        assert_int_equal(pool_ready_relays(s, now, 8), 3);
        for (i = 0; i < 3; i++) {
            int same = 0;

            for (k = 0; k < 3; k++)
                same |= now[i] == after[k];
            assert_true(same);
        }
    }

    /* a good file whose workers cannot start (database unreachable): the
     * rolling restart stops at the first replacement, the old workers stay,
     * the state says running again and the reload counts as failed */
    {
        FILE *f = fopen(c.conf, "w");

        fprintf(f,
                "db = host=127.0.0.1 port=1 connect_timeout=1\nnats_url = %s\ninstance = %s\n"
                "workers = 3\nprocess_interval = 20ms\nlinger = 5ms\nbatch_size = 50\n"
                "ready_timeout = 2s\n",
                pool_env->nats_url, c.prefix);
        fclose(f);
    }
    kill(c.sup, SIGHUP);
    deadline = th_now_ms() + 20000;
    while (!pool_log_has(&c, "rolling restart stopped") && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_true(pool_log_has(&c, "rolling restart stopped"));
    th_sleep_ms(300);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(s->sup_state, 0); /* running, not "rolling" */
    assert_int_equal(s->reload_errors, 2);
    assert_int_equal(s->reloads, 1);
    assert_int_equal(pool_ready_relays(s, NULL, 0), 3);

    n = pool_produce_join(&c);
    pool_wait_drained(&c, pg, n, 30000);
    pool_assert_exact(&c, pg, n);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* SIGTTIN / SIGTTOU change the count; SIGUSR2 restarts with the same
 * configuration. */
static void
test_ttin_ttou_usr2(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t before[8], after[8], deadline;
    int i, k;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_ttin");
    pool_write_conf(&c, 2, NULL);
    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
    kill(c.sup, SIGTTIN);
    pool_wait_ready(&c, 3, 10000);
    kill(c.sup, SIGTTOU);
    th_sleep_ms(50);
    kill(c.sup, SIGTTOU);
    pool_wait_ready(&c, 1, 10000);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(s->target_workers, 1);

    assert_int_equal(pool_ready_relays(s, before, 8), 1);
    kill(c.sup, SIGUSR2);
    deadline = th_now_ms() + 20000;
    for (;;) {
        assert_int_equal(pool_snap(&c, s), 0);
        if (s->restarts >= 1 && pool_ready_relays(s, after, 8) == 1 && s->nslots == 2)
            break;
        if (th_now_ms() > deadline) {
            pool_dump_log(&c);
            fail_msg("SIGUSR2 rolling restart did not finish");
        }
        th_sleep_ms(20);
    }
    assert_true(after[0] != before[0]);
    for (i = 0, k = 0; i < 1; i++)
        k += pool_alive((pid_t)before[i]);
    assert_int_equal(k, 0);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    pool_close(&c);
    free(s);
}

/* SIGTERM mid-stream: every process exits, the supervisor with 0, no record
 * keeps a lock, the region is gone; a restart delivers the rest exactly. */
static void
test_sigterm_stops_everything(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8], kp;
    char shm[128], pidfile[160], extra[200];
    PGconn *pg;
    int i, n, st;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_term");
    snprintf(pidfile, sizeof(pidfile), "/tmp/outbox-sup-%s.pid", c.prefix);
    snprintf(extra, sizeof(extra), "pid_file = %s\n", pidfile);
    pool_write_conf(&c, 3, extra);
    pool_start(&c);
    pool_wait_ready(&c, 3, 20000);
    {
        FILE *f = fopen(pidfile, "r");
        long pid = 0;

        assert_non_null(f);
        assert_int_equal(fscanf(f, "%ld", &pid), 1);
        fclose(f);
        assert_int_equal(pid, c.sup);
    }
    pg = th_connect(c.db);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, pids, 8), 3);
    kp = pool_keeper_pid(s);
    pool_produce_start(&c, 2000, 20, 2);
    th_sleep_ms(400);
    st = th_stop(c.sup, 30000);
    c.sup = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    for (i = 0; i < 3; i++)
        assert_false(pool_alive((pid_t)pids[i]));
    assert_false(pool_alive((pid_t)kp));
    assert_int_equal(access(pidfile, F_OK), -1); /* removed at exit */
    assert_int_equal(th_query_ll(pg, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"), 0);
    snprintf(shm, sizeof(shm), "/outbox-%s", c.prefix);
    assert_int_equal(shm_open(shm, O_RDONLY, 0), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(pool_snap(&c, s), -1);
    {
        char *text = pool_outboxstat_text(&c, "--json", 1);

        assert_non_null(strstr(text, "no outboxd instance"));
        free(text);
    }

    n = pool_produce_join(&c);
    pool_start(&c);
    pool_wait_drained(&c, pg, n, 30000);
    pool_assert_exact(&c, pg, n);
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* A worker that stops beating (SIGSTOP: as hung as it gets) is killed and
 * replaced after worker_timeout. */
static void
test_hung_worker_replaced(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8], deadline;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_hung");
    pool_write_conf(&c, 1,
                    "publish_timeout = 1s\nstatement_timeout = 1s\nconnect_timeout = 1s\n"
                    "max_lock_time = 10s\nworker_timeout = 5s\n");
    pool_start(&c);
    pool_wait_ready(&c, 1, 20000);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, pids, 8), 1);
    kill((pid_t)pids[0], SIGSTOP);
    deadline = th_now_ms() + 20000;
    for (;;) {
        int64_t now[8];

        assert_int_equal(pool_snap(&c, s), 0);
        if (s->heartbeat_kills >= 1 && pool_ready_relays(s, now, 8) == 1 && now[0] != pids[0])
            break;
        if (th_now_ms() > deadline) {
            kill((pid_t)pids[0], SIGKILL);
            pool_dump_log(&c);
            fail_msg("hung worker not replaced");
        }
        th_sleep_ms(50);
    }
    assert_true(pool_log_has(&c, "no heartbeat for"));
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    pool_close(&c);
    free(s);
}

/* Start the supervisor as the leader of its own process group (as a shell
 * or systemd does), so the test can signal the whole group. */
static pid_t
sup_start_group(pool_t *c)
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
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8];
    char victim_lock[OUTBOX_STATS_LOCKID_MAX];
    PGconn *pg;
    unsigned i;
    int st;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_group");
    pool_write_conf(&c, 2, "drain_timeout = 2s\nlock_check_interval = 10m\nmax_lock_time = 10m\n");
    sup_start_group(&c);
    pool_wait_ready(&c, 2, 20000);
    pg = th_connect(c.db);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, pids, 8), 2);
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
        pool_dump_log(&c);
        fail_msg("records of the relay killed at the drain are still locked");
    }
    assert_true(pool_log_has(&c, "released 20 records still locked by"));
    assert_false(pool_log_has(&c, "error: keeper")); /* its exit is not a crash */
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* A stop right after a worker is forked (TTIN, then TERM at once) is not
 * lost between fork and exec: the supervisor exits well within
 * drain_timeout, no worker is killed. */
static void
test_stop_right_after_spawn(void **state)
{
    int k, st;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_race");
    pool_write_conf(&c, 1, "drain_timeout = 20s\n");
    for (k = 0; k < 6; k++) {
        int64_t t0;

        pool_start(&c);
        pool_wait_ready(&c, 1, 20000);
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
    assert_false(pool_log_has(&c, "still running after drain_timeout"));
    assert_false(pool_log_has(&c, "killed by signal 15"));
    pool_close(&c);
}

/* Wait until the stream holds want messages; returns the ms it took. */
static int64_t
wait_stream(pool_t *c, uint64_t want, int64_t timeout_ms)
{
    int64_t t0 = th_now_ms();

    while (pool_stream_count(c) < want) {
        if (th_now_ms() - t0 > timeout_ms) {
            pool_dump_log(c);
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
    outbox_stats_snapshot_t *s = pool_snap_new();
    char killed[OUTBOX_STATS_LOCKID_MAX] = "";
    int64_t pids[8], deadline, took;
    PGconn *pg;
    int k;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_wake");
    pool_write_conf(&c, 2, "process_interval = 1h\nlinger = 0\nlock_check_interval = 2s\n");
    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
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
    assert_true(pool_log_has(&c, "wake-up connection lost"));

    /* a worker killed -9 while registered: its registration goes with it */
    deadline = th_now_ms() + 10000;
    while (listeners(pg) != 2 && th_now_ms() < deadline)
        th_sleep_ms(10);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(pool_ready_relays(s, pids, 8), 2);
    for (k = 0; k < (int)s->nslots; k++)
        if (s->slot[k].pid == pids[0])
            snprintf(killed, sizeof(killed), "%s", s->slot[k].lock_id);
    assert_true(killed[0] != '\0');
    assert_int_equal(
        th_query_ll(pg, "SELECT count(*) FROM outbox_listeners WHERE lock_id = '%s'", killed), 1);
    kill((pid_t)pids[0], SIGKILL);
    /* its registration goes (the keeper, at once; the lock check, for any
     * row whose session is gone), and the flag follows */
    deadline = th_now_ms() + 10000;
    while (th_query_ll(pg, "SELECT count(*) FROM outbox_listeners WHERE lock_id = '%s'", killed) !=
               0 &&
           th_now_ms() < deadline)
        th_sleep_ms(20);
    if (th_query_ll(pg, "SELECT count(*) FROM outbox_listeners WHERE lock_id = '%s'", killed) != 0)
        pool_dump_log(&c);
    assert_int_equal(
        th_query_ll(pg, "SELECT count(*) FROM outbox_listeners WHERE lock_id = '%s'", killed), 0);
    deadline = th_now_ms() + 10000;
    while (th_query_ll(pg, "SELECT pg_sequence_last_value('outbox_idle') - (SELECT count(*) FROM "
                           "outbox_listeners)") != 0 &&
           th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_int_equal(th_query_ll(pg, "SELECT pg_sequence_last_value('outbox_idle') - (SELECT "
                                     "count(*) FROM outbox_listeners)"),
                     0);

    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    assert_int_equal(listeners(pg), 0);

    /* poll mode registers nothing */
    pool_write_conf(&c, 1, "process_interval = 50ms\nwakeup = poll\n");
    pool_start(&c);
    pool_wait_ready(&c, 1, 20000);
    th_exec(pg, "SELECT outbox_enqueue('%s.wake', 'k', '{}', 'poll'::bytea)", c.prefix);
    wait_stream(&c, 22, 10000);
    assert_int_equal(listeners(pg), 0);
    PQfinish(pg);
    pool_close(&c);
    free(s);
}

/* A worker that keeps dying right after it starts is respawned with a
 * growing delay (1 s, 2 s, 4 s ...), not in a hot loop; the supervisor
 * counts the crashes. */
static void
test_crash_loop_backs_off(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t seen_at[5], deadline, last = 0, pid;
    int k;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_loop");
    pool_write_conf(&c, 1, NULL);
    pool_start(&c);
    pool_wait_ready(&c, 1, 20000);
    for (k = 0; k < 5; k++) {
        /* wait for a new relay pid, note when it appeared, kill it at once */
        deadline = th_now_ms() + 30000;
        for (;;) {
            pid = 0;
            if (pool_snap(&c, s) == 0) {
                unsigned i;

                for (i = 0; i < s->nslots; i++)
                    if (s->slot[i].role == OUTBOX_ROLE_RELAY && s->slot[i].pid != last &&
                        s->slot[i].pid > 0)
                        pid = s->slot[i].pid;
            }
            if (pid != 0)
                break;
            if (th_now_ms() > deadline) {
                pool_dump_log(&c);
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
    assert_true(pool_log_has(&c, "keeps failing: next start in 4s"));
    deadline = th_now_ms() + 5000; /* the last kill is reaped within a tick */
    while (pool_snap(&c, s) == 0 && s->crashes < 5 && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_true(s->crashes >= 5);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    pool_close(&c);
    free(s);
}

/* A second supervisor for the same instance refuses (exit 2, clear line);
 * after the first is SIGKILLed its workers stop by themselves, and a new
 * supervisor replaces the stale region (generation + 1). */
static void
test_second_supervisor_and_stale_region(void **state)
{
    outbox_stats_snapshot_t *s = pool_snap_new();
    int64_t pids[8], kp, deadline;
    uint64_t gen;
    char bin[512], log2[300];
    pid_t p;
    int st;
    pool_t c;
    (void)state;

    pool_open(&c, "sup_twice");
    pool_write_conf(&c, 2, NULL);
    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
    assert_int_equal(pool_snap(&c, s), 0);
    gen = s->generation;
    assert_int_equal(pool_ready_relays(s, pids, 8), 2);
    kp = pool_keeper_pid(s);

    th_bin(bin, sizeof(bin), "outboxd");
    snprintf(log2, sizeof(log2), "%s.second", c.log);
    {
        char *argv[] = {bin, "-c", c.conf, "run", NULL};

        p = th_spawn(argv, log2);
    }
    assert_int_equal(th_wait(p, 10000, &st), 1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    assert_true(th_file_has(log2, "is already run by another outboxd supervisor"));
    unlink(log2);

    kill(c.sup, SIGKILL);
    waitpid(c.sup, &st, 0);
    c.sup = 0;
    deadline = th_now_ms() + 15000;
    while ((pool_alive((pid_t)pids[0]) || pool_alive((pid_t)pids[1]) || pool_alive((pid_t)kp)) &&
           th_now_ms() < deadline)
        th_sleep_ms(50);
    assert_false(pool_alive((pid_t)pids[0]));
    assert_false(pool_alive((pid_t)pids[1]));
    assert_false(pool_alive((pid_t)kp));

    pool_start(&c);
    pool_wait_ready(&c, 2, 20000);
    assert_int_equal(pool_snap(&c, s), 0);
    assert_int_equal(s->generation, gen + 1);
    assert_int_equal(s->supervisor_pid, c.sup);
    assert_int_equal(WEXITSTATUS(th_stop(c.sup, 20000)), 0);
    c.sup = 0;
    pool_close(&c);
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
    pool_env = &env;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
