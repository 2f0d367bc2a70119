/*
 * The PostgreSQL Store against a real server: migrations, claim (order,
 * bound under hostile plans, concurrency), mark, lock clearing, purge and a
 * byte-exact round trip. Each test gets its own database.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "outbox/store.h"

typedef struct fx {
    th_env_t env;
    char ci[1024];
    PGconn *c;
    outbox_store_t *s;
    outbox_batch_t b;
} fx_t;

static void
migrate(const char *ci, const char *schema, const char *table, int want_from)
{
    outbox_pg_options_t o = {.conninfo = ci,
                             .schema = schema,
                             .table = table,
                             .statement_timeout_ms = 0,
                             .per_key_order = false};
    char err[512];
    int from = -1, to = -1, rc;

    rc = outbox_pg_migrate(&o, &from, &to, err, sizeof(err));
    if (rc != OUTBOX_OK)
        fail_msg("migrate: %s", err);
    assert_int_equal(from, want_from);
    assert_int_equal(to, OUTBOX_SCHEMA_VERSION);
}

/* A store of the per-key kind: its claim is written into locked_by and
 * locked_on, which most tests here look at; the transaction claim has
 * tests of its own (tx_store). */
static outbox_store_t *
store(const char *ci, const char *schema, const char *table)
{
    outbox_pg_options_t o = {.conninfo = ci,
                             .schema = schema,
                             .table = table,
                             .statement_timeout_ms = 5000,
                             .per_key_order = true};
    outbox_store_t *s = NULL;
    char err[512];

    if (outbox_pg_store_create(&s, &o, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("store create: %s", err);
    return s;
}

static int
setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    th_env_load(&f->env);
    th_db_create(&f->env, "store", f->ci, sizeof(f->ci));
    migrate(f->ci, NULL, NULL, 0);
    f->c = th_connect(f->ci);
    f->s = store(f->ci, NULL, NULL);
    outbox_batch_init(&f->b);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx_t *f = *state;

    outbox_batch_free(&f->b);
    outbox_store_destroy(f->s);
    PQfinish(f->c);
    th_db_drop(&f->env, f->ci);
    free(f);
    return 0;
}

/* n rows with topics t.1..t.n, seq in that order. */
static void
enqueue_n(PGconn *c, int n)
{
    th_exec(c,
            "SELECT outbox_enqueue('t.' || g, NULL, '{}', '\\x00') FROM generate_series(1, %d) g",
            n);
}

static long long
seq_of_topic(PGconn *c, int i)
{
    return th_query_ll(c, "SELECT seq FROM outbox WHERE topic = 't.%d'", i);
}

static long long
server_us(PGconn *c)
{
    return th_query_ll(c, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint");
}

static void
test_migrate_idempotent(void **state)
{
    fx_t *f = *state;

    /* setup ran it once (from 0); twice more finds nothing to do. */
    migrate(f->ci, NULL, NULL, OUTBOX_SCHEMA_VERSION);
    migrate(f->ci, NULL, NULL, OUTBOX_SCHEMA_VERSION);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox_migrations"),
                     OUTBOX_SCHEMA_VERSION);
    assert_int_equal(th_query_ll(f->c, "SELECT max(version) FROM outbox_migrations"),
                     OUTBOX_SCHEMA_VERSION);
    /* The pieces are there: partial pending index, enqueue function. */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM pg_indexes WHERE tablename = "
                                       "'outbox' AND indexdef LIKE '%%(seq) WHERE (state = 0)'"),
                     1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM pg_indexes WHERE tablename = "
                                       "'outbox' AND indexdef LIKE '%%locked%%'"),
                     0);
}

static void
test_migrate_odd_names(void **state)
{
    fx_t *f = *state;
    const char *schema = "my \"odd\" schema", *table = "Odd \"Tbl\"; x'y\\z";
    outbox_header_t h = {"X-Kind", "odd"};
    outbox_message_t m = {"odd.subject", "k", &h, 1, "b", 1};
    outbox_store_t *s;
    char id[OUTBOX_ID_LEN + 1], err[256];
    char *sql = NULL;

    migrate(f->ci, schema, table, 0);
    migrate(f->ci, schema, table, OUTBOX_SCHEMA_VERSION);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM \"my \"\"odd\"\" schema\"."
                                       "\"Odd \"\"Tbl\"\"; x'y\\z_migrations\""),
                     OUTBOX_SCHEMA_VERSION);
    /* Producer, SQL function and relay all find the quoted table. */
    th_exec(f->c, "BEGIN");
    if (outbox_enqueue((struct pg_conn *)f->c, schema, table, &m, id, err, sizeof(err)) !=
        OUTBOX_OK)
        fail_msg("enqueue: %s", err);
    th_exec(f->c, "SELECT \"my \"\"odd\"\" schema\".\"Odd \"\"Tbl\"\"; x'y\\z_enqueue\"('odd.two', "
                  "NULL, NULL, '\\x01')");
    th_exec(f->c, "COMMIT");
    s = store(f->ci, schema, table);
    assert_int_equal(outbox_store_claim(s, "odd", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 2);
    assert_string_equal(f->b.recs[0].id, id);
    assert_string_equal(f->b.recs[1].msg.topic, "odd.two");
    outbox_store_destroy(s);
    /* The default table is another table. */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 0);
    /* The printed script is what a DBA would run: it quotes the same way. */
    assert_int_equal(outbox_pg_migration_sql(schema, table, 1, &sql), OUTBOX_OK);
    assert_non_null(strstr(sql, "\"my \"\"odd\"\" schema\".\"Odd \"\"Tbl\"\"; x'y\\z\""));
    assert_non_null(strstr(sql, "COMMIT;"));
    free(sql);
    assert_int_equal(outbox_pg_migration_sql(NULL, NULL, 0, &sql), OUTBOX_ERR_CONFIG);
    /* '$' would end the functions' dollar quotes: refused, as are control characters */
    assert_int_equal(outbox_pg_migration_sql(NULL, "a$fn$b", 1, &sql), OUTBOX_ERR_CONFIG);
    assert_int_equal(outbox_pg_migration_sql(NULL, "a\x1b[2J", 1, &sql), OUTBOX_ERR_CONFIG);
    assert_int_equal(outbox_pg_migration_sql("s\xc2\x9b", NULL, 1, &sql), OUTBOX_ERR_CONFIG);
    assert_int_equal(outbox_pg_migration_sql(NULL, NULL, OUTBOX_SCHEMA_VERSION + 1, &sql),
                     OUTBOX_ERR_CONFIG);
}

static void
test_migration_script_runs(void **state)
{
    fx_t *f = *state;
    outbox_store_t *s;
    char *sql = NULL;
    int v;

    /* --print output applied by hand gives a table the relay accepts. */
    for (v = 1; v <= OUTBOX_SCHEMA_VERSION; v++) {
        assert_int_equal(outbox_pg_migration_sql("dba", "by_hand", v, &sql), OUTBOX_OK);
        th_exec(f->c, "%s", sql);
        free(sql);
    }
    s = store(f->ci, "dba", "by_hand");
    outbox_store_destroy(s);
    migrate(f->ci, "dba", "by_hand", OUTBOX_SCHEMA_VERSION);

    /* A table at version 1 (an older release) is refused by the relay and
     * upgraded in place by migrate, its rows kept. */
    assert_int_equal(outbox_pg_migration_sql("dba", "old", 1, &sql), OUTBOX_OK);
    th_exec(f->c, "%s", sql);
    free(sql);
    th_exec(f->c, "SELECT dba.old_enqueue('a.b', 'k', '{}', 'x'::bytea)");
    {
        outbox_pg_options_t o = {.conninfo = f->ci,
                                 .schema = "dba",
                                 .table = "old",
                                 .statement_timeout_ms = 0,
                                 .per_key_order = false};
        char err[512];

        assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_SCHEMA);
        assert_non_null(strstr(err, "run `outboxd migrate`"));
    }
    migrate(f->ci, "dba", "old", 1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM dba.old"), 1);
    s = store(f->ci, "dba", "old");
    outbox_store_destroy(s);
}

