/*
 * outboxd: command line and sub-commands (run, migrate, stream, config, and
 * the internal "worker" that the supervisor execs).
 * Exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage
 * (reported before any connection is made).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "dead_pg.h"
#include "escape.h"
#include "log.h"
#include "outbox/broker.h"
#include "outbox/outbox.h"
#include "outbox/store.h"
#include "stats.h"
#include "supervisor.h"
#include "worker.h"

#define EXIT_USAGE 2
#define MAX_SETS 128
#define MAX_ARGS (OUTBOX_DEAD_MAX_IDS + 2)

typedef struct cli {
    const char *config_file;
    char *set_keys[MAX_SETS];
    char *set_values[MAX_SETS];
    int nset;
    const char *args[MAX_ARGS]; /* positional, args[0] = sub-command */
    int nargs;
    int print;          /* migrate --print */
    int repair;         /* migrate --repair */
    int json;           /* stream info, dead --json */
    const char *dupwin; /* stream add --duplicate-window */
    /* dead: filters */
    const char *topic, *error, *older, *newer, *limit;
    int all;
} cli_t;

/* Options of sub-commands that take a value (not configuration keys). */
static const char **
cmd_option(cli_t *c, const char *name)
{
    static const struct {
        const char *name;
        size_t off;
    } opts[] = {
        {"duplicate-window", offsetof(cli_t, dupwin)},
        {"topic", offsetof(cli_t, topic)},
        {"error", offsetof(cli_t, error)},
        {"older-than", offsetof(cli_t, older)},
        {"newer-than", offsetof(cli_t, newer)},
        {"limit", offsetof(cli_t, limit)},
    };
    size_t i;

    for (i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
        if (strcmp(name, opts[i].name) == 0)
            return (const char **)((char *)c + opts[i].off);
    return NULL;
}

static void
usage(FILE *out)
{
    fprintf(out, "Usage: outboxd [options] COMMAND [args]\n"
                 "\n"
                 "Relays messages committed to a PostgreSQL outbox table to NATS.\n"
                 "\n"
                 "Commands:\n"
                 "  run                      relay until SIGTERM/SIGINT: a supervisor and its "
                 "workers\n"
                 "  migrate [--print]        install or upgrade the outbox schema (--print: show "
                 "the SQL only)\n"
                 "  migrate --repair [--print]\n"
                 "                           create again what was dropped or disabled by hand\n"
                 "                           beside the table (the table and its rows are kept)\n"
                 "  stream add NAME SUBJECTS [--duplicate-window D]\n"
                 "                           create a JetStream stream (SUBJECTS comma-separated)\n"
                 "  stream update NAME SUBJECTS [--duplicate-window D]\n"
                 "                           change an existing stream's subjects or window\n"
                 "  stream info NAME [--json] show a stream's subjects, messages and settings\n"
                 "  dead list [FILTERS] [--limit N] [--json]\n"
                 "                           dead records, newest first\n"
                 "  dead show ID [--json]    one dead record, headers and body\n"
                 "  dead requeue ID...|FILTERS|--all\n"
                 "                           make them pending again (fresh id, attempts 0)\n"
                 "  dead purge ID...|FILTERS|--all\n"
                 "                           delete them\n"
                 "                           FILTERS: --topic PATTERN (orders.*, orders.>)\n"
                 "                           --error TEXT  --older-than D  --newer-than D\n"
                 "                           exit 1 if a given ID is not a dead record (named;\n"
                 "                           the others are still acted on)\n"
                 "  config                   validate the configuration and print it (secrets "
                 "masked)\n"
                 "\n"
                 "Options:\n"
                 "  -c, --config FILE        INI configuration file (key = value)\n"
                 "  --db CONNINFO            PostgreSQL conninfo or URI (env OUTBOX_DB)\n"
                 "  --nats URL               NATS URL (env OUTBOX_NATS_URL)\n"
                 "  --nats-mode MODE         jetstream (default) or core\n"
                 "  --workers N              relay worker processes\n"
                 "  --instance NAME          instance name (stats region /outbox-NAME)\n"
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
    int i, k;

    memset(c, 0, sizeof(*c));
    for (i = 1; i < argc; i++) {
        char *a = argv[i], *eq, *val;
        const char *key, **dst;

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
                outbox_fprintf_safe(stderr, "outboxd: too many arguments\n");
                return -1;
            }
            c->args[c->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--print") == 0) {
            c->print = 1;
            continue;
        }
        if (strcmp(a, "--repair") == 0) {
            c->repair = 1;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = 1;
            continue;
        }
        if (strcmp(a, "--all") == 0) {
            c->all = 1;
            continue;
        }
        if ((eq = strchr(a, '=')) != NULL)
            *eq = '\0';
        dst = strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 ? &c->config_file
              : strncmp(a, "--", 2) == 0                         ? cmd_option(c, a + 2)
                                                                 : NULL;
        if (eq != NULL)
            *eq = '=';
        if (dst != NULL) {
            if (*dst != NULL) {
                outbox_fprintf_safe(stderr, "outboxd: %s given twice\n", a);
                return -1;
            }
            if ((eq = strchr(a, '=')) != NULL && a[1] == '-')
                *dst = eq + 1;
            else if (i + 1 < argc)
                *dst = argv[++i];
            else {
                outbox_fprintf_safe(stderr, "outboxd: %s needs a value\n", a);
                return -1;
            }
            continue;
        }
        if (a[1] != '-') {
            outbox_fprintf_safe(stderr, "outboxd: unknown option %s (see --help)\n", a);
            return -1;
        }
        if ((eq = strchr(a, '=')) != NULL)
            *eq = '\0';
        key = outbox_config_flag_key(a + 2);
        if (key == NULL) {
            outbox_fprintf_safe(stderr, "outboxd: unknown option %s (see --help)\n", a);
            return -1;
        }
        if (eq != NULL)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            outbox_fprintf_safe(stderr, "outboxd: %s needs a value\n", a);
            return -1;
        }
        if (c->nset == MAX_SETS) {
            outbox_fprintf_safe(stderr, "outboxd: too many options\n");
            return -1;
        }
        for (k = 0; k < c->nset; k++)
            if (strcmp(c->set_keys[k], key) == 0) {
                outbox_fprintf_safe(stderr, "outboxd: %s given twice\n", a);
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
        outbox_fprintf_safe(stderr, "outboxd: configuration error: %s\n", err);
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

/* instance, else the config file's name without directory and ".conf",
 * else "default". -1 (reason printed) when the file's name cannot name
 * one: two instances must never end up sharing "default" by accident. */
static int
derive_instance(const cli_t *c, const outbox_config_t *cfg, char *buf, size_t len)
{
    const char *base;
    size_t n, i;

    if (cfg->instance[0] != '\0') {
        snprintf(buf, len, "%s", cfg->instance);
        return 0;
    }
    snprintf(buf, len, "default");
    if (c->config_file == NULL)
        return 0;
    base = strrchr(c->config_file, '/');
    base = base ? base + 1 : c->config_file;
    n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".conf") == 0)
        n -= 5;
    for (i = 0; i < n; i++) {
        char ch = base[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            break;
    }
    if (n == 0 || i < n || n >= len || n >= OUTBOX_STATS_NAME_MAX) {
        outbox_fprintf_safe(
            stderr,
            "outboxd: cannot name the instance after the configuration file \"%s\" (1 to "
            "%d of A-Z a-z 0-9 . _ -): set instance = NAME in it\n",
            base, OUTBOX_STATS_NAME_MAX - 1);
        return -1;
    }
    snprintf(buf, len, "%.*s", (int)n, base);
    return 0;
}

static int
cmd_run(const cli_t *c, outbox_config_t *cfg)
{
    char host[256], instance[OUTBOX_STATS_NAME_MAX], exe[PATH_MAX];
    outbox_supervisor_spec_t spec;
    ssize_t n;

    if (c->nargs != 1) {
        outbox_fprintf_safe(stderr, "outboxd: run takes no arguments\n");
        return EXIT_USAGE;
    }
    if (outbox_log_open((int)cfg->log_level, cfg->log_file, "outboxd") != 0) {
        outbox_fprintf_safe(stderr, "outboxd: log_file %s: %s\n", cfg->log_file, strerror(errno));
        return EXIT_USAGE;
    }
    if (cfg->machine_id[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "outboxd");
        host[sizeof(host) - 1] = '\0';
    } else {
        snprintf(host, sizeof(host), "%s", cfg->machine_id);
    }
    /* The path, not the inode: after an upgrade, workers exec the new binary. */
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        outbox_fprintf_safe(stderr, "outboxd: cannot resolve /proc/self/exe: %s\n",
                            strerror(errno));
        return 1;
    }
    exe[n] = '\0';
    if (derive_instance(c, cfg, instance, sizeof(instance)) != 0)
        return EXIT_USAGE;
    memset(&spec, 0, sizeof(spec));
    spec.exe = exe;
    spec.cfg = cfg;
    spec.instance = instance;
    spec.machine_id = host;
    spec.reload = c->config_file != NULL ? reload_cb : NULL;
    spec.reload_arg = (void *)c;
    log_info("outboxd %s starting", OUTBOX_VERSION_STRING);
    return outbox_supervisor_run(&spec);
}

/*
 * outboxd worker --role relay|keeper --instance NAME --slot N --lock-id ID
 *                --parent PID --config-fd FD [--release-fd FD]
 * Started by the supervisor only: the configuration comes from its memfd.
 */
static int
cmd_worker(int argc, char **argv)
{
    const char *role = NULL, *instance = NULL, *lock_id = NULL;
    long slot = -1, parent = 0, cfd = -1, rfd = -1;
    outbox_stats_region_t *r = NULL;
    outbox_worker_spec_t spec;
    outbox_config_t cfg;
    struct stat st;
    char err[600], *buf = NULL;
    int i, code;

    for (i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];

        if (strcmp(k, "--role") == 0)
            role = v;
        else if (strcmp(k, "--instance") == 0)
            instance = v;
        else if (strcmp(k, "--lock-id") == 0)
            lock_id = v;
        else if (strcmp(k, "--slot") == 0)
            slot = strtol(v, NULL, 10);
        else if (strcmp(k, "--parent") == 0)
            parent = strtol(v, NULL, 10);
        else if (strcmp(k, "--config-fd") == 0)
            cfd = strtol(v, NULL, 10);
        else if (strcmp(k, "--release-fd") == 0)
            rfd = strtol(v, NULL, 10);
        else
            break;
    }
    if (i != argc || role == NULL || instance == NULL || lock_id == NULL || slot < 0 ||
        slot >= OUTBOX_STATS_SLOTS || cfd < 0 ||
        (strcmp(role, "relay") != 0 && strcmp(role, "keeper") != 0)) {
        outbox_fprintf_safe(stderr, "outboxd: \"worker\" is started by \"outboxd run\" only\n");
        return EXIT_USAGE;
    }
    if (fstat((int)cfd, &st) != 0 || st.st_size <= 0 || st.st_size > 1 << 20 ||
        (buf = malloc((size_t)st.st_size)) == NULL ||
        pread((int)cfd, buf, (size_t)st.st_size, 0) != st.st_size) {
        outbox_fprintf_safe(stderr, "outboxd worker: cannot read the configuration from fd %ld\n",
                            cfd);
        free(buf);
        return EXIT_USAGE;
    }
    close((int)cfd);
    code = outbox_config_deserialize(&cfg, buf, (size_t)st.st_size, err, sizeof(err));
    free(buf);
    if (code != OUTBOX_OK) {
        outbox_fprintf_safe(stderr, "outboxd worker: %s\n", err);
        return EXIT_USAGE;
    }
    if (outbox_log_open((int)cfg.log_level, cfg.log_file, "outboxd") != 0)
        outbox_fprintf_safe(stderr, "outboxd: log_file %s: %s\n", cfg.log_file, strerror(errno));
    if (outbox_stats_attach(&r, instance, err, sizeof(err)) != 0) {
        log_error("%s %s refusing to start: %s", role, lock_id, err);
        outbox_config_free(&cfg);
        return EXIT_USAGE;
    }
    if (strcmp(r->slots[slot].lock_id, lock_id) != 0) {
        log_error("%s %s refusing to start: stats slot %ld belongs to \"%s\"", role, lock_id, slot,
                  r->slots[slot].lock_id);
        outbox_stats_detach(r);
        outbox_config_free(&cfg);
        return EXIT_USAGE;
    }
    if (rfd >= 0)
        fcntl((int)rfd, F_SETFL, fcntl((int)rfd, F_GETFL) | O_NONBLOCK);
    memset(&spec, 0, sizeof(spec));
    spec.cfg = &cfg;
    spec.lock_id = lock_id;
    spec.role = strcmp(role, "keeper") == 0 ? OUTBOX_ROLE_KEEPER : OUTBOX_ROLE_RELAY;
    spec.slot = &r->slots[slot];
    spec.parent = (pid_t)parent;
    spec.release_fd = (int)rfd;
    code = outbox_worker_run(&spec);
    outbox_stats_detach(r);
    outbox_config_free(&cfg);
    return code;
}

