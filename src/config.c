/*
 * Configuration table and loaders. Every key is described once in keys[];
 * the INI file (libinih), the OUTBOX_<KEY> environment, the --<key> flags,
 * --help and the dump all read that table. Strings in the config are owned
 * (strdup) and freed by outbox_config_free().
 */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "config.h"
#include "escape.h"
#include "log.h"
#include "outbox/store.h"
#include "stats.h"

typedef enum { T_STR, T_INT, T_DUR, T_DUR_NEVER, T_DBL, T_ENUM, T_SIZE } key_type_t;

typedef struct key {
    const char *name;
    key_type_t type;
    const char *def;
    const char *unit;
    double min, max;
    bool reloadable;
    size_t off;
    const char *const *enums; /* T_ENUM: value names, index = stored value */
    const char *help;
} cfg_key_t;

static const char *const nats_modes[] = {"jetstream", "core", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const wakeups[] = {"notify", "poll", NULL};
static const char *const off_on[] = {"off", "on", NULL};

#define OFF(f) offsetof(outbox_config_t, f)
#define DAY (24.0 * 3600 * 1000)

static const cfg_key_t keys[] = {
    {"db", T_STR, "", "conninfo", 0, 0, true, OFF(db), NULL,
     "PostgreSQL connection: libpq conninfo or URI (empty: libpq defaults and PG* variables)"},
    {"nats_url", T_STR, "nats://127.0.0.1:4222", "url", 0, 0, true, OFF(nats_url), NULL,
     "NATS server URL(s), comma-separated"},
    {"nats_mode", T_ENUM, "jetstream", "jetstream|core", 0, 0, true, OFF(nats_mode), nats_modes,
     "jetstream: wait for every PubAck, dedupe by record id; core: at-least-once after flush"},
    {"schema", T_STR, "public", "name", 0, 0, true, OFF(schema), NULL,
     "schema of the outbox table"},
    {"table", T_STR, "outbox", "name", 0, 0, true, OFF(table), NULL, "outbox table name"},
    {"machine_id", T_STR, "", "text", 0, 0, true, OFF(machine_id), NULL,
     "prefix of this relay's lock ids (empty: the host name)"},
    {"log_level", T_ENUM, "info", "error|warn|info|debug", 0, 0, true, OFF(log_level), log_levels,
     "least severe level logged"},
    {"log_file", T_STR, "", "path", 0, 0, true, OFF(log_file), NULL,
     "append logs to this file, reopened on SIGUSR1 (empty: stderr)"},
    {"batch_size", T_INT, "500", "records", 1, 10000, true, OFF(batch_size), NULL,
     "records claimed and published per batch"},
    {"batch_bytes", T_SIZE, "1MiB", "bytes", 0, 1024.0 * 1024 * 1024, true, OFF(batch_bytes), NULL,
     "a batch also stops once its bodies reach this size (at least one record; 0: no limit): "
     "bounds a worker's memory"},
    {"process_interval", T_DUR, "1s", "duration", 1, DAY, true, OFF(process_interval_ms), NULL,
     "poll period while the outbox is idle"},
    {"linger", T_DUR, "50ms", "duration", 0, DAY, true, OFF(linger_ms), NULL,
     "after work, re-poll at 1 ms doubling until the gap exceeds this, then go idle (0: off)"},
    {"lock_check_interval", T_DUR, "15s", "duration", 1, DAY, true, OFF(lock_check_interval_ms),
     NULL, "how often locks older than max_lock_time are freed"},
    {"max_lock_time", T_DUR, "1m", "duration", 1, DAY, true, OFF(max_lock_time_ms), NULL,
     "a lock older than this is stale (its relay is presumed dead)"},
    {"cleanup_interval", T_DUR, "1h", "duration", 1, DAY, true, OFF(cleanup_interval_ms), NULL,
     "how often retention runs"},
    {"cleanup_batch", T_INT, "10000", "rows", 1, 1000000, true, OFF(cleanup_batch), NULL,
     "rows deleted per retention statement"},
    {"retention", T_DUR_NEVER, "24h", "duration|never", 0, 3650 * DAY, true, OFF(retention_ms),
     NULL, "DELIVERED rows are deleted this long after delivery (never: kept)"},
    {"dead_retention", T_DUR_NEVER, "30d", "duration|never", 0, 3650 * DAY, true,
     OFF(dead_retention_ms), NULL,
     "dead (MAX_ATTEMPTS_REACHED) rows are deleted this long after dying (never: kept)"},
    {"max_attempts", T_INT, "10", "attempts", 0, 1000000000, true, OFF(max_attempts), NULL,
     "a record is dead after this many failed publishes (0: unlimited)"},
    {"retry_initial", T_DUR, "1s", "duration", 1, DAY, true, OFF(retry_initial_ms), NULL,
     "delay before the first retry"},
    {"retry_multiplier", T_DBL, "2", "factor", 1, 100, true, OFF(retry_multiplier), NULL,
     "each further retry waits this many times longer"},
    {"retry_max", T_DUR, "1m", "duration", 1, DAY, true, OFF(retry_max_ms), NULL,
     "longest retry delay (keep it inside the stream's duplicate window)"},
    {"retry_jitter", T_DBL, "0.2", "fraction", 0, 1, true, OFF(retry_jitter), NULL,
     "retry delays are shortened by a random fraction up to this"},
    {"crash_limit", T_INT, "3", "crashes", 0, 1000, true, OFF(crash_limit), NULL,
     "a record whose worker died this many times while holding it is dead (0: never; else "
     "at least 2)"},
    {"dead_letter_subject", T_STR, "", "subject", 0, 0, true, OFF(dead_letter_subject), NULL,
     "also publish every record made dead to this subject, reason in Outbox-Dead-Reason "
     "(empty: off)"},
    {"per_key_order", T_ENUM, "off", "off|on", 0, 0, true, OFF(per_key_order), off_on,
     "publish records of one key in creation order, with any number of workers"},
    {"publish_timeout", T_DUR, "10s", "duration", 1, 3600 * 1000.0, true, OFF(publish_timeout_ms),
     NULL, "longest wait for a batch's PubAcks (or core flush)"},
    {"connect_timeout", T_DUR, "10s", "duration", 1, 3600 * 1000.0, true, OFF(connect_timeout_ms),
     NULL, "PostgreSQL and NATS connect time-out"},
    {"statement_timeout", T_DUR, "30s", "duration", 0, 3600 * 1000.0, true,
     OFF(statement_timeout_ms), NULL, "PostgreSQL statement_timeout of the relay (0: none)"},
    {"wakeup", T_ENUM, "notify", "notify|poll", 0, 0, true, OFF(wakeup), wakeups,
     "notify: an idle worker LISTENs and producers' inserts wake it (no NOTIFY while busy); "
     "poll: process_interval only"},
    {"workers", T_INT, "1", "processes", 1, OUTBOX_STATS_MAX_WORKERS, true, OFF(workers), NULL,
     "relay worker processes (SIGTTIN/SIGTTOU add or remove one)"},
    {"instance", T_STR, "", "name", 0, 0, false, OFF(instance), NULL,
     "names the stats region /outbox-<instance> and the instance lock (empty: the config "
     "file's name without .conf, else \"default\")"},
    {"stats_group", T_STR, "", "group", 0, 0, false, OFF(stats_group), NULL,
     "group allowed to read the stats region (mode 0640; empty: owner only, 0600)"},
    {"pid_file", T_STR, "", "path", 0, 0, false, OFF(pid_file), NULL,
     "write the supervisor's pid here (empty: none)"},
    {"drain_timeout", T_DUR, "30s", "duration", 1, 3600 * 1000.0, true, OFF(drain_timeout_ms), NULL,
     "on stop, workers still running after this are killed"},
    {"worker_timeout", T_DUR, "90s", "duration", 1000, DAY, true, OFF(worker_timeout_ms), NULL,
     "a worker whose heartbeat is older than this is killed and replaced"},
    {"ready_timeout", T_DUR, "60s", "duration", 1000, DAY, true, OFF(ready_timeout_ms), NULL,
     "a rolling restart gives up (keeping the old worker) if its replacement is not ready by "
     "then"},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(NKEYS <= 64, "ini_ctx_t.seen must cover every key");

static const cfg_key_t *
find_key(const char *name)
{
    size_t i;

    for (i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

int
outbox_parse_duration(const char *s, bool allow_never, int64_t *ms)
{
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    char *end;
    double v;
    size_t i;

    if (allow_never && (strcmp(s, "never") == 0 || strcmp(s, "forever") == 0)) {
        *ms = -1;
        return 0;
    }
    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno != 0 || v < 0 || v != v)
        return -1;
    if (*end == '\0')
        return v == 0 ? (*ms = 0, 0) : -1; /* a bare number must say its unit */
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            v *= units[i].mult;
            if (v > 9.0e15)
                return -1;
            *ms = (int64_t)v;
            return 0;
        }
    }
    return -1;
}

/* "4096", "512KiB", "4MiB", "1GiB" (KiB/MiB/GiB, also K/M/G or KB/MB/GB:
 * all binary). 0 on success. */
static int
parse_size(const char *s, int64_t *out)
{
    static const struct {
        const char *unit;
        int64_t mul;
    } units[] = {{"", 1},          {"B", 1},        {"K", 1 << 10},  {"KB", 1 << 10},
                 {"KiB", 1 << 10}, {"M", 1 << 20},  {"MB", 1 << 20}, {"MiB", 1 << 20},
                 {"G", 1 << 30},   {"GB", 1 << 30}, {"GiB", 1 << 30}};
    char *end;
    long long v;
    size_t i;

    if (!isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || v < 0)
        return -1;
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            if (v > INT64_MAX / units[i].mul)
                return -1;
            *out = v * units[i].mul;
            return 0;
        }
    }
    return -1;
}

