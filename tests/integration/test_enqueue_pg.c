/*
 * Producer API against a real server: outbox_enqueue() and the SQL function
 * outbox_enqueue(). Transactions decide what exists; both paths reject the
 * same invalid messages and write nothing; the CHECK constraint catches raw
 * INSERTs. Each test gets its own database.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
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
} fx_t;

static int
setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    outbox_pg_options_t o = {.conninfo = NULL};
    char err[512];

    assert_non_null(f);
    th_env_load(&f->env);
    th_db_create(&f->env, "enqueue", f->ci, sizeof(f->ci));
    o.conninfo = f->ci;
    if (outbox_pg_migrate(&o, NULL, NULL, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("migrate: %s", err);
    f->c = th_connect(f->ci);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx_t *f = *state;

    PQfinish(f->c);
    th_db_drop(&f->env, f->ci);
    free(f);
    return 0;
}

static int
c_enqueue(PGconn *c, const char *topic, const char *key, const char *hname, const char *hvalue,
          const void *body, char *id, char *err, size_t errlen)
{
    outbox_header_t h = {hname, hvalue};
    outbox_message_t m = {topic, key,
                          &h,    hname != NULL || hvalue != NULL ? 1 : 0,
                          body,  body != NULL ? strlen(body) : 0};

    return outbox_enqueue((struct pg_conn *)c, NULL, NULL, &m, id, err, errlen);
}

/* The SQL function with the same inputs; the single header goes in as a
 * one-key object. Returns the result (caller clears). */
static PGresult *
sql_enqueue(PGconn *c, const char *topic, const char *key, const char *hname, const char *hvalue,
            const char *body)
{
    const char *v[5] = {topic, key, hname, hvalue, body};

    return PQexecParams(c,
                        "SELECT outbox_enqueue($1, $2, CASE WHEN $3::text IS NULL AND $4::text "
                        "IS NULL THEN NULL ELSE jsonb_build_object($3::text, $4::text) END, "
                        "convert_to($5, 'UTF8'))",
                        5, NULL, v, NULL, NULL, 0);
}

static void
test_commit_and_rollback(void **state)
{
    fx_t *f = *state;
    char id1[OUTBOX_ID_LEN + 1], id2[OUTBOX_ID_LEN + 1], err[256];
    char sqlid[OUTBOX_ID_LEN + 1];
    PGresult *r;

    th_exec(f->c, "BEGIN");
    assert_int_equal(c_enqueue(f->c, "a.b", "k", "X-A", "1", "one", id1, err, sizeof(err)),
                     OUTBOX_OK);
    r = sql_enqueue(f->c, "a.c", "", NULL, NULL, "two");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    snprintf(sqlid, sizeof(sqlid), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    th_exec(f->c, "COMMIT");
    th_exec(f->c, "BEGIN");
    assert_int_equal(c_enqueue(f->c, "a.d", NULL, NULL, NULL, "three", id2, err, sizeof(err)),
                     OUTBOX_OK);
    PQclear(sql_enqueue(f->c, "a.e", NULL, NULL, NULL, "four"));
    /* Visible inside the transaction... */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 4);
    th_exec(f->c, "ROLLBACK");
    /* ...but only the committed ones exist. */
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 2);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND topic = "
                                 "'a.b' AND msg_key = 'k' AND headers = '{\"X-A\": \"1\"}' "
                                 "AND body = 'one'::bytea AND state = 0",
                                 id1),
                     1);
    assert_int_equal(th_query_ll(f->c,
                                 "SELECT count(*) FROM outbox WHERE id = '%s' AND msg_key "
                                 "IS NULL AND headers = '{}'",
                                 sqlid),
                     1);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE id = '%s'", id2), 0);
    /* Ids are uuids in their canonical text form. */
    assert_int_equal(strlen(id1), OUTBOX_ID_LEN);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox WHERE id::text = '%s'", id1),
                     1);
}