static int
cmd_migrate(const cli_t *c, outbox_config_t *cfg)
{
    outbox_pg_options_t o = {.conninfo = cfg->db, .schema = cfg->schema, .table = cfg->table};
    char err[8192]; /* every object missing, and the fix */
    int from = 0, to = 0, rc, v;

    if (c->nargs != 1) {
        outbox_fprintf_safe(stderr, "outboxd: migrate takes no arguments\n");
        return EXIT_USAGE;
    }
    if (c->repair && c->print) {
        char *sql = NULL;

        if (outbox_pg_repair_sql(cfg->schema, cfg->table, &sql) != OUTBOX_OK) {
            outbox_fprintf_safe(stderr, "outboxd: cannot build the repair script\n");
            return 1;
        }
        printf("%s", sql);
        free(sql);
        return 0;
    }
    if (c->repair) {
        rc = outbox_pg_repair(&o, err, sizeof(err));
        if (rc != OUTBOX_OK) {
            outbox_fprintf_safe(stderr, "outboxd: migrate --repair failed: %s\n", err);
            return rc == OUTBOX_ERR_CONFIG ? EXIT_USAGE : 1;
        }
        outbox_fprintf_safe(stdout, "schema %s, table %s: repaired, at version %d\n", cfg->schema,
                            cfg->table, OUTBOX_SCHEMA_VERSION);
        return 0;
    }
    if (c->print) {
        for (v = 1; v <= OUTBOX_SCHEMA_VERSION; v++) {
            char *sql = NULL;

            if (outbox_pg_migration_sql(cfg->schema, cfg->table, v, &sql) != OUTBOX_OK) {
                outbox_fprintf_safe(stderr, "outboxd: cannot build migration %d\n", v);
                return 1;
            }
            printf("-- outbox migration %d\n%s\n", v, sql);
            free(sql);
        }
        return 0;
    }
    rc = outbox_pg_migrate(&o, &from, &to, err, sizeof(err));
    if (rc != OUTBOX_OK) {
        outbox_fprintf_safe(stderr, "outboxd: migrate failed: %s\n", err);
        return rc == OUTBOX_ERR_CONFIG ? EXIT_USAGE : 1;
    }
    if (from == to)
        outbox_fprintf_safe(stdout, "schema %s, table %s: already at version %d\n", cfg->schema,
                            cfg->table, to);
    else
        outbox_fprintf_safe(stdout, "schema %s, table %s: migrated from version %d to %d\n",
                            cfg->schema, cfg->table, from, to);
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

    if (c->nargs == 4 && (strcmp(c->args[1], "add") == 0 || strcmp(c->args[1], "update") == 0)) {
        int update = strcmp(c->args[1], "update") == 0;

        if (c->dupwin != NULL &&
            (outbox_parse_duration(c->dupwin, false, &dup_ms) != 0 || dup_ms < 1000)) {
            outbox_fprintf_safe(
                stderr,
                "outboxd: --duplicate-window: \"%s\" is not a duration of 1s or more (leave "
                "it out for the server's default of 2m)\n",
                c->dupwin);
            return EXIT_USAGE;
        }
        rc = update
                 ? outbox_nats_stream_update(&o, c->args[2], c->args[3], dup_ms, err, sizeof(err))
                 : outbox_nats_stream_add(&o, c->args[2], c->args[3], dup_ms, err, sizeof(err));
        if (rc == OUTBOX_OK)
            outbox_fprintf_safe(stdout, "stream %s %s for subjects %s\n", c->args[2],
                                update ? "updated" : "ready (created, or already there as asked)",
                                c->args[3]);
    } else if (c->nargs == 3 && strcmp(c->args[1], "info") == 0) {
        rc = outbox_nats_stream_info(&o, c->args[2], c->json != 0, stdout, err, sizeof(err));
    } else {
        outbox_fprintf_safe(stderr,
                            "usage: outboxd stream add NAME SUBJECTS [--duplicate-window D]\n"
                            "       outboxd stream update NAME SUBJECTS [--duplicate-window D]\n"
                            "       outboxd stream info NAME [--json]\n");
        return EXIT_USAGE;
    }
    if (rc != OUTBOX_OK) {
        outbox_fprintf_safe(stderr, "outboxd: stream %s: %s\n", c->args[1], err);
        return rc == OUTBOX_ERR_CONFIG || rc == OUTBOX_ERR_INVALID ? EXIT_USAGE : 1;
    }
    return 0;
}

