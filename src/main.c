/*
 * outboxd: command line and sub-commands (run, migrate, stream, config).
 * Exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage
 * (reported before any connection is made).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "outbox/broker.h"
#include "outbox/outbox.h"
#include "outbox/store.h"
#include "worker.h"

#define EXIT_USAGE 2
#define MAX_SETS 128
#define MAX_ARGS 16

typedef struct cli {
    const char *config_file;
    char *set_keys[MAX_SETS];
    char *set_values[MAX_SETS];
    int nset;
    const char *args[MAX_ARGS]; /* positional, args[0] = sub-command */
    int nargs;
    int print;         /* migrate --print */
    int json;          /* stream info --json */
    const char *dupwin; /* stream add --duplicate-window */
} cli_t;

static void
usage(FILE *out)
{
    fprintf(out,
            "Usage: outboxd [options] COMMAND [args]\n"
            "\n"
            "Relays messages committed to a PostgreSQL outbox table to NATS.\n"
            "\n"
            "Commands:\n"
            "  run                      relay until SIGTERM/SIGINT\n"
            "  migrate [--print]        install or upgrade the outbox schema (--print: show "
            "the SQL only)\n"
            "  stream add NAME SUBJECTS [--duplicate-window D]\n"
            "                           create a JetStream stream (SUBJECTS comma-separated)\n"
            "  stream info NAME [--json] show a stream's subjects, messages and settings\n"
            "  config                   validate the configuration and print it (secrets "
            "masked)\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE        INI configuration file (key = value)\n"
            "  --db CONNINFO            PostgreSQL conninfo or URI (env OUTBOX_DB)\n"
            "  --nats URL               NATS URL (env OUTBOX_NATS_URL)\n"
            "  --nats-mode MODE         jetstream (default) or core\n"
            "  --KEY VALUE              any configuration key below, '_' written '-'\n"
            "  -h, --help               this help;  -V, --version  the version\n"
            "\n"
            "Precedence: flags > environment > file > defaults.\n"
            "Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.\n\n");
    outbox_config_usage(out);
}

static int
parse_cli(int argc, char **argv, cli_t *c)
{
    int i;

    memset(c, 0, sizeof(*c));
    for (i = 1; i < argc; i++) {
        char *a = argv[i], *eq, *val;
        const char *key;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("outboxd %s (schema version %d)\n", OUTBOX_VERSION_STRING,
                   OUTBOX_SCHEMA_VERSION);
            exit(0);
        }
        if (a[0] != '-' || strcmp(a, "-") == 0) {
            if (c->nargs == MAX_ARGS) {
                fprintf(stderr, "outboxd: too many arguments\n");
                return -1;
            }
            c->args[c->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--print") == 0) {
            c->print = 1;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = 1;
            continue;
        }
        if (strcmp(a, "-c") == 0 || strncmp(a, "--config", 8) == 0 ||
            strncmp(a, "--duplicate-window", 18) == 0) {
            const char **dst = a[1] == 'c' || a[2] == 'c' ? &c->config_file : &c->dupwin;

            if ((eq = strchr(a, '=')) != NULL && a[1] == '-')
                *dst = eq + 1;
            else if (i + 1 < argc)
                *dst = argv[++i];
            else {
                fprintf(stderr, "outboxd: %s needs a value\n", a);
                return -1;
            }
            continue;
        }
        if (a[1] != '-') {
            fprintf(stderr, "outboxd: unknown option %s (see --help)\n", a);
            return -1;
        }
        if ((eq = strchr(a, '=')) != NULL)
            *eq = '\0';
        key = outbox_config_flag_key(a + 2);
        if (key == NULL) {
            fprintf(stderr, "outboxd: unknown option %s (see --help)\n", a);
            return -1;
        }
        if (eq != NULL)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "outboxd: %s needs a value\n", a);
            return -1;
        }
        if (c->nset == MAX_SETS) {
            fprintf(stderr, "outboxd: too many options\n");
            return -1;
        }
        c->set_keys[c->nset] = (char *)key;
        c->set_values[c->nset++] = val;
    }
    return 0;
}

static int
load(const cli_t *c, outbox_config_t *cfg)
{
    char err[600];

    if (outbox_config_load(cfg, c->config_file, c->set_keys, c->set_values, c->nset, err,
                           sizeof(err)) != OUTBOX_OK) {
        fprintf(stderr, "outboxd: configuration error: %s\n", err);
        return -1;
    }
    return 0;
}

static int
reload_cb(outbox_config_t *out, char *err, size_t errlen, void *arg)
{
    const cli_t *c = arg;

    return outbox_config_load(out, c->config_file, c->set_keys, c->set_values, c->nset, err,
                              errlen);
}