static int
set_key(outbox_config_t *cfg, const cfg_key_t *k, const char *value, char *err, size_t errlen)
{
    char *p = (char *)cfg + k->off;
    char *end;
    int64_t iv;
    double dv;
    size_t i;

    switch (k->type) {
    case T_STR: {
        char *copy = strdup(value);

        if (copy == NULL) {
            snprintf(err, errlen, "out of memory");
            return OUTBOX_ERR_NOMEM;
        }
        free(*(char **)p);
        *(char **)p = copy;
        return OUTBOX_OK;
    }
    case T_INT:
        errno = 0;
        iv = strtoll(value, &end, 10);
        if (end == value || *end != '\0' || errno != 0 || isspace((unsigned char)value[0])) {
            snprintf(err, errlen, "%s: \"%s\" is not a whole number", k->name, value);
            return OUTBOX_ERR_CONFIG;
        }
        if ((double)iv < k->min || (double)iv > k->max) {
            snprintf(err, errlen, "%s: %lld is out of range (%.0f to %.0f)", k->name, (long long)iv,
                     k->min, k->max);
            return OUTBOX_ERR_CONFIG;
        }
        *(int64_t *)p = iv;
        return OUTBOX_OK;
    case T_DUR:
    case T_DUR_NEVER:
        if (outbox_parse_duration(value, k->type == T_DUR_NEVER, &iv) != 0) {
            snprintf(err, errlen, "%s: \"%s\" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 7d%s)",
                     k->name, value, k->type == T_DUR_NEVER ? ", or never" : "");
            return OUTBOX_ERR_CONFIG;
        }
        if (iv >= 0 && ((double)iv < k->min || (double)iv > k->max)) {
            snprintf(err, errlen, "%s: %s is out of range (%.0fms to %.0fms)", k->name, value,
                     k->min, k->max);
            return OUTBOX_ERR_CONFIG;
        }
        *(int64_t *)p = iv;
        return OUTBOX_OK;
    case T_SIZE:
        if (parse_size(value, &iv) != 0) {
            snprintf(err, errlen, "%s: \"%s\" is not a size (use e.g. 0, 65536, 512KiB, 4MiB)",
                     k->name, value);
            return OUTBOX_ERR_CONFIG;
        }
        if ((double)iv < k->min || (double)iv > k->max) {
            snprintf(err, errlen, "%s: %s is out of range (0 to 1GiB)", k->name, value);
            return OUTBOX_ERR_CONFIG;
        }
        *(int64_t *)p = iv;
        return OUTBOX_OK;
    case T_DBL:
        errno = 0;
        dv = strtod(value, &end);
        if (end == value || *end != '\0' || errno != 0 || dv != dv ||
            isspace((unsigned char)value[0])) {
            snprintf(err, errlen, "%s: \"%s\" is not a number", k->name, value);
            return OUTBOX_ERR_CONFIG;
        }
        if (dv < k->min || dv > k->max) {
            snprintf(err, errlen, "%s: %g is out of range (%g to %g)", k->name, dv, k->min, k->max);
            return OUTBOX_ERR_CONFIG;
        }
        *(double *)p = dv;
        return OUTBOX_OK;
    case T_ENUM:
        for (i = 0; k->enums[i] != NULL; i++) {
            if (strcmp(value, k->enums[i]) == 0) {
                *(int64_t *)p = (int64_t)i;
                return OUTBOX_OK;
            }
        }
        snprintf(err, errlen, "%s: \"%s\" is not one of %s", k->name, value, k->unit);
        return OUTBOX_ERR_CONFIG;
    }
    return OUTBOX_ERR_CONFIG;
}