static void
test_requires_transaction(void **state)
{
    fx_t *f = *state;
    char id[OUTBOX_ID_LEN + 1] = "untouched", err[256] = "";

    /* Autocommit: refused, nothing written. */
    assert_int_equal(c_enqueue(f->c, "a", NULL, NULL, NULL, "x", id, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "BEGIN"));
    assert_string_equal(id, "untouched");
    /* An aborted transaction is not an open one either. */
    th_exec(f->c, "BEGIN");
    PQclear(PQexec(f->c, "SELECT 1/0"));
    assert_int_equal(PQtransactionStatus(f->c), PQTRANS_INERROR);
    assert_int_equal(c_enqueue(f->c, "a", NULL, NULL, NULL, "x", id, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    th_exec(f->c, "ROLLBACK");
    assert_int_equal(c_enqueue(NULL, "a", NULL, NULL, NULL, "x", id, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 0);
}

typedef struct ecase {
    const char *topic, *key, *hname, *hvalue;
    int null_body;
} ecase_t;

static char long_topic[OUTBOX_TOPIC_MAX + 2], long_name[OUTBOX_HEADER_NAME_MAX + 2];
static char long_value[OUTBOX_HEADER_VALUE_MAX + 4], long_key[OUTBOX_HEADER_VALUE_MAX + 2];

static void
make_long_strings(void)
{
    size_t i;

    memset(long_topic, 'a', OUTBOX_TOPIC_MAX + 1);
    memset(long_name, 'n', OUTBOX_HEADER_NAME_MAX + 1);
    memset(long_key, 'k', OUTBOX_HEADER_VALUE_MAX + 1);
    /* 2048 two-byte characters and one more byte: 4097 bytes, 2049
     * characters, so a limit counted in characters would let it through. */
    for (i = 0; i < OUTBOX_HEADER_VALUE_MAX; i += 2)
        memcpy(long_value + i, "\xc3\xa9", 2);
    long_value[OUTBOX_HEADER_VALUE_MAX] = 'x';
}

/* 1 if s holds a control character: an error line must show the culprit's
 * escaped (\n, \x01), never raw. */
static int
has_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < ' ' || *s == 0x7f)
            return 1;
    return 0;
}

static void
test_invalid_rejected_by_both(void **state)
{
    fx_t *f = *state;
    const ecase_t cases[] = {
        {"", NULL, NULL, NULL, 0},
        {NULL, NULL, NULL, NULL, 0},
        {"a..b", NULL, NULL, NULL, 0},
        {"$JS.API.STREAM.DELETE.X", NULL, NULL, NULL, 0},
        {".a", NULL, NULL, NULL, 0},
        {"a.", NULL, NULL, NULL, 0},
        {".", NULL, NULL, NULL, 0},
        {"a b", NULL, NULL, NULL, 0},
        {"a\tb", NULL, NULL, NULL, 0},
        {"a\nb", NULL, NULL, NULL, 0},
        {"a\x7f", NULL, NULL, NULL, 0},
        {"*", NULL, NULL, NULL, 0},
        {">", NULL, NULL, NULL, 0},
        {"a.*", NULL, NULL, NULL, 0},
        {"a.>.b", NULL, NULL, NULL, 0},
        {long_topic, NULL, NULL, NULL, 0},
        {"a", "k\r\n", NULL, NULL, 0},
        {"a", long_key, NULL, NULL, 0},
        {"a", NULL, "", "v", 0},
        {"a", NULL, "a:b", "v", 0},
        {"a", NULL, "x-empty", "", 0},
        {"a", NULL, "x-pad", " v", 0},
        {"a", NULL, "x-pad", "v ", 0},
        {"a", "k ", NULL, NULL, 0},
        {"a", NULL, "a b", "v", 0},
        {"a", NULL, "a/b", "v", 0},
        {"a", NULL, "caf\xc3\xa9", "v", 0},
        {"a", NULL, long_name, "v", 0},
        {"a", NULL, "Outbox-Id", "v", 0},
        {"a", NULL, "outbox-whatever", "v", 0},
        {"a", NULL, "NATS-Msg-Id", "v", 0},
        {"a", NULL, "nats-x", "v", 0},
        {"a", NULL, "X", "a\r\nInjected: yes", 0},
        {"a", NULL, "X", "a\n", 0},
        {"a", NULL, "X", "\r", 0},
        {"a", NULL, "X", long_value, 0},
        {"a", NULL, "X", NULL, 0},
        {"a", NULL, NULL, NULL, 1},
    };
    char id[OUTBOX_ID_LEN + 1], err[256];
    const char *st;
    PGresult *r;
    size_t i;

    make_long_strings();
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const ecase_t *c = &cases[i];

        /* C: refused before the server sees it, so the caller's
         * transaction is still usable. */
        th_exec(f->c, "BEGIN");
        if (c_enqueue(f->c, c->topic, c->key, c->hname, c->hvalue, c->null_body ? NULL : "b", id,
                      err, sizeof(err)) != OUTBOX_ERR_INVALID)
            fail_msg("case %zu: accepted by outbox_enqueue()", i);
        if (has_control(err))
            fail_msg("case %zu: C error shows a raw control character: %s", i, err);
        assert_int_equal(PQtransactionStatus(f->c), PQTRANS_INTRANS);
        th_exec(f->c, "COMMIT");
        /* SQL: refused with our error code and a message naming the
         * problem. */
        r = sql_enqueue(f->c, c->topic, c->key, c->hname, c->hvalue, c->null_body ? NULL : "b");
        if (PQresultStatus(r) != PGRES_FATAL_ERROR)
            fail_msg("case %zu (C said \"%s\"): accepted by the SQL function", i, err);
        st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (strcmp(st, c->null_body ? "22004" : "23514") != 0 ||
            strncmp(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), "outbox: ", 8) != 0)
            fail_msg("case %zu: SQL error %s %s", i, st,
                     PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
        if (has_control(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)))
            fail_msg("case %zu: SQL error shows a raw control character: %s", i,
                     PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
        PQclear(r);
    }
    /* Both show the culprit the same way. */
    th_exec(f->c, "BEGIN");
    assert_int_equal(c_enqueue(f->c, "a", "k\r\n", NULL, NULL, "b", id, err, sizeof(err)),
                     OUTBOX_ERR_INVALID);
    th_exec(f->c, "COMMIT");
    assert_non_null(strstr(err, "k\\r\\n"));
    r = sql_enqueue(f->c, "a\x01", "k", NULL, NULL, "b");
    assert_non_null(strstr(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), "'a\\x01'"));
    PQclear(r);
    r = sql_enqueue(f->c, "a", "k\r\n", NULL, NULL, "b");
    assert_non_null(strstr(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), "'k\\r\\n'"));
    PQclear(r);
    /* Forms only JSON can express. */
    static const char *const bad_json[] = {"[]",
                                           "\"s\"",
                                           "1",
                                           "{\"a\": 1}",
                                           "{\"a\": null}",
                                           "{\"a\": {\"b\": \"c\"}}",
                                           "{\"a\": [\"x\"]}"};
    for (i = 0; i < sizeof(bad_json) / sizeof(bad_json[0]); i++) {
        const char *v[1] = {bad_json[i]};

        r = PQexecParams(f->c, "SELECT outbox_enqueue('a', NULL, $1::jsonb, '')", 1, NULL, v, NULL,
                         NULL, 0);
        if (PQresultStatus(r) != PGRES_FATAL_ERROR)
            fail_msg("headers %s accepted", bad_json[i]);
        assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23514");
        PQclear(r);
    }
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 0);
}