typedef struct mig_arg {
    const char *ci;
    const char *table;
    int rc;
    char err[512];
} mig_arg_t;

static void *
migrate_thread(void *p)
{
    mig_arg_t *a = p;
    outbox_pg_options_t o = {.conninfo = a->ci,
                             .schema = "conc",
                             .table = a->table,
                             .statement_timeout_ms = 0,
                             .per_key_order = false};

    a->rc = outbox_pg_migrate(&o, NULL, NULL, a->err, sizeof(a->err));
    return NULL;
}

static void
test_migrate_concurrent(void **state)
{
    fx_t *f = *state;
    char tables[6][16];
    mig_arg_t a[6][2];
    pthread_t t[6][2];
    int i, j;

    /* Two migrators race on each of six fresh tables (and on the shared
     * schema "conc", created by whichever comes first). */
    for (i = 0; i < 6; i++) {
        snprintf(tables[i], sizeof(tables[i]), "race%d", i);
        for (j = 0; j < 2; j++) {
            a[i][j] = (mig_arg_t){f->ci, tables[i], -99, ""};
            assert_int_equal(pthread_create(&t[i][j], NULL, migrate_thread, &a[i][j]), 0);
        }
    }
    for (i = 0; i < 6; i++) {
        for (j = 0; j < 2; j++)
            pthread_join(t[i][j], NULL);
    }
    for (i = 0; i < 6; i++) {
        for (j = 0; j < 2; j++) {
            if (a[i][j].rc != OUTBOX_OK)
                fail_msg("migrate %s #%d: %d %s", tables[i], j, a[i][j].rc, a[i][j].err);
        }
        assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM conc.race%d_migrations", i),
                         OUTBOX_SCHEMA_VERSION);
    }
}

static void
test_create_errors(void **state)
{
    fx_t *f = *state;
    outbox_pg_options_t o = {.conninfo = f->ci,
                             .schema = "nowhere",
                             .table = NULL,
                             .statement_timeout_ms = 0,
                             .per_key_order = false};
    outbox_store_t *s = NULL;
    char err[512], ci[1200];

    /* Not migrated. */
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_SCHEMA);
    assert_non_null(strstr(err, "outboxd migrate"));
    assert_null(s);
    /* Migrated by a newer build. */
    th_exec(f->c, "INSERT INTO outbox_migrations (version, description) VALUES (%d, 'future')",
            OUTBOX_SCHEMA_VERSION + 1);
    o.schema = NULL;
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_SCHEMA);
    th_exec(f->c, "DELETE FROM outbox_migrations WHERE version > %d", OUTBOX_SCHEMA_VERSION);
    /* An object its statements use dropped by hand: the error names the fix. */
    th_exec(f->c, "ALTER TABLE outbox_listeners RENAME TO outbox_listeners_away");
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_SCHEMA);
    assert_non_null(strstr(err, "outboxd migrate --repair"));
    th_exec(f->c, "ALTER TABLE outbox_listeners_away RENAME TO outbox_listeners");
    /* Bad names. */
    o.table = "";
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_CONFIG);
    o.table = "a_table_name_much_too_long_for_its_derived_names_to_fit";
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_CONFIG);
    o.table = NULL;
    /* Nobody listens on port 1; the password never shows in the error. */
    o.conninfo = "host=127.0.0.1 port=1 user=u password=s3cretpw connect_timeout=2";
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_UNREACHABLE);
    assert_null(strstr(err, "s3cretpw"));
    o.conninfo = "postgresql://u:s3cretpw@127.0.0.1:1/db?connect_timeout=2";
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_UNREACHABLE);
    assert_null(strstr(err, "s3cretpw"));
    o.conninfo = "host=127.0.0.1 password=s3cretpw bogus";
    assert_int_equal(outbox_pg_store_create(&s, &o, err, sizeof(err)), OUTBOX_ERR_CONFIG);
    assert_null(strstr(err, "s3cretpw"));
    /* The user's conninfo wins over the relay's defaults. */
    snprintf(ci, sizeof(ci), "%s application_name=mine", f->ci);
    s = store(ci, NULL, NULL);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM pg_stat_activity WHERE "
                                 "application_name = 'mine' AND datname = current_database()"),
                     1);
    outbox_store_destroy(s);
}

