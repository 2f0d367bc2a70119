/*
 * outbox_subject_valid() and outbox_message_validate(): table-driven cases
 * both ways, including the limits exactly at and one past the boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "escape.h"
#include "outbox/outbox.h"

static char *
repeat(char *buf, char c, size_t n)
{
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

static void
test_subject_valid(void **state)
{
    static const char *good[] = {
        "a",
        "orders",
        "orders.created",
        "a.b.c.d.e",
        "A-Z_0.9",
        "x*",
        "*x",
        "a.b*.c",
        ">a",
        "a.>b",
        "a.$JS",
        "caf\xc3\xa9.cr\xc3\xa8me",
        "\xe2\x82\xac",
        "-",
        "a.-.b",
        "very.long.subject.with.many.tokens.1.2.3",
        "tab\xc2\xa0nbsp",
    };
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!outbox_subject_valid(good[i]))
            fail_msg("expected valid: \"%s\"", good[i]);
    }
    (void)state;
}

static void
test_subject_invalid(void **state)
{
    static const char *bad[] = {
        "",
        ".",
        "..",
        ".a",
        "a.",
        "a..b",
        "a b",
        " a",
        "a ",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\x01",
        "a\x7f",
        "*",
        ">",
        "a.*",
        "a.>",
        "*.a",
        ">.a",
        "a.*.b",
        "a.>.b",
        "\xc3",
        "\xc3\x28",
        "\xe2\x82",
        "\xed\xa0\x80",
        "\xc0\xaf",
        "\xf8\x88\x80\x80\x80",
        "\xf4\x90\x80\x80",
        "a.\xff",
        "$JS.API.STREAM.DELETE.X",
        "$SYS.REQ",
    };
    size_t i;

    assert_false(outbox_subject_valid(NULL));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (outbox_subject_valid(bad[i]))
            fail_msg("expected invalid: case %zu \"%s\"", i, bad[i]);
    }
    (void)state;
}

static void
test_subject_length_limit(void **state)
{
    static char s[OUTBOX_TOPIC_MAX + 2];

    assert_true(outbox_subject_valid(repeat(s, 'a', OUTBOX_TOPIC_MAX)));
    assert_false(outbox_subject_valid(repeat(s, 'a', OUTBOX_TOPIC_MAX + 1)));
    (void)state;
}

/* A message with one header; case tables change one field each. */
typedef struct mcase {
    const char *topic, *key, *name, *value;
    int nheaders; /* 0 or 1 */
    int null_body;
    const char *want; /* substring of the error, NULL when valid */
} mcase_t;

static int
run_case(const mcase_t *c, char *err, size_t errlen)
{
    outbox_header_t h = {c->name, c->value};
    outbox_message_t m = {c->topic, c->key, &h, (size_t)c->nheaders, c->null_body ? NULL : "body",
                          4};

    err[0] = '\0';
    return outbox_message_validate(&m, err, errlen);
}

static void
test_message_valid(void **state)
{
    static const mcase_t cases[] = {
        {"orders", NULL, NULL, NULL, 0, 0, NULL},
        {"orders", "", NULL, NULL, 0, 0, NULL},
        {"orders", "k-1", "Content-Type", "application/json", 1, 0, NULL},
        {"a.b", "k\xc3\xa9", "X-Trace", "a  b\tc", 1, 0, NULL},
        {"a.b", NULL, "x", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 1, 0, NULL},
        {"a.b", NULL, "!#$%&'*+-.^_`|~", "v", 1, 0, NULL},
        {"a.b", NULL, "Outbox", "v", 1, 0, NULL},  /* not the prefix "Outbox-" */
        {"a.b", NULL, "Natsy-x", "v", 1, 0, NULL}, /* not "Nats-" */
        {"a.b", NULL, "X-Outbox-Id", "v", 1, 0, NULL},
        {"a.b", NULL, "h", "tab\there and \x01 ok", 1, 0, NULL},
    };
    char err[256];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (run_case(&cases[i], err, sizeof(err)) != OUTBOX_OK)
            fail_msg("case %zu rejected: %s", i, err);
    }
    (void)state;
}