int
outbox_config_set(outbox_config_t *cfg, const char *key, const char *value, char *err,
                  size_t errlen)
{
    const cfg_key_t *k = find_key(key);

    if (k == NULL) {
        snprintf(err, errlen, "unknown key \"%s\"", key);
        return OUTBOX_ERR_CONFIG;
    }
    return set_key(cfg, k, value, err, errlen);
}

int
outbox_config_init(outbox_config_t *cfg)
{
    char err[256];
    size_t i;

    memset(cfg, 0, sizeof(*cfg));
    for (i = 0; i < NKEYS; i++) {
        if (set_key(cfg, &keys[i], keys[i].def, err, sizeof(err)) != OUTBOX_OK) {
            outbox_config_free(cfg);
            return OUTBOX_ERR_NOMEM;
        }
    }
    return OUTBOX_OK;
}

void
outbox_config_free(outbox_config_t *cfg)
{
    size_t i;

    for (i = 0; i < NKEYS; i++) {
        if (keys[i].type == T_STR) {
            char **p = (char **)((char *)cfg + keys[i].off);

            free(*p);
            *p = NULL;
        }
    }
}

typedef struct ini_ctx {
    outbox_config_t *cfg;
    const char *file;
    char *err;
    size_t errlen;
    int rc;
    bool seen[64]; /* keys[] index: set in this file already */
} ini_ctx_t;