static void
test_limits_agree(void **state)
{
    fx_t *f = *state;
    static char topic[OUTBOX_TOPIC_MAX + 1], name[OUTBOX_HEADER_NAME_MAX + 1];
    static char value[OUTBOX_HEADER_VALUE_MAX + 1];
    char id[OUTBOX_ID_LEN + 1], err[256];
    PGresult *r;
    size_t i;

    /* Exactly at every limit, in bytes: both accept. */
    memset(topic, 't', OUTBOX_TOPIC_MAX);
    memset(name, 'n', OUTBOX_HEADER_NAME_MAX);
    for (i = 0; i < OUTBOX_HEADER_VALUE_MAX; i += 2)
        memcpy(value + i, "\xc3\xa9", 2);
    th_exec(f->c, "BEGIN");
    if (c_enqueue(f->c, topic, "k", name, value, "b", id, err, sizeof(err)) != OUTBOX_OK)
        fail_msg("C: %s", err);
    th_exec(f->c, "COMMIT");
    r = sql_enqueue(f->c, topic, "k", name, value, "b");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("SQL: %s", PQresultErrorMessage(r));
    PQclear(r);
    /* Odd but legal subjects too. */
    r = sql_enqueue(f->c, "JS$.x*.>y.caf\xc3\xa9", NULL, "X-Outbox", "tab\tok", "");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("SQL: %s", PQresultErrorMessage(r));
    PQclear(r);
    th_exec(f->c, "BEGIN");
    if (c_enqueue(f->c, "JS$.x*.>y.caf\xc3\xa9", NULL, "X-Outbox", "tab\tok", "", id, err,
                  sizeof(err)) != OUTBOX_OK)
        fail_msg("C: %s", err);
    th_exec(f->c, "COMMIT");
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 4);
}