static void
test_claim_order_limit_clock(void **state)
{
    fx_t *f = *state;
    long long t0, t1, db_locked;
    size_t i;

    enqueue_n(f->c, 10);
    t0 = server_us(f->c);
    assert_int_equal(outbox_store_claim(f->s, "w1", 3, &f->b), OUTBOX_OK);
    t1 = server_us(f->c);
    assert_int_equal(f->b.n, 3);
    for (i = 0; i < 3; i++) {
        const outbox_record_t *r = &f->b.recs[i];

        assert_int_equal(r->seq, seq_of_topic(f->c, (int)i + 1));
        assert_string_equal(r->locked_by, "w1");
        assert_int_equal(r->state, OUTBOX_STATE_PENDING);
        /* The lock time is the database's now(), as stored. */
        assert_true(r->locked_on >= t0 && r->locked_on <= t1);
        db_locked = th_query_ll(f->c,
                                "SELECT (extract(epoch FROM locked_on) * 1000000)::bigint "
                                "FROM outbox WHERE id = '%s' AND locked_by = 'w1'",
                                r->id);
        assert_int_equal(r->locked_on, db_locked);
        assert_true(r->created_on > 0 && r->created_on <= r->locked_on);
    }
    /* Next claim continues after the locked rows, oldest first. */
    assert_int_equal(outbox_store_claim(f->s, "w2", 5, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 5);
    for (i = 0; i < 5; i++)
        assert_int_equal(f->b.recs[i].seq, seq_of_topic(f->c, (int)i + 4));
    assert_int_equal(outbox_store_claim(f->s, "w3", 100, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 2);
    assert_int_equal(outbox_store_claim(f->s, "w4", 100, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'w2'"), 5);
}

static void
test_claim_skips(void **state)
{
    fx_t *f = *state;
    PGconn *other = th_connect(f->ci);

    enqueue_n(f->c, 7);
    th_exec(f->c,
            "UPDATE outbox SET next_attempt_at = now() + interval '1 hour' WHERE topic = 't.1'");
    th_exec(f->c, "UPDATE outbox SET state = 1, processed_on = now() WHERE topic = 't.2'");
    th_exec(f->c, "UPDATE outbox SET state = 2, processed_on = now() WHERE topic = 't.3'");
    th_exec(f->c, "UPDATE outbox SET locked_by = 'else', locked_on = now() WHERE topic = 't.4'");
    /* Row-locked by an open transaction: skipped, not waited for. */
    th_exec(other, "BEGIN");
    th_exec(other, "SELECT 1 FROM outbox WHERE topic = 't.5' FOR UPDATE");
    assert_int_equal(outbox_store_claim(f->s, "me", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 2);
    assert_string_equal(f->b.recs[0].msg.topic, "t.6");
    assert_string_equal(f->b.recs[1].msg.topic, "t.7");
    th_exec(other, "ROLLBACK");
    assert_int_equal(outbox_store_claim(f->s, "me", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 1);
    assert_string_equal(f->b.recs[0].msg.topic, "t.5");
    /* Due again: claimable. */
    th_exec(f->c, "UPDATE outbox SET next_attempt_at = now() WHERE topic = 't.1'");
    assert_int_equal(outbox_store_claim(f->s, "me", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 1);
    assert_string_equal(f->b.recs[0].msg.topic, "t.1");
    PQfinish(other);
}

/* A store with the transaction claim (the relay's default kind). */
static outbox_store_t *
tx_store(const char *ci, const char *lock_id, bool delete_delivered)
{
    char app[OUTBOX_PG_APPNAME_MAX + 1];
    outbox_pg_options_t o = {.conninfo = ci,
                             .statement_timeout_ms = 5000,
                             .delete_delivered = delete_delivered,
                             .idle_tx_timeout_ms = 60000,
                             .application_name = app};
    outbox_store_t *s = NULL;
    char err[512];

    outbox_pg_appname(lock_id, app);
    if (outbox_pg_store_create(&s, &o, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("store create: %s", err);
    return s;
}

/* Planner settings under which `id IN (SELECT ... LIMIT n FOR UPDATE SKIP
 * LOCKED)` becomes a Nested Loop Semi Join whose inner side re-runs the
 * LIMIT subquery for every outer row; each re-run skips the rows locked so
 * far and locks n more. */
static const char *const hostile[] = {"enable_hashjoin", "enable_mergejoin", "enable_material",
                                      "enable_hashagg",  "enable_memoize",   "enable_sort"};

static void
test_claim_bound_hostile_plan(void **state)
{
    fx_t *f = *state;
    static const char naive[] =
        "UPDATE outbox SET locked_by = 'naive', locked_on = now() WHERE id IN ("
        "SELECT id FROM outbox WHERE state = 0 AND locked_by IS NULL AND next_attempt_at <= now() "
        "ORDER BY seq LIMIT 5 FOR UPDATE SKIP LOCKED) RETURNING id";
    char db[128], plan[4096] = "";
    PGconn *h;
    PGresult *r;
    outbox_store_t *s;
    size_t i;
    int n, o = 0;

    enqueue_n(f->c, 100);
    th_exec(f->c, "ANALYZE outbox");
    r = PQexec(f->c, "SELECT current_database()");
    snprintf(db, sizeof(db), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    for (i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++)
        th_exec(f->c, "ALTER DATABASE \"%s\" SET %s = off", db, hostile[i]);

    /* New sessions get the settings: first the naive statement. */
    h = th_connect(f->ci);
    r = PQexec(h, "EXPLAIN (COSTS OFF) UPDATE outbox SET locked_by = 'naive' WHERE id IN ("
                  "SELECT id FROM outbox WHERE state = 0 AND locked_by IS NULL AND "
                  "next_attempt_at <= now() ORDER BY seq LIMIT 5 FOR UPDATE SKIP LOCKED)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    for (n = 0; n < PQntuples(r); n++)
        o += snprintf(plan + o, sizeof(plan) - (size_t)o, "%s\n", PQgetvalue(r, n, 0));
    PQclear(r);
    if (strstr(plan, "Nested Loop Semi Join") == NULL || strstr(plan, "Materialize") != NULL)
        fail_msg("the hostile settings no longer give the rescanning plan:\n%s", plan);
    th_exec(h, "BEGIN");
    r = PQexec(h, naive);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    n = PQntuples(r);
    PQclear(r);
    th_exec(h, "ROLLBACK");
    if (n <= 5)
        fail_msg("naive claim locked %d rows; expected more than 5 under:\n%s", n, plan);
    PQfinish(h);

    /* Then ours, in a store connected under the very same settings. */
    s = store(f->ci, NULL, NULL);
    assert_int_equal(outbox_store_claim(s, "ours", 5, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 5);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'ours'"), 5);
    for (i = 0; i < 5; i++)
        assert_int_equal(f->b.recs[i].seq, seq_of_topic(f->c, (int)i + 1));
    assert_int_equal(outbox_store_claim(s, "ours2", 7, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 7);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"),
                     12);
    outbox_store_destroy(s);
    /* The per-key claim too, keyed and keyless rows alike. */
    th_exec(f->c, "UPDATE outbox SET locked_by = NULL, msg_key = CASE WHEN seq %% 3 = 0 THEN NULL "
                  "ELSE 'k' || (seq %% 7) END");
    s = store(f->ci, NULL, NULL);
    assert_int_equal(outbox_store_claim(s, "ord", 5, &f->b), OUTBOX_OK);
    assert_true(f->b.n >= 1 && f->b.n <= 5);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'ord'"),
                     (long long)f->b.n);
    outbox_store_destroy(s);
    /* The transaction claim under the same settings row-locks exactly 5:
     * another claimer gets every other pending row. */
    th_exec(f->c, "UPDATE outbox SET locked_by = NULL");
    {
        outbox_store_t *t1 = tx_store(f->ci, "tx1", false), *t2 = tx_store(f->ci, "tx2", false);
        outbox_batch_t b2;

        outbox_batch_init(&b2);
        assert_int_equal(outbox_store_claim(t1, "tx1", 5, &f->b), OUTBOX_OK);
        assert_int_equal(f->b.n, 5);
        assert_int_equal(outbox_store_claim(t2, "tx2", 1000, &b2), OUTBOX_OK);
        assert_int_equal(b2.n, 95);
        outbox_batch_free(&b2);
        outbox_store_destroy(t1);
        outbox_store_destroy(t2);
    }
}

/* Topics of the claimed batch, space-separated, into buf. */
static const char *
claimed_topics(const outbox_batch_t *b, char *buf, size_t len)
{
    size_t i, o = 0;

    buf[0] = '\0';
    for (i = 0; i < b->n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? " " : "", b->recs[i].msg.topic);
    return buf;
}

/* A worker died holding a batch: each record's crash is counted and the
 * locks freed; suspects are then claimed one at a time (oldest first), and
 * a record reaching the crash limit is dead with the reason. Rows the dead
 * worker did not hold, and rows of other states, are untouched. */
static void
test_release_crashed_and_suspects_alone(void **state)
{
    fx_t *f = *state;
    int64_t freed = -1, parked = -1, s1, s2;
    char buf[256];
    int k;

    enqueue_n(f->c, 6);
    s1 = seq_of_topic(f->c, 1);
    s2 = seq_of_topic(f->c, 2);
    assert_int_equal(outbox_store_claim(f->s, "w1", 4, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 4);
    th_exec(f->c, "UPDATE outbox SET locked_by = 'other', locked_on = now() WHERE topic = 't.5'");
    /* a batch: its records become suspects */
    assert_int_equal(
        outbox_store_release_crashed(f->s, "w1", s1, seq_of_topic(f->c, 4), 3, &freed, &parked),
        OUTBOX_OK);
    assert_int_equal(freed, 4);
    assert_int_equal(parked, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE crashes = 1 AND "
                                       "locked_by IS NULL AND topic IN ('t.1','t.2','t.3','t.4')"),
                     4);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE crashes > 0 AND "
                                       "topic IN ('t.5','t.6')"),
                     0);
    /* batch crashes again and again (several relays killed before any
     * retried alone): still suspects, never nearer the limit */
    for (k = 0; k < 5; k++) {
        assert_int_equal(outbox_store_claim(f->s, "wb", 2, &f->b), OUTBOX_OK);
        th_exec(f->c, "UPDATE outbox SET locked_by = 'wb' WHERE topic IN ('t.3', 't.4')");
        assert_int_equal(outbox_store_release_crashed(f->s, "wb", seq_of_topic(f->c, 3),
                                                      seq_of_topic(f->c, 4), 3, &freed, &parked),
                         OUTBOX_OK);
        assert_int_equal(parked, 0);
    }
    assert_int_equal(th_query_ll(f->c, "SELECT max(crashes) FROM outbox"), 1);
    /* suspects go alone, oldest first; the clean t.6 waits behind them */
    assert_int_equal(outbox_store_claim(f->s, "w2", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.1");
    assert_int_equal(f->b.recs[0].crashes, 1);
    assert_int_equal(outbox_store_claim(f->s, "w3", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.2");
    /* t.1 kills its relay alone, twice: dead at the limit, with the reason */
    assert_int_equal(outbox_store_release_crashed(f->s, "w2", s1, s1, 3, &freed, &parked),
                     OUTBOX_OK);
    assert_int_equal(freed, 1);
    assert_int_equal(parked, 0);
    assert_int_equal(outbox_store_claim(f->s, "w4", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.1");
    assert_int_equal(outbox_store_release_crashed(f->s, "w4", s1, s1, 3, &freed, &parked),
                     OUTBOX_OK);
    assert_int_equal(parked, 1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE topic = 't.1' AND "
                                       "state = 2 AND crashes = 3 AND processed_on IS NOT NULL "
                                       "AND last_error = 'worker died while processing (3 times)'"),
                     1);
    /* crash limit 0: counted, never parked */
    assert_int_equal(outbox_store_release_crashed(f->s, "w3", s2, s2, 0, &freed, &parked),
                     OUTBOX_OK);
    assert_int_equal(freed, 1);
    assert_int_equal(parked, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT crashes FROM outbox WHERE topic = 't.2'"), 2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'other'"), 1);
}

/* Per-key ordering: a keyed record is claimed only together with every
 * pending record of its key before it. A key whose head is held by another
 * relay, waits for a retry, or is row-locked, is skipped whole; other keys
 * and keyless records go on; a whole prefix is claimed in one batch; the
 * bound holds. */
static void
test_claim_ordered_prefixes(void **state)
{
    fx_t *f = *state;
    outbox_store_t *s = store(f->ci, NULL, NULL);
    char buf[512];

    /* seq order: a.1 b.1 a.2 n.1 b.2 a.3 c.1 c.2 (topic = key.index) */
    th_exec(f->c, "SELECT outbox_enqueue(t, split_part(t, '.', 1), '{}', '\\x00') FROM "
                  "unnest(ARRAY['a.1','b.1','a.2','n.1','b.2','a.3','c.1','c.2']) t");
    th_exec(f->c, "UPDATE outbox SET msg_key = NULL WHERE topic = 'n.1'");
    /* a.1 held by another relay: key a is skipped, the rest goes */
    th_exec(f->c, "UPDATE outbox SET locked_by = 'other', locked_on = now() WHERE topic = 'a.1'");
    assert_int_equal(outbox_store_claim(s, "w1", 100, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "b.1 n.1 b.2 c.1 c.2");
    /* a.1 back but waiting for a retry: still skipped */
    th_exec(f->c, "UPDATE outbox SET locked_by = NULL, next_attempt_at = now() + interval '1h' "
                  "WHERE topic = 'a.1'");
    assert_int_equal(outbox_store_claim(s, "w2", 100, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 0);
    /* due: the whole prefix a.1 a.2 a.3 in one batch, in order */
    th_exec(f->c, "UPDATE outbox SET next_attempt_at = now() WHERE topic = 'a.1'");
    assert_int_equal(outbox_store_claim(s, "w2", 100, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "a.1 a.2 a.3");
    /* a batch limit cutting a key keeps the prefix: d.1 d.2 of d.1..d.4 */
    th_exec(f->c, "UPDATE outbox SET state = 1, locked_by = NULL");
    th_exec(f->c, "SELECT outbox_enqueue('d.' || g, 'd', '{}', '\\x00') FROM "
                  "generate_series(1, 4) g");
    assert_int_equal(outbox_store_claim(s, "w3", 2, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "d.1 d.2");
    /* while w3 holds them, nobody takes d.3 */
    assert_int_equal(outbox_store_claim(s, "w4", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 0);
    /* a suspect heading its key goes alone */
    assert_int_equal(outbox_store_release_crashed(s, "w3", 0, 0, 3, NULL, NULL), OUTBOX_OK);
    assert_int_equal(outbox_store_claim(s, "w5", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "d.1");
    outbox_store_destroy(s);
}

/* Index entries of <table>_pending read since the last reset, once the
 * claiming backend has flushed its statistics (within a few seconds). */
static long long
pending_index_reads(PGconn *c)
{
    int64_t deadline = th_now_ms() + 20000;
    long long n;

    while ((n = th_query_ll(c, "SELECT coalesce(idx_tup_read, 0) FROM pg_stat_user_indexes "
                               "WHERE indexrelname = 'outbox_pending'")) == 0 &&
           th_now_ms() < deadline)
        th_sleep_ms(100);
    return n;
}

/* Per-key ordering under a backlog that other relays hold the head of
 * every key of: the claim finds nothing after reading its window (the
 * oldest max(16 x batch, 4096) due rows not of a waiting key), not the
 * whole backlog, and whatever plan statistics lead to (none here: a bulk
 * load that autovacuum has not analyzed yet). Rows past the window are
 * claimed once it moves. A key waiting for a retry never fills the window:
 * however many of its rows sit in front, the keys behind them go on. */
static void
test_claim_ordered_window_bounds_cost(void **state)
{
    fx_t *f = *state;
    outbox_store_t *s;
    long long reads;
    char buf[128];

    th_exec(f->c, "ALTER TABLE outbox SET (autovacuum_enabled = false)");
    th_exec(f->c, "INSERT INTO outbox (id, topic, msg_key, headers, body) SELECT "
                  "gen_random_uuid(), 't.' || g, 'k' || (g %% 50), '{}', '\\x00' FROM "
                  "generate_series(1, 40000) g");
    th_exec(f->c, "UPDATE outbox SET locked_by = 'other', locked_on = now() WHERE seq IN "
                  "(SELECT min(seq) FROM outbox GROUP BY msg_key)");
    s = store(f->ci, NULL, NULL);
    th_exec(f->c, "SELECT pg_stat_reset_single_table_counters('outbox_pending'::regclass)");
    assert_int_equal(outbox_store_claim(s, "w1", 100, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 0);
    reads = pending_index_reads(f->c);
    print_message("per-key claim over 40000 rows held by another relay: %lld entries of the "
                  "pending index read\n",
                  reads);
    assert_true(reads > 0);
    assert_true(reads <= 4096 + 1000); /* the window, and a few more */
    /* the other relay delivers key k1's held head: k1's rows in the window go */
    th_exec(f->c, "UPDATE outbox SET state = 1, locked_by = NULL WHERE locked_by = 'other' AND "
                  "msg_key = 'k1'");
    assert_int_equal(outbox_store_claim(s, "w1", 3, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.51 t.101 t.151");

    /* 6000 rows of key w in front, its head waiting for a retry; then x */
    th_exec(f->c, "UPDATE outbox SET state = 1, locked_by = NULL");
    th_exec(f->c, "INSERT INTO outbox (id, topic, msg_key, headers, body) SELECT "
                  "gen_random_uuid(), 'w.' || g, 'w', '{}', '\\x00' FROM "
                  "generate_series(1, 6000) g");
    th_exec(f->c, "SELECT outbox_enqueue('x.' || g, 'x', '{}', '\\x00') FROM "
                  "generate_series(1, 3) g");
    th_exec(f->c, "UPDATE outbox SET next_attempt_at = now() + interval '1h' WHERE topic = 'w.1'");
    assert_int_equal(outbox_store_claim(s, "w2", 100, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "x.1 x.2 x.3");
    /* due again: w's rows go, the oldest first */
    th_exec(f->c, "UPDATE outbox SET next_attempt_at = now() WHERE topic = 'w.1'");
    assert_int_equal(outbox_store_claim(s, "w3", 2, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "w.1 w.2");
    outbox_store_destroy(s);
}

/* The transaction claim: the claim is the row locks of an open
 * transaction, nothing is written to take it; other relays skip the
 * rows; the mark's statements and COMMIT go in one round trip and apply
 * every kind; a relay that goes away (destroyed, or its session ended)
 * leaves its rows free at once. */
static void
test_tx_claim_holds_row_locks_until_mark(void **state)
{
    fx_t *f = *state;
    outbox_store_t *a = tx_store(f->ci, "A", false), *b = tx_store(f->ci, "B", false);
    outbox_batch_t bb;
    char ids[4][OUTBOX_ID_LEN + 1], buf[256];
    outbox_mark_t m[4];
    size_t i;

    outbox_batch_init(&bb);
    enqueue_n(f->c, 10);
    assert_int_equal(outbox_store_claim(a, "A", 4, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.1 t.2 t.3 t.4");
    for (i = 0; i < 4; i++) {
        memcpy(ids[i], f->b.recs[i].id, sizeof(ids[i]));
        assert_null(f->b.recs[i].locked_by);
    }
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"),
                     0);
    assert_int_equal(outbox_store_claim(b, "B", 10, &bb), OUTBOX_OK);
    assert_string_equal(claimed_topics(&bb, buf, sizeof(buf)), "t.5 t.6 t.7 t.8 t.9 t.10");
    m[0] = (outbox_mark_t){ids[0], OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    m[1] = (outbox_mark_t){ids[1], OUTBOX_MARK_RETRY, 1, 60000, "nats: timeout"};
    m[2] = (outbox_mark_t){ids[2], OUTBOX_MARK_DEAD, 1, 0, "too big"};
    m[3] = (outbox_mark_t){ids[3], OUTBOX_MARK_RELEASE, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(a, "A", m, 4, NULL), OUTBOX_OK);
    assert_int_equal(
        th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 1", ids[0]), 1);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 0 AND "
                                 "attempts = 1 AND last_error = 'nats: timeout' AND "
                                 "next_attempt_at - last_attempt_on = interval '60 s'",
                                 ids[1]),
                     1);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 2 AND "
                                 "last_error = 'too big'",
                                 ids[2]),
                     1);
    /* one transaction for the whole batch */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(DISTINCT xmin::text) FROM outbox WHERE id "
                                 "IN ('%s', '%s', '%s')",
                                 ids[0], ids[1], ids[2]),
                     1);
    /* B goes away without marking: its rows are free at once */
    outbox_store_destroy(b);
    assert_int_equal(outbox_store_claim(a, "A", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.4 t.5 t.6 t.7 t.8 t.9 t.10");
    outbox_store_clear_locks_by_lock_id(a, "A", NULL); /* rolls the claim back */
    /* empty claims end their transaction without a wait; the next works */
    th_exec(f->c, "UPDATE outbox SET state = 1 WHERE state = 0");
    for (i = 0; i < 3; i++) {
        assert_int_equal(outbox_store_claim(a, "A", 10, &f->b), OUTBOX_OK);
        assert_int_equal(f->b.n, 0);
    }
    enqueue_n(f->c, 1);
    assert_int_equal(outbox_store_claim(a, "A", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 1);
    m[0] = (outbox_mark_t){f->b.recs[0].id, OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(a, "A", m, 1, NULL), OUTBOX_OK);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 0"), 0);
    outbox_batch_free(&bb);
    outbox_store_destroy(a);
}

/* A relay that died with a transaction claim: the keeper ends its session
 * (found by application_name), counts a crash against the rows of its
 * in-flight seq range that no live relay holds, and frees them. */
static void
test_tx_dead_relay_crash_counted(void **state)
{
    fx_t *f = *state;
    outbox_store_t *dead = tx_store(f->ci, "gone-1", false), *live = tx_store(f->ci, "live", false),
                   *keeper = tx_store(f->ci, "keeper", false);
    outbox_batch_t lb;
    int64_t freed = -1, parked = -1, lo, hi;
    char buf[256];

    outbox_batch_init(&lb);
    enqueue_n(f->c, 6);
    assert_int_equal(outbox_store_claim(dead, "gone-1", 3, &f->b), OUTBOX_OK);
    lo = f->b.recs[0].seq;
    assert_int_equal(outbox_store_claim(live, "live", 3, &lb), OUTBOX_OK);
    hi = lb.recs[2].seq; /* a range wider than the dead relay's rows */
    assert_int_equal(outbox_store_release_crashed(keeper, "gone-1", lo, hi, 3, &freed, &parked),
                     OUTBOX_OK);
    assert_int_equal(freed, 3);
    assert_int_equal(parked, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE crashes = 1 AND topic "
                                       "IN ('t.1','t.2','t.3')"),
                     3);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE crashes > 0 AND topic "
                                       "IN ('t.4','t.5','t.6')"),
                     0);
    /* the dead relay's session is gone; a suspect goes alone */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM pg_stat_activity WHERE "
                                       "application_name = 'outboxd gone-1'"),
                     0);
    assert_int_equal(outbox_store_claim(keeper, "keeper", 10, &f->b), OUTBOX_OK);
    assert_string_equal(claimed_topics(&f->b, buf, sizeof(buf)), "t.1");
    assert_int_equal(f->b.recs[0].crashes, 1);
    outbox_batch_free(&lb);
    outbox_store_destroy(dead);
    outbox_store_destroy(live);
    outbox_store_destroy(keeper);
}

/* batch_bytes: a claim stops once its bodies reach the size (at least one
 * record), and leaves the rows it did not take unlocked for others. */
static void
test_tx_claim_bounded_by_bytes(void **state)
{
    fx_t *f = *state;
    char app[OUTBOX_PG_APPNAME_MAX + 1];
    outbox_pg_options_t o = {.conninfo = f->ci, .batch_bytes = 3000, .application_name = app};
    outbox_store_t *a = NULL, *b = tx_store(f->ci, "B", false);
    outbox_batch_t bb;
    char err[512];

    outbox_pg_appname("A", app);
    assert_int_equal(outbox_pg_store_create(&a, &o, err, sizeof(err)), OUTBOX_OK);
    outbox_batch_init(&bb);
    th_exec(f->c, "SELECT outbox_enqueue('t.' || g, NULL, '{}', decode(repeat('ab', 1000), 'hex')) "
                  "FROM generate_series(1, 10) g");
    /* 1000-byte bodies, 3000 bytes a batch: three records */
    assert_int_equal(outbox_store_claim(a, "A", 100, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 3);
    /* the others are free for another relay meanwhile */
    assert_int_equal(outbox_store_claim(b, "B", 100, &bb), OUTBOX_OK);
    assert_int_equal(bb.n, 7);
    outbox_store_clear_locks_by_lock_id(a, "A", NULL);
    outbox_store_clear_locks_by_lock_id(b, "B", NULL);
    /* one body larger than the limit still goes, alone */
    th_exec(f->c, "UPDATE outbox SET body = decode(repeat('ab', 5000), 'hex') WHERE topic = 't.1'");
    assert_int_equal(outbox_store_claim(a, "A", 100, &f->b), OUTBOX_OK);
    assert_true(f->b.n >= 1);
    assert_string_equal(f->b.recs[0].msg.topic, "t.1");
    outbox_batch_free(&bb);
    outbox_store_destroy(a);
    outbox_store_destroy(b);
}

/* An empty key is no key: stored as NULL, so the per-key claim and the
 * publisher agree. Long lock ids still get distinct application names. */
static void
test_empty_key_and_long_lock_ids(void **state)
{
    fx_t *f = *state;
    char a[OUTBOX_PG_APPNAME_MAX + 1], b[OUTBOX_PG_APPNAME_MAX + 1];
    char la[128], lb[128];

    th_exec(f->c, "INSERT INTO outbox (topic, msg_key, body) VALUES ('e.k', '', 'x')");
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE msg_key IS NULL"), 1);
    memset(la, 'h', 100);
    la[100] = '\0';
    snprintf(lb, sizeof(lb), "%s", la);
    snprintf(la + 90, sizeof(la) - 90, "-0-17");
    snprintf(lb + 90, sizeof(lb) - 90, "-1-17");
    outbox_pg_appname(la, a);
    outbox_pg_appname(lb, b);
    assert_true(strlen(a) <= OUTBOX_PG_APPNAME_MAX && strlen(b) <= OUTBOX_PG_APPNAME_MAX);
    assert_string_not_equal(a, b);
    outbox_pg_appname("db1-0-123", a);
    assert_string_equal(a, "outboxd db1-0-123");
}

/* retention 0: a delivered row is deleted by the mark; the others stay. */
static void
test_tx_delete_delivered(void **state)
{
    fx_t *f = *state;
    outbox_store_t *s = tx_store(f->ci, "D", true);
    outbox_mark_t m[3];

    enqueue_n(f->c, 3);
    assert_int_equal(outbox_store_claim(s, "D", 3, &f->b), OUTBOX_OK);
    m[0] = (outbox_mark_t){f->b.recs[0].id, OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    m[1] = (outbox_mark_t){f->b.recs[1].id, OUTBOX_MARK_RETRY, 1, 1000, "later"};
    m[2] = (outbox_mark_t){f->b.recs[2].id, OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(s, "D", m, 3, NULL), OUTBOX_OK);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE topic = 't.2' AND "
                                       "state = 0 AND attempts = 1"),
                     1);
    outbox_store_destroy(s);
}

#define CONC_ROWS 300

typedef struct claimer {
    const char *ci, *lock_id;
    char (*ids)[OUTBOX_ID_LEN + 1];
    size_t n;
    int rc, calls;
    char err[512];
} claimer_t;

static void *
claim_thread(void *p)
{
    claimer_t *c = p;
    outbox_pg_options_t o = {.conninfo = c->ci,
                             .schema = NULL,
                             .table = NULL,
                             .statement_timeout_ms = 5000,
                             .per_key_order = true};
    outbox_store_t *s = NULL;
    outbox_batch_t b;
    size_t i;

    outbox_batch_init(&b);
    if ((c->rc = outbox_pg_store_create(&s, &o, c->err, sizeof(c->err))) != OUTBOX_OK)
        return NULL;
    /* Bounded: at most CONC_ROWS calls. */
    for (c->calls = 0; c->calls < CONC_ROWS; c->calls++) {
        if ((c->rc = outbox_store_claim(s, c->lock_id, 7, &b)) != OUTBOX_OK) {
            snprintf(c->err, sizeof(c->err), "%s", s->err);
            break;
        }
        if (b.n == 0)
            break;
        for (i = 0; i < b.n && c->n < CONC_ROWS; i++)
            memcpy(c->ids[c->n++], b.recs[i].id, OUTBOX_ID_LEN + 1);
    }
    outbox_batch_free(&b);
    outbox_store_destroy(s);
    return NULL;
}

static void
test_concurrent_claims_disjoint(void **state)
{
    fx_t *f = *state;
    static char ids[2][CONC_ROWS][OUTBOX_ID_LEN + 1];
    claimer_t c[2] = {{f->ci, "A", ids[0], 0, -99, 0, ""}, {f->ci, "B", ids[1], 0, -99, 0, ""}};
    pthread_t t[2];
    size_t i, j;

    enqueue_n(f->c, CONC_ROWS);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, claim_thread, &c[i]), 0);
    for (i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (i = 0; i < 2; i++) {
        if (c[i].rc != OUTBOX_OK)
            fail_msg("claimer %s: %s", c[i].lock_id, c[i].err);
    }
    /* Everything claimed exactly once, and the table agrees who holds what. */
    assert_int_equal(c[0].n + c[1].n, CONC_ROWS);
    for (i = 0; i < c[0].n; i++) {
        for (j = 0; j < c[1].n; j++) {
            if (strcmp(ids[0][i], ids[1][j]) == 0)
                fail_msg("record %s claimed by both", ids[0][i]);
        }
    }
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'A'"),
                     (long long)c[0].n);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'B'"),
                     (long long)c[1].n);
    print_message("claimer A took %zu in %d calls, B %zu in %d\n", c[0].n, c[0].calls, c[1].n,
                  c[1].calls);
}

/* Claims n rows with lock_id and copies their ids. */
static void
claim_ids(fx_t *f, const char *lock_id, int n, char ids[][OUTBOX_ID_LEN + 1])
{
    int i;

    assert_int_equal(outbox_store_claim(f->s, lock_id, n, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, (size_t)n);
    for (i = 0; i < n; i++)
        memcpy(ids[i], f->b.recs[i].id, OUTBOX_ID_LEN + 1);
}

static void
test_mark_effects(void **state)
{
    fx_t *f = *state;
    char ids[6][OUTBOX_ID_LEN + 1];
    outbox_mark_t m[6];
    int64_t updated = -1;

    enqueue_n(f->c, 6);
    th_exec(f->c, "UPDATE outbox SET last_error = 'earlier'");
    claim_ids(f, "w", 6, ids);
    m[0] = (outbox_mark_t){ids[0], OUTBOX_MARK_DELIVERED, 1, 0, NULL};
    m[1] = (outbox_mark_t){ids[1], OUTBOX_MARK_RETRY, 1, 60000, "nats: timeout"};
    m[2] = (outbox_mark_t){ids[2], OUTBOX_MARK_DEAD, 1, 0, "permanent: \"bad\" \xc3\xa9"};
    m[3] = (outbox_mark_t){ids[3], OUTBOX_MARK_RELEASE, 5, 99999, "ignored"};
    m[4] = (outbox_mark_t){ids[4], OUTBOX_MARK_RETRY, 0, 0, NULL};
    m[5] = (outbox_mark_t){ids[5], OUTBOX_MARK_DEAD, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(f->s, "w", m, 6, &updated), OUTBOX_OK);
    assert_int_equal(updated, 6);
    /* One statement: every row changed by the same transaction. */
    assert_int_equal(th_query_ll(f->c, "SELECT count(DISTINCT xmin::text) FROM outbox"), 1);
    /* Every lock is cleared. */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL "
                                       "OR locked_on IS NOT NULL"),
                     0);
    /* DELIVERED */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 1 "
                                 "AND attempts = 1 AND last_attempt_on IS NOT NULL AND "
                                 "last_error = 'earlier' AND processed_on IS NOT NULL",
                                 ids[0]),
                     1);
    /* RETRY with charge: backoff about a minute from the DB's now() */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 0 "
                                 "AND attempts = 1 AND last_attempt_on IS NOT NULL AND "
                                 "processed_on IS NULL AND last_error = 'nats: timeout' AND "
                                 "next_attempt_at - last_attempt_on = interval '60 s'",
                                 ids[1]),
                     1);
    /* DEAD */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 2 "
                                 "AND attempts = 1 AND processed_on IS NOT NULL AND "
                                 "last_error = 'permanent: \"bad\" \xc3\xa9'",
                                 ids[2]),
                     1);
    /* RELEASE changes nothing but the lock. */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 0 "
                                 "AND attempts = 0 AND last_attempt_on IS NULL AND "
                                 "last_error = 'earlier' AND next_attempt_at <= now()",
                                 ids[3]),
                     1);
    /* RETRY with no charge and no error: attempts and last_error kept. */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 0 "
                                 "AND attempts = 0 AND last_attempt_on IS NULL AND "
                                 "last_error = 'earlier'",
                                 ids[4]),
                     1);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND state = 2 "
                                 "AND attempts = 0 AND last_error = 'earlier'",
                                 ids[5]),
                     1);
    /* The retried row is not due yet, the released one is claimable again. */
    assert_int_equal(outbox_store_claim(f->s, "w", 10, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 2);
    assert_string_equal(f->b.recs[0].id, ids[3]);
    assert_string_equal(f->b.recs[1].id, ids[4]);
}

static void
test_mark_delivered_batch(void **state)
{
    fx_t *f = *state;
    char ids[40][OUTBOX_ID_LEN + 1];
    outbox_mark_t m[40];
    int64_t updated = -1;
    int i;

    enqueue_n(f->c, 40);
    claim_ids(f, "w", 40, ids);
    for (i = 0; i < 40; i++)
        m[i] = (outbox_mark_t){ids[i], OUTBOX_MARK_DELIVERED, 1, 0, NULL};
    assert_int_equal(outbox_store_mark(f->s, "w", m, 40, &updated), OUTBOX_OK);
    assert_int_equal(updated, 40);
    assert_int_equal(th_query_ll(f->c, "SELECT count(DISTINCT xmin::text) FROM outbox"), 1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 1 AND attempts "
                                       "= 1 AND locked_by IS NULL AND processed_on IS NOT NULL"),
                     40);
    /* Again: nothing is pending any more, nothing changes. */
    assert_int_equal(outbox_store_mark(f->s, "w", m, 40, &updated), OUTBOX_OK);
    assert_int_equal(updated, 0);
    /* Zero marks: fine, no statement. */
    assert_int_equal(outbox_store_mark(f->s, "w", m, 0, &updated), OUTBOX_OK);
    assert_int_equal(updated, 0);
    /* A malformed id is refused before anything is sent. */
    m[3].id = "not-a-uuid";
    assert_int_equal(outbox_store_mark(f->s, "w", m, 40, &updated), OUTBOX_ERR_INVALID);
    m[3].id = "'); DROP TABLE outbox; --                  ";
    assert_int_equal(outbox_store_mark(f->s, "w", m, 40, &updated), OUTBOX_ERR_INVALID);
}

static void
test_mark_lock_rules(void **state)
{
    fx_t *f = *state;
    char ids[4][OUTBOX_ID_LEN + 1];
    outbox_mark_t m[4];
    int64_t updated = -1;

    enqueue_n(f->c, 4);
    claim_ids(f, "old", 4, ids);
    /* The lock went stale and another worker took the rows. */
    th_exec(f->c, "UPDATE outbox SET locked_by = 'new'");
    m[0] = (outbox_mark_t){ids[0], OUTBOX_MARK_RETRY, 1, 1000, "x"};
    m[1] = (outbox_mark_t){ids[1], OUTBOX_MARK_DEAD, 1, 0, "x"};
    m[2] = (outbox_mark_t){ids[2], OUTBOX_MARK_RELEASE, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(f->s, "old", m, 3, &updated), OUTBOX_OK);
    assert_int_equal(updated, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'new' AND "
                                       "state = 0 AND attempts = 0 AND last_error IS NULL"),
                     4);
    /* An acknowledged publish counts whoever holds the row now, also in a
     * mixed batch (general path). */
    m[3] = (outbox_mark_t){ids[3], OUTBOX_MARK_DELIVERED, 1, 0, NULL};
    assert_int_equal(outbox_store_mark(f->s, "old", m, 4, &updated), OUTBOX_OK);
    assert_int_equal(updated, 1);
    assert_int_equal(th_query_ll(f->c, "SELECT state FROM outbox WHERE id = '%s'", ids[3]), 1);
    m[0] = (outbox_mark_t){ids[0], OUTBOX_MARK_DELIVERED, 0, 0, NULL};
    assert_int_equal(outbox_store_mark(f->s, "old", m, 1, &updated), OUTBOX_OK);
    assert_int_equal(updated, 1);
    /* The holder's own failure marks apply. */
    m[1] = (outbox_mark_t){ids[1], OUTBOX_MARK_DEAD, 1, 0, "x"};
    assert_int_equal(outbox_store_mark(f->s, "new", &m[1], 1, &updated), OUTBOX_OK);
    assert_int_equal(updated, 1);
    /* Nothing changes a row that is no longer pending. */
    m[1].kind = OUTBOX_MARK_DELIVERED;
    assert_int_equal(outbox_store_mark(f->s, "new", &m[1], 1, &updated), OUTBOX_OK);
    assert_int_equal(updated, 0);
    assert_int_equal(th_query_ll(f->c, "SELECT state FROM outbox WHERE id = '%s'", ids[1]), 2);
}

static void
test_get_and_clear_by_lock_id(void **state)
{
    fx_t *f = *state;
    char a[3][OUTBOX_ID_LEN + 1], b[2][OUTBOX_ID_LEN + 1];
    int64_t released = -1;

    enqueue_n(f->c, 6);
    claim_ids(f, "A", 3, a);
    claim_ids(f, "B", 2, b);
    assert_int_equal(outbox_store_get_by_lock_id(f->s, "B", &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 2);
    assert_string_equal(f->b.recs[0].id, b[0]);
    assert_string_equal(f->b.recs[1].id, b[1]);
    assert_string_equal(f->b.recs[1].locked_by, "B");
    assert_int_equal(outbox_store_clear_locks_by_lock_id(f->s, "A", &released), OUTBOX_OK);
    assert_int_equal(released, 3);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by IS NOT NULL"),
                     2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'B' AND "
                                       "locked_on IS NOT NULL"),
                     2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by IS NULL AND "
                                       "locked_on IS NOT NULL"),
                     0);
    assert_int_equal(outbox_store_get_by_lock_id(f->s, "A", &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 0);
    assert_int_equal(outbox_store_clear_locks_by_lock_id(f->s, "nobody", &released), OUTBOX_OK);
    assert_int_equal(released, 0);
}

static void
test_clear_stale_locks(void **state)
{
    fx_t *f = *state;
    char ids[4][OUTBOX_ID_LEN + 1];
    int64_t released = -1;

    enqueue_n(f->c, 4);
    claim_ids(f, "w", 4, ids);
    th_exec(f->c,
            "UPDATE outbox SET locked_on = now() - interval '10 minutes' WHERE id IN "
            "('%s', '%s')",
            ids[0], ids[2]);
    th_exec(f->c, "UPDATE outbox SET locked_on = now() - interval '4 minutes' WHERE id = '%s'",
            ids[1]);
    assert_int_equal(outbox_store_clear_stale_locks(f->s, 5 * 60 * 1000, &released), OUTBOX_OK);
    assert_int_equal(released, 2);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE locked_by IS NULL AND "
                                 "locked_on IS NULL AND id IN ('%s', '%s')",
                                 ids[0], ids[2]),
                     2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE locked_by = 'w'"), 2);
    assert_int_equal(outbox_store_clear_stale_locks(f->s, 3 * 60 * 1000, &released), OUTBOX_OK);
    assert_int_equal(released, 1);
}