static void
test_message_invalid(void **state)
{
    static const mcase_t cases[] = {
        {NULL, NULL, NULL, NULL, 0, 0, "topic is missing"},
        {"", NULL, NULL, NULL, 0, 0, "topic is empty"},
        {"a..b", NULL, NULL, NULL, 0, 0, "empty token"},
        {"a b", NULL, NULL, NULL, 0, 0, "space or control"},
        {"a.*", NULL, NULL, NULL, 0, 0, "wildcard"},
        {"a.>", NULL, NULL, NULL, 0, 0, "wildcard"},
        {"$JS.API.STREAM.DELETE.X", NULL, NULL, NULL, 0, 0, "reserved"},
        {"a\xff", NULL, NULL, NULL, 0, 0, "UTF-8"},
        {"a", "k\r", NULL, NULL, 0, 0, "key"},
        {"a", "k\nx", NULL, NULL, 0, 0, "CR or LF"},
        {"a", "\xc3", NULL, NULL, 0, 0, "key is not valid UTF-8"},
        {"a", NULL, "", "v", 1, 0, "empty name"},
        {"a", NULL, NULL, "v", 1, 0, "empty name"},
        {"a", NULL, "a:b", "v", 1, 0, "not a token"},
        {"a", NULL, "a b", "v", 1, 0, "not a token"},
        {"a", NULL, "caf\xc3\xa9", "v", 1, 0, "not a token"},
        {"a", NULL, "a(b)", "v", 1, 0, "not a token"},
        {"a", NULL, "a\"b", "v", 1, 0, "not a token"},
        {"a", NULL, "Outbox-Id", "v", 1, 0, "reserved"},
        {"a", NULL, "outbox-anything", "v", 1, 0, "reserved"},
        {"a", NULL, "OUTBOX-KEY", "v", 1, 0, "reserved"},
        {"a", NULL, "Nats-Msg-Id", "v", 1, 0, "reserved"},
        {"a", NULL, "nats-expected-stream", "v", 1, 0, "reserved"},
        {"a", NULL, "X", "a\r\nInjected: 1", 1, 0, "CR or LF"},
        {"a", NULL, "X", "line\n", 1, 0, "CR or LF"},
        {"a", NULL, "X", NULL, 1, 0, "no value"},
        {"a", NULL, "X", "", 1, 0, "value is empty"},
        {"a", NULL, "X", " v", 1, 0, "white space"},
        {"a", NULL, "X", "v\t", 1, 0, "white space"},
        {"a", " k", NULL, NULL, 0, 0, "white space"},
        {"a", NULL, "X", "\xe2\x82", 1, 0, "UTF-8"},
        {"a", NULL, NULL, NULL, 0, 1, "body is NULL"},
    };
    char err[256];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (run_case(&cases[i], err, sizeof(err)) != OUTBOX_ERR_INVALID)
            fail_msg("case %zu accepted", i);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, cases[i].want);
        if (strchr(err, '\n') != NULL || strchr(err, '\r') != NULL)
            fail_msg("case %zu: error is not one line", i);
    }
    (void)state;
}

static void
test_message_limits(void **state)
{
    static char name[OUTBOX_HEADER_NAME_MAX + 2], value[OUTBOX_HEADER_VALUE_MAX + 2];
    static char key[OUTBOX_HEADER_VALUE_MAX + 2];
    outbox_header_t h = {name, "v"};
    outbox_message_t m = {"t", NULL, &h, 1, "", 0};
    char err[256];

    repeat(name, 'n', OUTBOX_HEADER_NAME_MAX);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    repeat(name, 'n', OUTBOX_HEADER_NAME_MAX + 1);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "longer than 256"));

    h.name = "n";
    h.value = repeat(value, 'v', OUTBOX_HEADER_VALUE_MAX);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    repeat(value, 'v', OUTBOX_HEADER_VALUE_MAX + 1);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "longer than 4096"));

    h.value = "v";
    m.key = repeat(key, 'k', OUTBOX_HEADER_VALUE_MAX);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    repeat(key, 'k', OUTBOX_HEADER_VALUE_MAX + 1);
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
    (void)state;
}

static void
test_message_header_list(void **state)
{
    outbox_header_t hs[3] = {{"A", "1"}, {"B", "2"}, {"A", "3"}};
    outbox_message_t m = {"t", NULL, hs, 2, "", 0};
    char err[256];

    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    m.nheaders = 3; /* "A" twice would silently lose one value in the JSON */
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
    assert_non_null(strstr(err, "repeated"));
    hs[2].name = "a"; /* names are case-sensitive, as in nats.c */
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    m.headers = NULL;
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
    m.nheaders = 0;
    assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(outbox_message_validate(NULL, err, sizeof(err)), OUTBOX_ERR_INVALID);
    (void)state;
}

/* Quoted culprits show control characters escaped, never raw: a newline
 * from a key would split the error line (the SQL check does the same). */
static void
test_message_error_escapes_culprit(void **state)
{
    static const struct {
        const char *topic, *key, *hname, *hvalue, *want;
    } cases[] = {
        {"a", "k\nx", NULL, NULL, "key \"k\\nx\" contains CR or LF"},
        {"a", "k\r\n", NULL, NULL, "key \"k\\r\\n\" contains CR or LF"},
        {"a", "\x01k\\ ", NULL, NULL, "key \"\\x01k\\\\ \" begins or ends"},
        {"a\x01"
         "b",
         NULL, NULL, NULL, "topic \"a\\x01b\" contains"},
        {"a\tb\x7f", NULL, NULL, NULL, "topic \"a\\tb\\x7f\" contains"},
        {"a", NULL, "x\ny", "v", "header name \"x\\ny\" is not a token"},
    };
    outbox_header_t h;
    outbox_message_t m;
    char err[256];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        h = (outbox_header_t){cases[i].hname, cases[i].hvalue};
        m = (outbox_message_t){cases[i].topic, cases[i].key, &h, cases[i].hname != NULL, "", 0};
        assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, cases[i].want);
    }
    /* A culprit of control characters is still cut short. */
    {
        static char key[200];

        memset(key, '\x01', sizeof(key) - 1);
        key[0] = '\n';
        m = (outbox_message_t){"a", key, NULL, 0, "", 0};
        assert_int_equal(outbox_message_validate(&m, err, sizeof(err)), OUTBOX_ERR_INVALID);
        assert_true(strlen(err) < 120);
        assert_non_null(strstr(err, "\\n\\x01\\x01"));
        assert_non_null(strstr(err, "...\" contains CR or LF"));
    }
    (void)state;
}