static void
test_check_constraint_guards_raw_insert(void **state)
{
    fx_t *f = *state;
    static const char *const bad[] = {
        "INSERT INTO outbox (id, topic, body) VALUES (gen_random_uuid(), 'a..b', '')",
        "INSERT INTO outbox (id, topic, body) VALUES (gen_random_uuid(), '', '')",
        "INSERT INTO outbox (id, topic, headers, body) VALUES (gen_random_uuid(), 'a', "
        "'{\"Nats-Msg-Id\": \"x\"}', '')",
        "INSERT INTO outbox (id, topic, headers, body) VALUES (gen_random_uuid(), 'a', "
        "'{\"a\": 1}', '')",
        "INSERT INTO outbox (id, topic, headers, body) VALUES (gen_random_uuid(), 'a', '[]', '')",
        "INSERT INTO outbox (id, topic, msg_key, body) VALUES (gen_random_uuid(), 'a', "
        "E'k\\n', '')",
        "INSERT INTO outbox (id, topic, body, state) VALUES (gen_random_uuid(), 'a', '', 7)",
        "INSERT INTO outbox (id, topic, headers, body) VALUES (gen_random_uuid(), 'a', "
        "'{\"x\": \"\"}', '')",
    };
    PGresult *r;
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = PQexec(f->c, bad[i]);
        if (PQresultStatus(r) != PGRES_FATAL_ERROR)
            fail_msg("raw insert %zu accepted", i);
        assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23514");
        PQclear(r);
    }
    th_exec(f->c, "INSERT INTO outbox (id, topic, body) VALUES (gen_random_uuid(), 'a.b', '')");
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 1);
}

static void
test_server_errors_classified(void **state)
{
    fx_t *f = *state;
    outbox_message_t m = {"a", NULL, NULL, 0, "x", 1};
    char id[OUTBOX_ID_LEN + 1], err[256];

    th_exec(f->c, "BEGIN");
    assert_int_equal(
        outbox_enqueue((struct pg_conn *)f->c, "public", "missing", &m, id, err, sizeof(err)),
        OUTBOX_ERR_SCHEMA);
    assert_non_null(strstr(err, "missing"));
    th_exec(f->c, "ROLLBACK");
    /* A table name that cannot be one is a config error, checked first. */
    th_exec(f->c, "BEGIN");
    assert_int_equal(outbox_enqueue((struct pg_conn *)f->c, NULL, "", &m, id, err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_int_equal(PQtransactionStatus(f->c), PQTRANS_INTRANS);
    th_exec(f->c, "ROLLBACK");
    {
        PGconn *other = th_connect(f->ci);

        /* Another session holds the table: our insert times out on the
         * lock (55P03) and that may pass. */
        th_exec(other, "BEGIN");
        th_exec(other, "LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE");
        th_exec(f->c, "BEGIN");
        th_exec(f->c, "SET LOCAL lock_timeout = '50ms'");
        assert_int_equal(
            outbox_enqueue((struct pg_conn *)f->c, NULL, NULL, &m, id, err, sizeof(err)),
            OUTBOX_ERR_TRANSIENT);
        th_exec(f->c, "ROLLBACK");
        th_exec(other, "ROLLBACK");
        PQfinish(other);
    }
    assert_int_equal(th_query_ll(f->c, "SELECT count(*) FROM outbox"), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_and_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requires_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_rejected_by_both, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_constraint_guards_raw_insert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_errors_classified, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