static void
test_purge(void **state)
{
    fx_t *f = *state;
    int64_t deleted = -1;

    enqueue_n(f->c, 12);
    /* t.1: pending, ancient, locked, even with a processed_on. */
    th_exec(f->c, "UPDATE outbox SET created_on = now() - interval '10 years', processed_on = "
                  "now() - interval '10 years', locked_by = 'x', locked_on = now() - interval "
                  "'9 years' WHERE topic = 't.1'");
    /* t.2: pending, recent. t.3-t.6 delivered 2 days ago, t.7 an hour ago. */
    th_exec(f->c, "UPDATE outbox SET state = 1, processed_on = now() - interval '2 days' WHERE "
                  "topic IN ('t.3', 't.4', 't.5', 't.6')");
    th_exec(f->c, "UPDATE outbox SET state = 1, processed_on = now() - interval '1 hour' WHERE "
                  "topic = 't.7'");
    /* t.8-t.10 dead 10 days ago, t.11 dead 2 days ago, t.12 dead now. */
    th_exec(f->c, "UPDATE outbox SET state = 2, processed_on = now() - interval '10 days' WHERE "
                  "topic IN ('t.8', 't.9', 't.10')");
    th_exec(f->c, "UPDATE outbox SET state = 2, processed_on = now() - interval '2 days' WHERE "
                  "topic = 't.11'");
    th_exec(f->c, "UPDATE outbox SET state = 2, processed_on = now() WHERE topic = 't.12'");

    /* Both kinds kept forever: nothing. */
    assert_int_equal(outbox_store_purge(f->s, -1, -1, 100, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 0);
    /* Delivered only, one day, limit 3 of the 4 old ones. */
    assert_int_equal(outbox_store_purge(f->s, 86400000, -1, 3, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 3);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 1"), 2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 2"), 5);
    /* Dead after 5 days, delivered after 1: the 4th old delivered + 3 dead. */
    assert_int_equal(outbox_store_purge(f->s, 86400000, 5 * 86400000LL, 100, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 4);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 1"), 1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 2"), 2);
    /* Retention 0: everything finished goes; pending never does. */
    assert_int_equal(outbox_store_purge(f->s, 0, 0, 100, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 3);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 2);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE state = 0 AND topic IN "
                                       "('t.1', 't.2')"),
                     2);
    assert_int_equal(outbox_store_purge(f->s, 0, 0, 100, &deleted), OUTBOX_OK);
    assert_int_equal(deleted, 0);
}