/* outbox_escape(): control characters and bytes that are not UTF-8 are
 * escaped, valid UTF-8 is kept, output is cut between characters. */
static void
test_escape(void **state)
{
    static const struct {
        const char *in;
        size_t len;
        unsigned flags;
        const char *want;
    } cases[] = {
        {"plain", 5, 0, "plain"},
        {"a\nb\r\t", 5, 0, "a\\nb\\r\\t"},
        {"\x1b[31mred", 8, 0, "\\x1b[31mred"},
        {"nul\0x", 5, 0, "nul\\x00x"},
        {"del\x7f", 4, 0, "del\\x7f"},
        {"a\\b", 3, 0, "a\\b"},
        {"a\\b", 3, OUTBOX_ESCAPE_BACKSLASH, "a\\\\b"},
        {"caf\xc3\xa9 \xe6\x97\xa5", 9, 0, "caf\xc3\xa9 \xe6\x97\xa5"},
        {"bad\xff\xc3(", 6, 0, "bad\\xff\\xc3("},
        {"\xed\xa0\x80", 3, 0, "\\xed\\xa0\\x80"}, /* a surrogate */
        {"\xc0\xaf", 2, 0, "\\xc0\\xaf"},          /* an overlong '/' */
        {"\xe2\x82", 2, 0, "\\xe2\\x82"},          /* cut short */
        {"a\xc2\x9b"
         "2J",
         5, 0, "a\\u009b2J"}, /* C1: the 8-bit CSI */
        {"\xe2\x80\xae"
         "rtl\xe2\x80\x8b",
         9, 0, "\\u202ertl\\u200b"}, /* RTL override, ZWSP */
        {"\xef\xbb\xbf"
         "x\xc2\xa0",
         6, 0, "\\ufeffx\xc2\xa0"}, /* BOM; NBSP is visible */
        {"\xe2\x80\xa8"
         "\xd8\x9c"
         "\xf3\xa0\x81\x81",
         9, 0, "\\u2028\\u061c\\ue0041"}, /* LS, ALM, tag */
    };
    char out[64];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(outbox_escape(out, sizeof(out), cases[i].in, cases[i].len, cases[i].flags),
                         cases[i].len);
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("case %zu: \"%s\", want \"%s\"", i, out, cases[i].want);
    }
    /* Too small: never half an escape nor half a character. */
    assert_int_equal(outbox_escape(out, 4, "ab\x01", 3, 0), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(outbox_escape(out, 4, "a\xc3\xa9\xc3\xa9", 5, 0), 3);
    assert_string_equal(out, "a\xc3\xa9");
    assert_int_equal(outbox_escape(out, 1, "a", 1, 0), 0);
    assert_string_equal(out, "");
    /* An invalid UTF-8 culprit is quoted escaped, never raw. */
    {
        outbox_message_t m = {"a.\xff\x1b", NULL, NULL, 0, "", 0};

        assert_int_equal(outbox_message_validate(&m, out, sizeof(out)), OUTBOX_ERR_INVALID);
        assert_non_null(strstr(out, "\"a.\\xff\\x1b\""));
    }
    (void)state;
}

static void
test_message_error_buffer(void **state)
{
    outbox_message_t m = {"a b", NULL, NULL, 0, "", 0};
    char small[8];
    char big[256];
    static char longtopic[600];

    /* No buffer: still rejected, nothing written anywhere. */
    assert_int_equal(outbox_message_validate(&m, NULL, 0), OUTBOX_ERR_INVALID);
    memset(small, 'x', sizeof(small));
    assert_int_equal(outbox_message_validate(&m, small, sizeof(small)), OUTBOX_ERR_INVALID);
    assert_int_equal(small[sizeof(small) - 1], '\0');
    /* A long culprit is cut, not spilled over the line. */
    memset(longtopic, 'a', sizeof(longtopic) - 1);
    longtopic[300] = ' ';
    m.topic = longtopic;
    assert_int_equal(outbox_message_validate(&m, big, sizeof(big)), OUTBOX_ERR_INVALID);
    assert_true(strlen(big) < 200);
    assert_non_null(strstr(big, "..."));
    (void)state;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subject_valid),
        cmocka_unit_test(test_subject_invalid),
        cmocka_unit_test(test_subject_length_limit),
        cmocka_unit_test(test_message_valid),
        cmocka_unit_test(test_message_invalid),
        cmocka_unit_test(test_message_limits),
        cmocka_unit_test(test_message_header_list),
        cmocka_unit_test(test_message_error_buffer),
        cmocka_unit_test(test_message_error_escapes_culprit),
        cmocka_unit_test(test_escape),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