/* Debian's libinih passes no line number: ini_parse() returns the first
 * failing line, and load() prefixes it. */
static int
on_ini_pair(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *c = user;
    const cfg_key_t *k;
    char why[400];

    if (c->rc != OUTBOX_OK)
        return 0;
    if (section[0] != '\0' && strcmp(section, "outboxd") != 0) {
        snprintf(c->err, c->errlen, "unknown section [%s] (keys go at the top or in [outboxd])",
                 section);
        c->rc = OUTBOX_ERR_CONFIG;
        return 0;
    }
    if (outbox_config_set(c->cfg, name, value, why, sizeof(why)) != OUTBOX_OK) {
        snprintf(c->err, c->errlen, "%s", why);
        c->rc = OUTBOX_ERR_CONFIG;
        return 0;
    }
    k = find_key(name);
    if (k != NULL && (size_t)(k - keys) < sizeof(c->seen)) {
        if (c->seen[k - keys]) {
            snprintf(c->err, c->errlen, "%s is set twice (a typo? only one may stay)", name);
            c->rc = OUTBOX_ERR_CONFIG;
            return 0;
        }
        c->seen[k - keys] = true;
    }
    return 1;
}

static int
load_env(outbox_config_t *cfg, char *err, size_t errlen)
{
    char var[64], why[400];
    const char *v;
    size_t i, j;

    for (i = 0; i < NKEYS; i++) {
        snprintf(var, sizeof(var), "OUTBOX_");
        for (j = 0; keys[i].name[j] != '\0' && 7 + j < sizeof(var) - 1; j++)
            var[7 + j] = (char)toupper((unsigned char)keys[i].name[j]);
        var[7 + j] = '\0';
        if ((v = getenv(var)) == NULL)
            continue;
        if (set_key(cfg, &keys[i], v, why, sizeof(why)) != OUTBOX_OK) {
            snprintf(err, errlen, "environment %s: %s", var, why);
            return OUTBOX_ERR_CONFIG;
        }
    }
    return OUTBOX_OK;
}

int
outbox_config_load(outbox_config_t *cfg, const char *file, char *const *k, char *const *v, int nset,
                   char *err, size_t errlen)
{
    char why[400];
    int rc, i;

    if ((rc = outbox_config_init(cfg)) != OUTBOX_OK) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if (file != NULL) {
        ini_ctx_t c = {cfg, file, err, errlen, OUTBOX_OK, {0}};
        struct stat st;
        int r;

        if (stat(file, &st) == 0 && !S_ISREG(st.st_mode)) {
            snprintf(err, errlen, "config file %s: not a regular file", file);
            rc = OUTBOX_ERR_CONFIG;
            goto fail;
        }
        r = ini_parse(file, on_ini_pair, &c);

        if (r == -1) {
            snprintf(err, errlen, "config file %s: cannot open: %s", file, strerror(errno));
            rc = OUTBOX_ERR_CONFIG;
            goto fail;
        }
        if (c.rc != OUTBOX_OK) {
            snprintf(why, sizeof(why), "%s", err);
            snprintf(err, errlen, "%s:%d: %s", file, r, why);
            rc = c.rc;
            goto fail;
        }
        if (r != 0) {
            snprintf(err, errlen, "%s:%d: syntax error (expected key = value)", file, r);
            rc = OUTBOX_ERR_CONFIG;
            goto fail;
        }
    }
    if ((rc = load_env(cfg, err, errlen)) != OUTBOX_OK)
        goto fail;
    for (i = 0; i < nset; i++) {
        if ((rc = outbox_config_set(cfg, k[i], v[i], why, sizeof(why))) != OUTBOX_OK) {
            char flag[64];
            size_t j;

            for (j = 0; k[i][j] != '\0' && j < sizeof(flag) - 1; j++)
                flag[j] = k[i][j] == '_' ? '-' : k[i][j];
            flag[j] = '\0';
            snprintf(err, errlen, "flag --%s: %s", flag, why);
            goto fail;
        }
    }
    if ((rc = outbox_config_validate(cfg, err, errlen)) != OUTBOX_OK)
        goto fail;
    return OUTBOX_OK;
fail:
    outbox_config_free(cfg);
    return rc;
}

static int
valid_ident(const char *s, size_t max)
{
    size_t n = strlen(s), i;

    if (n == 0 || n > max)
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20)
            return 0;
    return 1;
}

/* Each comma-separated URL: [nats|tls|ws|wss://][user[:pw]@]host[:port],
 * no spaces, port 1-65535. The reason names the URL without its password. */