static void
test_roundtrip_bytes(void **state)
{
    fx_t *f = *state;
    unsigned char body[256];
    outbox_header_t h[3] = {{"Content-Type", "application/octet-stream"},
                            {"X-Greeting", "caf\xc3\xa9 \xe2\x98\x95 \xe6\x97\xa5\xe6\x9c\xac "
                                           "\"quoted\" back\\slash \xf0\x9f\x98\x80"},
                            {"x-spaced", "a  b\tc"}};
    outbox_message_t m1 = {"bytes.full", "key-\xc3\xa9", h, 3, body, sizeof(body)};
    outbox_message_t m2 = {"bytes.empty", "", NULL, 0, "", 0};
    char id1[OUTBOX_ID_LEN + 1], id2[OUTBOX_ID_LEN + 1], err[256];
    const outbox_record_t *r;
    size_t i, j;
    int k;

    for (k = 0; k < 256; k++)
        body[k] = (unsigned char)(255 - k); /* NUL at the end, and everywhere else */
    body[3] = 0;
    th_exec(f->c, "BEGIN");
    if (outbox_enqueue((struct pg_conn *)f->c, NULL, NULL, &m1, id1, err, sizeof(err)) !=
            OUTBOX_OK ||
        outbox_enqueue((struct pg_conn *)f->c, NULL, NULL, &m2, id2, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("enqueue: %s", err);
    th_exec(f->c, "COMMIT");
    for (k = 0; k < 2; k++) {
        if (k == 0)
            assert_int_equal(outbox_store_claim(f->s, "rt", 10, &f->b), OUTBOX_OK);
        else
            assert_int_equal(outbox_store_get_by_lock_id(f->s, "rt", &f->b), OUTBOX_OK);
        assert_int_equal(f->b.n, 2);
        r = &f->b.recs[0];
        assert_string_equal(r->id, id1);
        assert_string_equal(r->msg.topic, "bytes.full");
        assert_string_equal(r->msg.key, "key-\xc3\xa9");
        assert_int_equal(r->msg.body_len, sizeof(body));
        assert_memory_equal(r->msg.body, body, sizeof(body));
        assert_int_equal(r->msg.nheaders, 3);
        for (i = 0; i < 3; i++) {
            for (j = 0; j < 3 && strcmp(r->msg.headers[j].name, h[i].name) != 0; j++)
                ;
            if (j == 3)
                fail_msg("header %s lost", h[i].name);
            assert_string_equal(r->msg.headers[j].value, h[i].value);
        }
        assert_int_equal(r->attempts, 0);
        assert_null(r->last_error);
        assert_int_equal(r->processed_on, 0);
        r = &f->b.recs[1];
        assert_string_equal(r->id, id2);
        assert_null(r->msg.key);
        assert_int_equal(r->msg.body_len, 0);
        assert_non_null(r->msg.body);
        assert_int_equal(r->msg.nheaders, 0);
        assert_true(f->b.recs[0].seq < r->seq);
    }
    /* The stored row is what the SQL side sees too. */
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND msg_key "
                                 "IS NULL AND body = ''::bytea AND headers = '{}'",
                                 id2),
                     1);
    assert_int_equal(th_query_ll(f->c, "SELECT length(body) FROM outbox WHERE id = '%s'", id1),
                     256);
}

