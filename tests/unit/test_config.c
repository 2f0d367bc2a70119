/*
 * Configuration: duration parsing, every key's validation, precedence
 * flags > environment > file > defaults, file errors naming the line, and
 * password redaction.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static void
test_durations(void **state)
{
    static const struct {
        const char *in;
        int never, ok;
        int64_t ms;
    } cases[] = {
        {"250ms", 0, 1, 250},    {"5s", 0, 1, 5000},   {"2m", 0, 1, 120000}, {"1h", 0, 1, 3600000},
        {"7d", 0, 1, 604800000}, {"1.5s", 0, 1, 1500}, {"0", 0, 1, 0},       {"never", 1, 1, -1},
        {"forever", 1, 1, -1},   {"never", 0, 0, 0},   {"5", 0, 0, 0},       {"5x", 0, 0, 0},
        {"", 0, 0, 0},           {"-1s", 0, 0, 0},     {"s", 0, 0, 0},       {"1e30d", 0, 0, 0},
        {"nan", 0, 0, 0},
    };
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = 12345;
        int rc = outbox_parse_duration(cases[i].in, cases[i].never, &ms);

        if (cases[i].ok) {
            assert_int_equal(rc, 0);
            assert_int_equal(ms, cases[i].ms);
        } else {
            assert_int_not_equal(rc, 0);
        }
    }
}

static void
test_bad_values_name_the_key(void **state)
{
    static const struct {
        const char *key, *value;
    } bad[] = {
        {"batch_size", "0"},        {"batch_size", "10001"},
        {"batch_size", "ten"},      {"batch_size", "5x"},
        {"batch_bytes", "-1"},      {"batch_bytes", "1.5MiB"},
        {"batch_bytes", "4TiB"},    {"batch_bytes", "2GiB"},
        {"batch_bytes", " 1MiB"},   {"process_interval", "0"},
        {"process_interval", "5"},  {"lock_check_interval", "-1s"},
        {"max_lock_time", "soon"},  {"nats_mode", "both"},
        {"log_level", "loud"},      {"retry_multiplier", "0.5"},
        {"retry_jitter", "2"},      {"max_attempts", "-1"},
        {"cleanup_batch", "0"},     {"retention", "sometimes"},
        {"publish_timeout", "0"},   {"workers", "0"},
        {"workers", "65"},          {"drain_timeout", "0"},
        {"worker_timeout", "10ms"}, {"ready_timeout", "0"},
    };
    outbox_config_t cfg;
    char err[512];
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(outbox_config_init(&cfg), OUTBOX_OK);
        err[0] = '\0';
        assert_int_equal(outbox_config_set(&cfg, bad[i].key, bad[i].value, err, sizeof(err)),
                         OUTBOX_ERR_CONFIG);
        assert_non_null(strstr(err, bad[i].key));
        outbox_config_free(&cfg);
    }
    assert_int_equal(outbox_config_init(&cfg), OUTBOX_OK);
    assert_int_equal(outbox_config_set(&cfg, "no_such_key", "1", err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_non_null(strstr(err, "no_such_key"));
    outbox_config_free(&cfg);
}

static void
test_cross_checks(void **state)
{
    static const struct {
        const char *key, *value, *word;
    } bad[] = {
        {"retention", "30s", "retention"},
        {"dead_retention", "30s", "dead_retention"},
        {"max_lock_time", "15s", "publish_timeout"},
        {"retry_max", "10ms", "retry_max (10ms) must be at least retry_initial (1000ms)"},
        {"nats_url", "", "nats_url"},
        {"table", "", "table"},
        {"schema", "", "schema"},
        {"machine_id", "has space", "machine_id"},
        {"nats_url", "garbage url", "nats_url"},
        {"nats_url", "nats://127.0.0.1:99999", "port"},
        {"nats_url", "nats://127.0.0.1:0", "port"},
        {"nats_url", "http://127.0.0.1:4222", "scheme"},
        {"nats_url", "nats://127.0.0.1:4222,", "nats_url"},
        {"nats_url", "nats://h/path", "nats_url"},
        {"instance", "a/b", "instance"},
        {"instance", "has space", "instance"},
        {"worker_timeout", "20s", "worker_timeout"},
        {"worker_timeout", "80s", "worker_timeout"}, /* 2 x 30 + 10 + 10: not more */
        {"stats_group", "no-such-group-here", "stats_group"},
        {"pid_file", "/nonexistent-dir/x.pid", "pid_file"},
    };
    char *k[1], *v[1], err[512];
    outbox_config_t cfg;
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        k[0] = (char *)bad[i].key;
        v[0] = (char *)bad[i].value;
        err[0] = '\0';
        assert_int_equal(outbox_config_load(&cfg, NULL, k, v, 1, err, sizeof(err)),
                         OUTBOX_ERR_CONFIG);
        assert_non_null(strstr(err, bad[i].word));
    }
    k[0] = "retention";
    v[0] = "never";
    assert_int_equal(outbox_config_load(&cfg, NULL, k, v, 1, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(cfg.retention_ms, -1);
    outbox_config_free(&cfg);
    v[0] = "forever"; /* the README's other word for it */
    assert_int_equal(outbox_config_load(&cfg, NULL, k, v, 1, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(cfg.retention_ms, -1);
    outbox_config_free(&cfg);
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void
test_precedence(void **state)
{
    char path[] = "/tmp/outbox-config-XXXXXX";
    char *k[1] = {"batch_size"}, *v[1] = {"30"}, err[512];
    outbox_config_t cfg;
    int fd = mkstemp(path);
    (void)state;

    assert_true(fd >= 0);
    close(fd);
    write_file(path, "# comment\nbatch_size = 10\nprocess_interval = 2s\n"
                     "[outboxd]\nlock_check_interval = 30s\ntable = events\n");
    unsetenv("OUTBOX_BATCH_SIZE");
    unsetenv("OUTBOX_TABLE");
    /* defaults < file */
    assert_int_equal(outbox_config_load(&cfg, path, NULL, NULL, 0, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(cfg.batch_size, 10);
    assert_int_equal(cfg.process_interval_ms, 2000);
    assert_int_equal(cfg.lock_check_interval_ms, 30000);
    assert_string_equal(cfg.table, "events");
    assert_int_equal(cfg.max_attempts, 10); /* default kept */
    outbox_config_free(&cfg);
    /* file < environment */
    setenv("OUTBOX_BATCH_SIZE", "20", 1);
    setenv("OUTBOX_TABLE", "env_events", 1);
    assert_int_equal(outbox_config_load(&cfg, path, NULL, NULL, 0, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(cfg.batch_size, 20);
    assert_string_equal(cfg.table, "env_events");
    outbox_config_free(&cfg);
    /* environment < flags */
    assert_int_equal(outbox_config_load(&cfg, path, k, v, 1, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(cfg.batch_size, 30);
    outbox_config_free(&cfg);
    /* a bad environment value names the variable */
    setenv("OUTBOX_BATCH_SIZE", "lots", 1);
    assert_int_equal(outbox_config_load(&cfg, path, NULL, NULL, 0, err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_non_null(strstr(err, "OUTBOX_BATCH_SIZE"));
    unsetenv("OUTBOX_BATCH_SIZE");
    unsetenv("OUTBOX_TABLE");
    unlink(path);
}

static void
test_file_errors_name_the_line(void **state)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"batch_size = 10\nbogus = 1\n", ":2: unknown key \"bogus\""},
        {"batch_size = 10\n\nbatch_size = zero\n", ":3: batch_size"},
        {"[other]\nbatch_size = 1\n", ":2: unknown section [other]"},
        {"batch_size 10\n", ":1: syntax error"},
        {"batch_size = 5\nworkers = 2\nbatch_size = 6\n", ":3: batch_size is set twice"},
    };
    char path[] = "/tmp/outbox-config-XXXXXX", err[512];
    outbox_config_t cfg;
    size_t i;
    int fd = mkstemp(path);
    (void)state;

    assert_true(fd >= 0);
    close(fd);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(path, cases[i].text);
        err[0] = '\0';
        assert_int_equal(outbox_config_load(&cfg, path, NULL, NULL, 0, err, sizeof(err)),
                         OUTBOX_ERR_CONFIG);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
    }
    unlink(path);
    assert_int_equal(
        outbox_config_load(&cfg, "/nonexistent/outbox.ini", NULL, NULL, 0, err, sizeof(err)),
        OUTBOX_ERR_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/outbox.ini"));
    assert_int_equal(outbox_config_load(&cfg, "/tmp", NULL, NULL, 0, err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_non_null(strstr(err, "not a regular file"));
}

static void
test_redaction(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"host=db password=s3cret user=app", "host=db password=**** user=app"},
        {"password = 'a b\\' c' host=x", "password=**** host=x"},
        {"postgresql://app:s3cret@db:5432/app", "postgresql://app:****@db:5432/app"},
        {"postgresql://app@db/app", "postgresql://app@db/app"},
        {"nats://u:p@127.0.0.1:4222", "nats://u:****@127.0.0.1:4222"},
        {"host=db user=app", "host=db user=app"},
        {"postgresql://db/app?password=s3cret", "postgresql://db/app?password=****"},
        {"postgresql://a:b@db/app?sslmode=require&password=p&sslpassword=q&x=1",
         "postgresql://a:****@db/app?sslmode=require&password=****&sslpassword=****&x=1"},
        {"host=db sslpassword=k password=p", "host=db sslpassword=**** password=****"},
    };
    char out[256];
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        outbox_config_redact(cases[i].in, out, sizeof(out));
        assert_string_equal(out, cases[i].out);
    }
    /* outboxd config shows what it was given, escaped: no raw ESC or C1 */
    {
        outbox_config_t cfg;
        char *k[1] = {"db"}, *v[1] = {"host=x dbname=\x1b[31m"};
        char err[256], *text = NULL;
        size_t len = 0, j;
        FILE *f = open_memstream(&text, &len);

        assert_non_null(f);
        assert_int_equal(outbox_config_load(&cfg, NULL, k, v, 1, err, sizeof(err)), OUTBOX_OK);
        outbox_config_dump(&cfg, f);
        fclose(f);
        assert_non_null(strstr(text, "dbname=\\x1b[31m"));
        for (j = 0; j < len; j++)
            if ((unsigned char)text[j] == 0x1b)
                fail_msg("a raw ESC in the dump:\n%s", text);
        free(text);
        outbox_config_free(&cfg);
    }
}

/* The supervisor hands workers its configuration as serialize() text:
 * every key must come back exactly, secrets included. */
static void
test_serialize_round_trip(void **state)
{
    static const char *const set[][2] = {
        {"db", "host=db password='p w' user=app"},
        {"nats_url", "nats://u:pw@127.0.0.1:4222"},
        {"retry_multiplier", "1.3333333333333333"},
        {"retry_jitter", "0.1"},
        {"process_interval", "250ms"},
        {"retention", "never"},
        {"workers", "7"},
        {"instance", "orders"},
        {"log_file", "/tmp/x y.log"},
        {"nats_mode", "core"},
        {"batch_bytes", "512KiB"},
    };
    char *k[11], *v[11], *buf = NULL, *buf2 = NULL, err[512];
    outbox_config_t a, b;
    size_t i, len = 0, len2 = 0;
    (void)state;

    for (i = 0; i < 11; i++) {
        k[i] = (char *)set[i][0];
        v[i] = (char *)set[i][1];
    }
    assert_int_equal(outbox_config_load(&a, NULL, k, v, 11, err, sizeof(err)), OUTBOX_OK);
    assert_int_equal(a.batch_bytes, 512 * 1024);
    assert_int_equal(outbox_config_serialize(&a, &buf, &len), OUTBOX_OK);
    assert_int_equal(outbox_config_deserialize(&b, buf, len, err, sizeof(err)), OUTBOX_OK);
    assert_string_equal(b.db, a.db);
    assert_string_equal(b.nats_url, a.nats_url);
    assert_true(b.retry_multiplier == a.retry_multiplier);
    assert_int_equal(b.process_interval_ms, 250);
    assert_int_equal(b.batch_bytes, 512 * 1024);
    assert_int_equal(b.retention_ms, -1);
    assert_int_equal(b.workers, 7);
    assert_int_equal(b.nats_mode, a.nats_mode);
    assert_string_equal(b.log_file, "/tmp/x y.log");
    assert_int_equal(outbox_config_serialize(&b, &buf2, &len2), OUTBOX_OK);
    assert_int_equal(len, len2);
    assert_memory_equal(buf, buf2, len);
    /* malformed input is refused, not half-applied */
    outbox_config_free(&b);
    assert_int_equal(outbox_config_deserialize(&b, "batch_size", 11, err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    assert_int_equal(outbox_config_deserialize(&b, "batch_size=0", 13, err, sizeof(err)),
                     OUTBOX_ERR_CONFIG);
    free(buf);
    free(buf2);
    outbox_config_free(&a);
}

static void
test_flag_names(void **state)
{
    (void)state;
    assert_string_equal(outbox_config_flag_key("db"), "db");
    assert_string_equal(outbox_config_flag_key("nats"), "nats_url");
    assert_string_equal(outbox_config_flag_key("nats-mode"), "nats_mode");
    assert_string_equal(outbox_config_flag_key("batch-size"), "batch_size");
    assert_null(outbox_config_flag_key("frobnicate"));
}

/* Read a whole file of the source tree; caller frees. */
static char *
slurp(const char *rel)
{
    char path[1024], *buf;
    FILE *f;
    long n;

    snprintf(path, sizeof(path), "%s/%s", OUTBOX_SOURCE_DIR, rel);
    f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

/* Every key of the table is in the example configuration and in the
 * README's key list, so neither can fall behind the code. */
static void
test_every_key_documented(void **state)
{
    char *example = slurp("deploy/outboxd.conf.example"), *readme = slurp("README.md");
    char needle[128];
    const char *k;
    size_t i;
    (void)state;

    for (i = 0; (k = outbox_config_key_name(i)) != NULL; i++) {
        snprintf(needle, sizeof(needle), "\n%s =", k);
        if (strstr(example, needle) == NULL &&
            (snprintf(needle, sizeof(needle), "\n#%s =", k), strstr(example, needle) == NULL))
            fail_msg("key %s is missing from deploy/outboxd.conf.example", k);
        snprintf(needle, sizeof(needle), "`%s`", k);
        if (strstr(readme, needle) == NULL)
            fail_msg("key %s is missing from README.md", k);
    }
    assert_true(i > 10);
    free(example);
    free(readme);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_every_key_documented),
        cmocka_unit_test(test_bad_values_name_the_key),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_file_errors_name_the_line),
        cmocka_unit_test(test_redaction),
        cmocka_unit_test(test_flag_names),
        cmocka_unit_test(test_serialize_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