static int
check_nats_urls(const char *list, char *err, size_t errlen)
{
    char one[512], shown[512];
    const char *p = list, *end, *host, *port, *at;
    size_t n;
    long pn;

    while (*p != '\0') {
        end = strchr(p, ',');
        n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0 || n >= sizeof(one)) {
            snprintf(err, errlen, "nats_url: an empty or over-long URL in the list");
            return -1;
        }
        memcpy(one, p, n);
        one[n] = '\0';
        outbox_config_redact(one, shown, sizeof(shown));
        host = strstr(one, "://");
        if (host != NULL) {
            size_t sl = (size_t)(host - one);

            if (!((sl == 4 && strncmp(one, "nats", 4) == 0) ||
                  (sl == 3 && strncmp(one, "tls", 3) == 0) ||
                  (sl == 2 && strncmp(one, "ws", 2) == 0) ||
                  (sl == 3 && strncmp(one, "wss", 3) == 0))) {
                snprintf(err, errlen,
                         "nats_url: \"%s\": scheme must be nats://, tls://, ws:// or "
                         "wss://",
                         shown);
                return -1;
            }
            host += 3;
        } else {
            host = one;
        }
        if ((at = strrchr(host, '@')) != NULL)
            host = at + 1;
        if (host[0] == '\0' || strpbrk(one, " \t\r\n") != NULL || strchr(host, '/') != NULL) {
            snprintf(err, errlen, "nats_url: \"%s\" is not host[:port] (no spaces or paths)",
                     shown);
            return -1;
        }
        port = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
        if (port == host || (host[0] == '[' && host[1] == ']')) {
            snprintf(err, errlen, "nats_url: \"%s\" has no host", shown);
            return -1;
        }
        if (port != NULL) {
            char *pe;

            port += host[0] == '[' ? 2 : 1;
            errno = 0;
            pn = strtol(port, &pe, 10);
            if (pe == port || *pe != '\0' || errno != 0 || pn < 1 || pn > 65535) {
                snprintf(err, errlen, "nats_url: \"%s\": port must be 1 to 65535", shown);
                return -1;
            }
        }
        p += n;
        if (*p == ',' && *++p == '\0') {
            snprintf(err, errlen, "nats_url: the list ends with a comma");
            return -1;
        }
    }
    return 0;
}

/* A file the daemon writes: its directory must exist and be writable (and
 * the file too, if it is there), so the mistake shows before any start. */
static int
check_file_dir(const char *key, const char *path, char *err, size_t errlen)
{
    char dir[1024], *slash;
    struct stat st;

    if (path[0] == '\0')
        return 0;
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        *(slash == dir ? slash + 1 : slash) = '\0';
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: directory %s does not exist", key, dir);
        return -1;
    }
    if (access(dir, W_OK) != 0 || (access(path, F_OK) == 0 && access(path, W_OK) != 0)) {
        snprintf(err, errlen, "%s: %s is not writable", key, path);
        return -1;
    }
    return 0;
}