static void
test_reconnect(void **state)
{
    fx_t *f = *state;
    int rc;

    enqueue_n(f->c, 3);
    /* Waits (up to 5 s) until the backend is gone. */
    assert_true(th_query_ll(f->c, "SELECT count(pg_terminate_backend(pid, 5000)) FROM "
                                  "pg_stat_activity WHERE datname = current_database() AND "
                                  "application_name = 'outboxd'") >= 1);
    /* The call that meets the dead connection reports it... */
    rc = outbox_store_claim(f->s, "w", 1, &f->b);
    assert_int_equal(rc, OUTBOX_ERR_UNREACHABLE);
    assert_true(f->s->err[0] != '\0');
    /* ...and the next one reconnects by itself, prepared statements too. */
    assert_int_equal(outbox_store_claim(f->s, "w", 1, &f->b), OUTBOX_OK);
    assert_int_equal(f->b.n, 1);
    /* Schema errors are told apart from the rest. */
    th_exec(f->c, "ALTER TABLE outbox RENAME TO outbox_gone");
    rc = outbox_store_claim(f->s, "w", 1, &f->b);
    assert_int_equal(rc, OUTBOX_ERR_SCHEMA);
    th_exec(f->c, "ALTER TABLE outbox_gone RENAME TO outbox");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrate_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_odd_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_script_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_order_limit_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_skips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_bound_hostile_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_claims_disjoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_crashed_and_suspects_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_ordered_prefixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_ordered_window_bounds_cost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tx_claim_holds_row_locks_until_mark, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tx_dead_relay_crash_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tx_delete_delivered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tx_claim_bounded_by_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_key_and_long_lock_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_effects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_delivered_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_lock_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_and_clear_by_lock_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clear_stale_locks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