static int
cmd_run(const cli_t *c, outbox_config_t *cfg)
{
    char host[256], lock_id[160];
    outbox_worker_spec_t spec;
    int code;

    if (c->nargs != 1) {
        fprintf(stderr, "outboxd: run takes no arguments\n");
        return EXIT_USAGE;
    }
    if (outbox_log_open((int)cfg->log_level, cfg->log_file, "outboxd") != 0) {
        fprintf(stderr, "outboxd: log_file %s: %s\n", cfg->log_file, strerror(errno));
        return EXIT_USAGE;
    }
    if (cfg->machine_id[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "outboxd");
        host[sizeof(host) - 1] = '\0';
    } else {
        snprintf(host, sizeof(host), "%s", cfg->machine_id);
    }
    snprintf(lock_id, sizeof(lock_id), "%s-%d", host, (int)getpid());
    memset(&spec, 0, sizeof(spec));
    spec.cfg = cfg;
    spec.lock_id = lock_id;
    spec.reload = c->config_file != NULL ? reload_cb : NULL;
    spec.reload_arg = (void *)c;
    log_info("outboxd %s starting", OUTBOX_VERSION_STRING);
    code = outbox_worker_run(&spec);
    return code;
}

static int
cmd_migrate(const cli_t *c, outbox_config_t *cfg)
{
    outbox_pg_options_t o = {.conninfo = cfg->db, .schema = cfg->schema, .table = cfg->table};
    char err[600];
    int from = 0, to = 0, rc, v;

    if (c->nargs != 1) {
        fprintf(stderr, "outboxd: migrate takes no arguments\n");
        return EXIT_USAGE;
    }
    if (c->print) {
        for (v = 1; v <= OUTBOX_SCHEMA_VERSION; v++) {
            char *sql = NULL;

            if (outbox_pg_migration_sql(cfg->schema, cfg->table, v, &sql) != OUTBOX_OK) {
                fprintf(stderr, "outboxd: cannot build migration %d\n", v);
                return 1;
            }
            printf("-- outbox migration %d\n%s\n", v, sql);
            free(sql);
        }
        return 0;
    }
    rc = outbox_pg_migrate(&o, &from, &to, err, sizeof(err));
    if (rc != OUTBOX_OK) {
        fprintf(stderr, "outboxd: migrate failed: %s\n", err);
        return rc == OUTBOX_ERR_CONFIG ? EXIT_USAGE : 1;
    }
    if (from == to)
        printf("schema %s, table %s: already at version %d\n", cfg->schema, cfg->table, to);
    else
        printf("schema %s, table %s: migrated from version %d to %d\n", cfg->schema,
               cfg->table, from, to);
    return 0;
}

static int
cmd_stream(const cli_t *c, outbox_config_t *cfg)
{
    outbox_nats_options_t o = {.url = cfg->nats_url,
                               .mode = OUTBOX_NATS_JETSTREAM,
                               .publish_timeout_ms = cfg->publish_timeout_ms,
                               .connect_timeout_ms = cfg->connect_timeout_ms,
                               .name = "outboxd-stream"};
    char err[600];
    int64_t dup_ms = 0;
    int rc;

    if (c->nargs == 4 && strcmp(c->args[1], "add") == 0) {
        if (c->dupwin != NULL && outbox_parse_duration(c->dupwin, false, &dup_ms) != 0) {
            fprintf(stderr, "outboxd: --duplicate-window: \"%s\" is not a duration\n",
                    c->dupwin);
            return EXIT_USAGE;
        }
        rc = outbox_nats_stream_add(&o, c->args[2], c->args[3], dup_ms, err, sizeof(err));
        if (rc == OUTBOX_OK)
            printf("stream %s created for subjects %s\n", c->args[2], c->args[3]);
    } else if (c->nargs == 3 && strcmp(c->args[1], "info") == 0) {
        rc = outbox_nats_stream_info(&o, c->args[2], c->json != 0, stdout, err, sizeof(err));
    } else {
        fprintf(stderr, "usage: outboxd stream add NAME SUBJECTS [--duplicate-window D]\n"
                        "       outboxd stream info NAME [--json]\n");
        return EXIT_USAGE;
    }
    if (rc != OUTBOX_OK) {
        fprintf(stderr, "outboxd: stream %s: %s\n", c->args[1], err);
        return rc == OUTBOX_ERR_CONFIG || rc == OUTBOX_ERR_INVALID ? EXIT_USAGE : 1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    outbox_config_t cfg;
    cli_t c;
    int code;

    if (parse_cli(argc, argv, &c) != 0)
        return EXIT_USAGE;
    if (c.nargs == 0) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (load(&c, &cfg) != 0)
        return EXIT_USAGE;
    if (strcmp(c.args[0], "run") == 0) {
        code = cmd_run(&c, &cfg);
    } else if (strcmp(c.args[0], "migrate") == 0) {
        code = cmd_migrate(&c, &cfg);
    } else if (strcmp(c.args[0], "stream") == 0) {
        code = cmd_stream(&c, &cfg);
    } else if (strcmp(c.args[0], "config") == 0) {
        outbox_config_dump(&cfg, stdout);
        code = 0;
    } else {
        fprintf(stderr, "outboxd: unknown command \"%s\" (see --help)\n", c.args[0]);
        code = EXIT_USAGE;
    }
    outbox_config_free(&cfg);
    return code;
}