int
outbox_config_validate(const outbox_config_t *cfg, char *err, size_t errlen)
{
    outbox_dispatcher_settings_t s;
    size_t i;

    if (cfg->nats_url[0] == '\0') {
        snprintf(err, errlen, "nats_url: must not be empty");
        return OUTBOX_ERR_CONFIG;
    }
    if (check_nats_urls(cfg->nats_url, err, errlen) != 0)
        return OUTBOX_ERR_CONFIG;
    if (!valid_ident(cfg->schema, 63) || outbox_pg_name_problem(cfg->schema) != NULL) {
        snprintf(err, errlen,
                 "schema: must be 1 to 63 bytes of UTF-8 without control "
                 "characters or '$'");
        return OUTBOX_ERR_CONFIG;
    }
    /* "<table>_migrations" must fit PostgreSQL's 63-byte identifiers */
    if (!valid_ident(cfg->table, 52) || outbox_pg_name_problem(cfg->table) != NULL) {
        snprintf(err, errlen,
                 "table: must be 1 to 52 bytes of UTF-8 without control "
                 "characters or '$'");
        return OUTBOX_ERR_CONFIG;
    }
    if (strlen(cfg->machine_id) > 64) {
        snprintf(err, errlen, "machine_id: longer than 64 characters");
        return OUTBOX_ERR_CONFIG;
    }
    for (i = 0; cfg->machine_id[i] != '\0'; i++) {
        if (!isgraph((unsigned char)cfg->machine_id[i])) {
            snprintf(err, errlen, "machine_id: only printable characters without spaces");
            return OUTBOX_ERR_CONFIG;
        }
    }
    if (cfg->instance[0] != '\0') {
        char name[OUTBOX_STATS_NAME_MAX + 16];

        if (strlen(cfg->instance) >= OUTBOX_STATS_NAME_MAX ||
            outbox_stats_shm_name(cfg->instance, name, sizeof(name)) != 0) {
            snprintf(err, errlen,
                     "instance: \"%s\" must be 1 to %d characters of A-Z a-z 0-9 . _ -",
                     cfg->instance, OUTBOX_STATS_NAME_MAX - 1);
            return OUTBOX_ERR_CONFIG;
        }
    }
    /* The longest a healthy worker goes without a heartbeat: a relay pass
     * is a claim, a publish and a mark; a keeper tick a lock check and a
     * retention delete; either may first wait for a reconnect. */
    {
        int64_t busy =
            2 * cfg->statement_timeout_ms + cfg->publish_timeout_ms + cfg->connect_timeout_ms;

        if (cfg->worker_timeout_ms <= busy) {
            snprintf(err, errlen,
                     "worker_timeout (%lldms) must exceed 2 x statement_timeout + "
                     "publish_timeout + connect_timeout (%lldms): a busy worker would be "
                     "killed as hung",
                     (long long)cfg->worker_timeout_ms, (long long)busy);
            return OUTBOX_ERR_CONFIG;
        }
    }
    if (cfg->stats_group[0] != '\0' && getgrnam(cfg->stats_group) == NULL) {
        snprintf(err, errlen, "stats_group: no group \"%s\"", cfg->stats_group);
        return OUTBOX_ERR_CONFIG;
    }
    if (check_file_dir("pid_file", cfg->pid_file, err, errlen) != 0 ||
        check_file_dir("log_file", cfg->log_file, err, errlen) != 0)
        return OUTBOX_ERR_CONFIG;
    if (outbox_pg_check_conninfo(cfg->db, err, errlen) != OUTBOX_OK)
        return OUTBOX_ERR_CONFIG;
    if (cfg->retry_max_ms < cfg->retry_initial_ms) {
        snprintf(err, errlen, "retry_max (%lldms) must be at least retry_initial (%lldms)",
                 (long long)cfg->retry_max_ms, (long long)cfg->retry_initial_ms);
        return OUTBOX_ERR_CONFIG;
    }
    outbox_config_dispatcher_settings(cfg, &s);
    if (outbox_dispatcher_settings_validate(&s, err, errlen) != OUTBOX_OK)
        return OUTBOX_ERR_CONFIG;
    if (cfg->wakeup == 0 && cfg->linger_ms >= cfg->process_interval_ms) {
        snprintf(err, errlen,
                 "linger (%lldms) must be shorter than process_interval (%lldms) with wakeup = "
                 "notify: the worker would never go idle and be woken (shorten linger, or set "
                 "wakeup = poll)",
                 (long long)cfg->linger_ms, (long long)cfg->process_interval_ms);
        return OUTBOX_ERR_CONFIG;
    }
    if (cfg->max_lock_time_ms < 2 * cfg->publish_timeout_ms) {
        snprintf(err, errlen,
                 "max_lock_time (%lldms) must be at least twice publish_timeout (%lldms): a "
                 "batch still publishing would lose its lock",
                 (long long)cfg->max_lock_time_ms, (long long)cfg->publish_timeout_ms);
        return OUTBOX_ERR_CONFIG;
    }
    return OUTBOX_OK;
}

void
outbox_config_dispatcher_settings(const outbox_config_t *cfg, outbox_dispatcher_settings_t *s)
{
    outbox_dispatcher_settings_default(s);
    s->process_interval_ms = cfg->process_interval_ms;
    s->linger_ms = cfg->linger_ms;
    s->lock_check_interval_ms = cfg->lock_check_interval_ms;
    s->max_lock_time_ms = cfg->max_lock_time_ms;
    s->cleanup_interval_ms = cfg->cleanup_interval_ms;
    s->retention_ms = cfg->retention_ms;
    s->dead_retention_ms = cfg->dead_retention_ms;
    s->batch_size = (int32_t)cfg->batch_size;
    s->cleanup_batch = (int32_t)cfg->cleanup_batch;
    s->retry.max_attempts = (int32_t)cfg->max_attempts;
    s->retry.initial_ms = cfg->retry_initial_ms;
    s->retry.multiplier = cfg->retry_multiplier;
    s->retry.max_ms = cfg->retry_max_ms;
    s->retry.jitter = cfg->retry_jitter;
    s->crash_limit = (int32_t)cfg->crash_limit;
    s->per_key_order = cfg->per_key_order != 0;
    s->dead_letter_subject = cfg->dead_letter_subject;
}