/* The effective configuration, derived values included (the instance
 * name, the host name as machine_id). */
static int
cmd_config(const cli_t *c, outbox_config_t *cfg)
{
    char instance[OUTBOX_STATS_NAME_MAX], host[256];

    if (c->nargs != 1) {
        outbox_fprintf_safe(stderr, "outboxd: config takes no arguments\n");
        return EXIT_USAGE;
    }
    if (derive_instance(c, cfg, instance, sizeof(instance)) != 0)
        return EXIT_USAGE;
    if (cfg->machine_id[0] == '\0' && gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        free(cfg->machine_id);
        cfg->machine_id = strdup(host);
    }
    free(cfg->instance);
    cfg->instance = strdup(instance);
    if (cfg->instance == NULL || cfg->machine_id == NULL) {
        outbox_fprintf_safe(stderr, "outboxd: out of memory\n");
        return 1;
    }
    outbox_config_dump(cfg, stdout);
    return 0;
}

static int
cmd_dead(const cli_t *c, outbox_config_t *cfg)
{
    outbox_dead_query_t q;
    char *end;
    int i;

    memset(&q, 0, sizeof(q));
    if (c->nargs < 2) {
        outbox_fprintf_safe(stderr,
                            "usage: outboxd dead list|show|requeue|purge [ID...] [--topic PATTERN] "
                            "[--error TEXT] [--older-than D] [--newer-than D] [--limit N] [--all] "
                            "[--json]\n");
        return EXIT_USAGE;
    }
    q.conninfo = cfg->db;
    q.schema = cfg->schema;
    q.table = cfg->table;
    for (i = 2; i < c->nargs; i++)
        q.ids[q.nids++] = c->args[i];
    q.topic = c->topic;
    q.error = c->error;
    q.older_than_ms = q.newer_than_ms = -1;
    if ((c->older != NULL && outbox_parse_duration(c->older, false, &q.older_than_ms) != 0) ||
        (c->newer != NULL && outbox_parse_duration(c->newer, false, &q.newer_than_ms) != 0)) {
        outbox_fprintf_safe(stderr,
                            "outboxd: dead: --%s \"%s\" is not a duration (e.g. 30m, 2h, 7d)\n",
                            c->older != NULL && q.older_than_ms < 0 ? "older-than" : "newer-than",
                            c->older != NULL && q.older_than_ms < 0 ? c->older : c->newer);
        return EXIT_USAGE;
    }
    if (c->limit != NULL) {
        q.limit = strtoll(c->limit, &end, 10);
        if (*c->limit == '\0' || *end != '\0' || q.limit < 1 || q.limit > 1000000) {
            outbox_fprintf_safe(stderr,
                                "outboxd: dead: --limit \"%s\" is not a number from 1 to 1000000\n",
                                c->limit);
            return EXIT_USAGE;
        }
    }
    q.all = c->all != 0;
    q.json = c->json != 0;
    return outbox_dead_run(c->args[1], &q, stdout, stderr);
}

int
main(int argc, char **argv)
{
    outbox_config_t cfg;
    cli_t c;
    int code;

    if (argc > 1 && strcmp(argv[1], "worker") == 0)
        return cmd_worker(argc, argv);
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
    } else if (strcmp(c.args[0], "dead") == 0) {
        code = cmd_dead(&c, &cfg);
    } else if (strcmp(c.args[0], "config") == 0) {
        code = cmd_config(&c, &cfg);
    } else {
        outbox_fprintf_safe(stderr, "outboxd: unknown command \"%s\" (see --help)\n", c.args[0]);
        code = EXIT_USAGE;
    }
    outbox_config_free(&cfg);
    return code;
}