const char *
outbox_config_flag_key(const char *flag)
{
    char name[64];
    size_t i;

    if (strcmp(flag, "nats") == 0)
        return "nats_url";
    for (i = 0; flag[i] != '\0' && i < sizeof(name) - 1; i++)
        name[i] = flag[i] == '-' ? '_' : flag[i];
    name[i] = '\0';
    for (i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return keys[i].name;
    return NULL;
}

/* Rewrite uri (a buffer of len bytes) with the value of every password= or
 * sslpassword= query parameter replaced by ****. */
static void
redact_query(char *uri, size_t len)
{
    char tmp[1024];
    const char *p, *end, *v;
    size_t o;

    if ((p = strchr(uri, '?')) == NULL || strlen(uri) >= sizeof(tmp))
        return;
    snprintf(tmp, sizeof(tmp), "%s", uri);
    p = tmp + (p - uri);
    o = (size_t)(p - tmp);
    while (*p != '\0' && o + 1 < len) {
        uri[o++] = *p++; /* '?' or '&' */
        end = strchr(p, '&');
        if (end == NULL)
            end = p + strlen(p);
        v = memchr(p, '=', (size_t)(end - p));
        if (v != NULL && ((v - p == 8 && strncmp(p, "password", 8) == 0) ||
                          (v - p == 11 && strncmp(p, "sslpassword", 11) == 0)))
            o += (size_t)snprintf(uri + o, len - o, "%.*s=****", (int)(v - p), p);
        else
            o += (size_t)snprintf(uri + o, len - o, "%.*s", (int)(end - p), p);
        if (o >= len)
            o = len - 1;
        p = end;
    }
    uri[o] = '\0';
}

void
outbox_config_redact(const char *in, char *out, size_t outlen)
{
    const char *scheme = strstr(in, "://");
    size_t o = 0;

    if (outlen == 0)
        return;
    if (scheme != NULL) {
        /* URI: scheme://user:password@host... */
        const char *auth = scheme + 3, *at = strchr(auth, '@'), *colon;

        colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon != NULL)
            snprintf(out, outlen, "%.*s:****%s", (int)(colon - in), in, at);
        else
            snprintf(out, outlen, "%s", in);
        redact_query(out, outlen);
        return;
    }
    /* conninfo: key = value pairs; mask password's value */
    while (*in != '\0' && o + 1 < outlen) {
        if (strncmp(in, "password", 8) == 0 &&
            (o == 0 || out[o - 1] == ' ' ||
             (o >= 3 && strncmp(out + o - 3, "ssl", 3) == 0 && (o == 3 || out[o - 4] == ' ')))) {
            const char *p = in + 8;

            while (*p == ' ')
                p++;
            if (*p == '=') {
                p++;
                while (*p == ' ')
                    p++;
                if (*p == '\'') {
                    for (p++; *p != '\0' && *p != '\''; p++)
                        if (*p == '\\' && p[1] != '\0')
                            p++;
                    if (*p == '\'')
                        p++;
                } else {
                    while (*p != '\0' && *p != ' ')
                        p++;
                }
                o += (size_t)snprintf(out + o, outlen - o, "password=****");
                if (o >= outlen)
                    o = outlen - 1;
                in = p;
                continue;
            }
        }
        out[o++] = *in++;
    }
    out[o] = '\0';
}

static void
format_value(const outbox_config_t *cfg, const cfg_key_t *k, bool redact, char *buf, size_t len)
{
    const char *p = (const char *)cfg + k->off;
    int64_t iv;

    switch (k->type) {
    case T_STR:
        if (redact && (k->off == OFF(db) || k->off == OFF(nats_url)))
            outbox_config_redact(*(char *const *)p, buf, len);
        else
            snprintf(buf, len, "%s", *(char *const *)p);
        break;
    case T_INT: snprintf(buf, len, "%lld", (long long)*(const int64_t *)p); break;
    case T_SIZE:
        iv = *(const int64_t *)p;
        if (iv != 0 && iv % (1 << 30) == 0)
            snprintf(buf, len, "%lldGiB", (long long)(iv >> 30));
        else if (iv != 0 && iv % (1 << 20) == 0)
            snprintf(buf, len, "%lldMiB", (long long)(iv >> 20));
        else if (iv != 0 && iv % (1 << 10) == 0)
            snprintf(buf, len, "%lldKiB", (long long)(iv >> 10));
        else
            snprintf(buf, len, "%lld", (long long)iv);
        break;
    case T_DUR:
    case T_DUR_NEVER:
        iv = *(const int64_t *)p;
        if (iv < 0)
            snprintf(buf, len, "never");
        else if (iv % 86400000 == 0 && iv != 0)
            snprintf(buf, len, "%lldd", (long long)(iv / 86400000));
        else if (iv % 3600000 == 0 && iv != 0)
            snprintf(buf, len, "%lldh", (long long)(iv / 3600000));
        else if (iv % 60000 == 0 && iv != 0)
            snprintf(buf, len, "%lldm", (long long)(iv / 60000));
        else if (iv % 1000 == 0)
            snprintf(buf, len, "%llds", (long long)(iv / 1000));
        else
            snprintf(buf, len, "%lldms", (long long)iv);
        break;
    case T_DBL: snprintf(buf, len, redact ? "%g" : "%.17g", *(const double *)p); break;
    case T_ENUM: snprintf(buf, len, "%s", k->enums[*(const int64_t *)p]); break;
    }
}

void
outbox_config_dump(const outbox_config_t *cfg, FILE *out)
{
    char buf[1024];
    size_t i;

    for (i = 0; i < NKEYS; i++) {
        format_value(cfg, &keys[i], true, buf, sizeof(buf));
        outbox_fprintf_safe(out, "%s = %s\n", keys[i].name, buf);
    }
}

int
outbox_config_serialize(const outbox_config_t *cfg, char **out, size_t *len)
{
    char *buf = NULL, *tmp;
    size_t used = 0, cap = 0, i, n, klen;
    const char *p;
    char val[64];

    for (i = 0; i < NKEYS; i++) {
        if (keys[i].type == T_STR) {
            p = *(char *const *)((const char *)cfg + keys[i].off);
        } else {
            format_value(cfg, &keys[i], false, val, sizeof(val));
            p = val;
        }
        klen = strlen(keys[i].name);
        n = klen + 1 + strlen(p) + 1;
        if (used + n > cap) {
            cap = (used + n) * 2;
            if ((tmp = realloc(buf, cap)) == NULL) {
                free(buf);
                return OUTBOX_ERR_NOMEM;
            }
            buf = tmp;
        }
        memcpy(buf + used, keys[i].name, klen);
        buf[used + klen] = '=';
        memcpy(buf + used + klen + 1, p, strlen(p) + 1);
        used += n;
    }
    *out = buf;
    *len = used;
    return OUTBOX_OK;
}

int
outbox_config_deserialize(outbox_config_t *cfg, const char *buf, size_t len, char *err,
                          size_t errlen)
{
    char key[64], why[400];
    const char *p = buf, *end = buf + len, *eq, *nul;
    int rc;

    if ((rc = outbox_config_init(cfg)) != OUTBOX_OK) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    while (p < end) {
        nul = memchr(p, '\0', (size_t)(end - p));
        eq = nul ? memchr(p, '=', (size_t)(nul - p)) : NULL;
        if (eq == NULL || (size_t)(eq - p) >= sizeof(key)) {
            snprintf(err, errlen, "configuration from the supervisor is malformed");
            rc = OUTBOX_ERR_CONFIG;
            goto fail;
        }
        memcpy(key, p, (size_t)(eq - p));
        key[eq - p] = '\0';
        if ((rc = outbox_config_set(cfg, key, eq + 1, why, sizeof(why))) != OUTBOX_OK) {
            snprintf(err, errlen, "configuration from the supervisor: %s", why);
            goto fail;
        }
        p = nul + 1;
    }
    if ((rc = outbox_config_validate(cfg, err, errlen)) != OUTBOX_OK)
        goto fail;
    return OUTBOX_OK;
fail:
    outbox_config_free(cfg);
    return rc;
}

int
outbox_config_copy(outbox_config_t *dst, const outbox_config_t *src, char *err, size_t errlen)
{
    char *buf;
    size_t len;
    int rc;

    if (outbox_config_serialize(src, &buf, &len) != OUTBOX_OK) {
        snprintf(err, errlen, "out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    rc = outbox_config_deserialize(dst, buf, len, err, errlen);
    free(buf);
    return rc;
}

void
outbox_config_restart_keys(const outbox_config_t *a, const outbox_config_t *b, char *buf,
                           size_t len)
{
    char va[1024], vb[1024];
    size_t i, o = 0;

    buf[0] = '\0';
    for (i = 0; i < NKEYS; i++) {
        if (keys[i].reloadable)
            continue;
        format_value(a, &keys[i], false, va, sizeof(va));
        format_value(b, &keys[i], false, vb, sizeof(vb));
        if (strcmp(va, vb) != 0 && o < len)
            o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", keys[i].name);
    }
}

const char *
outbox_config_key_name(size_t i)
{
    return i < NKEYS ? keys[i].name : NULL;
}

void
outbox_config_usage(FILE *out)
{
    char flag[64], env[64];
    size_t i, j;

    fprintf(out, "Configuration keys (file: key = value; environment: OUTBOX_<KEY>; "
                 "flag: --<key-with-dashes> VALUE):\n");
    for (i = 0; i < NKEYS; i++) {
        for (j = 0; keys[i].name[j] != '\0'; j++) {
            flag[j] = keys[i].name[j] == '_' ? '-' : keys[i].name[j];
            env[j] = (char)toupper((unsigned char)keys[i].name[j]);
        }
        flag[j] = env[j] = '\0';
        fprintf(out, "  %-20s %-16s default %-22s %s%s\n      --%s, OUTBOX_%s\n", keys[i].name,
                keys[i].unit, keys[i].def[0] ? keys[i].def : "(empty)", keys[i].help,
                keys[i].reloadable ? "" : " [restart]", flag, env);
    }
}
