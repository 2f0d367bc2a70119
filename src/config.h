/*
 * outboxd configuration: one table of keys (name, type, default, unit,
 * limits, reloadable, help) drives the INI parser, environment, flags,
 * --help and validation. Precedence: flags > environment > file > defaults.
 * A configuration is validated whole before anything uses it.
 */
#ifndef OUTBOX_CONFIG_H
#define OUTBOX_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "outbox/broker.h"
#include "outbox/dispatcher.h"

typedef struct outbox_config {
    char *db;
    char *nats_url;
    int64_t nats_mode; /* outbox_nats_mode_t */
    char *schema;
    char *table;
    char *machine_id;
    int64_t log_level; /* log.h levels */
    char *log_file;

    int64_t batch_size;
    int64_t batch_bytes;
    int64_t process_interval_ms;
    int64_t linger_ms;
    int64_t lock_check_interval_ms;
    int64_t max_lock_time_ms;
    int64_t cleanup_interval_ms;
    int64_t cleanup_batch;
    int64_t retention_ms;
    int64_t dead_retention_ms;
    int64_t max_attempts;
    int64_t retry_initial_ms;
    double retry_multiplier;
    int64_t retry_max_ms;
    double retry_jitter;

    int64_t crash_limit;
    char *dead_letter_subject;
    int64_t per_key_order; /* 0 off, 1 on */
    int64_t publish_timeout_ms;
    int64_t connect_timeout_ms;
    int64_t statement_timeout_ms;
    int64_t wakeup; /* 0 notify, 1 poll */

    /* supervisor and worker pool */
    int64_t workers;
    char *instance; /* stats region and instance lock name; "" = derived */
    char *stats_group;
    char *pid_file;
    int64_t drain_timeout_ms;
    int64_t worker_timeout_ms; /* heartbeat older than this: killed and replaced */
    int64_t ready_timeout_ms;  /* a rolling replacement must be ready within this */
} outbox_config_t;

/* Defaults into cfg (which must be zeroed or freed before). NOMEM only. */
int outbox_config_init(outbox_config_t *cfg);
void outbox_config_free(outbox_config_t *cfg);

/*
 * Build a configuration: defaults, then file (NULL: none), then the
 * OUTBOX_* environment, then the flag settings (pairs key, value; key as
 * in the file). On failure writes one line naming the key (and file line)
 * to err and returns OUTBOX_ERR_CONFIG; cfg is then freed.
 */
int outbox_config_load(outbox_config_t *cfg, const char *file, char *const *keys,
                       char *const *values, int nset, char *err, size_t errlen);

/* Set one key from text (as in the file). OUTBOX_ERR_CONFIG if the key is
 * unknown or the value invalid. */
int outbox_config_set(outbox_config_t *cfg, const char *key, const char *value, char *err,
                      size_t errlen);

/* Cross-key checks (also run by load). */
int outbox_config_validate(const outbox_config_t *cfg, char *err, size_t errlen);

/* Map a flag name ("batch-size", "db", "nats") to its key, NULL if none. */
const char *outbox_config_flag_key(const char *flag);
/* Does the key take a value? (all do; kept for flag parsing symmetry) */

void outbox_config_usage(FILE *out);          /* every key: default, unit, env, help */
const char *outbox_config_key_name(size_t i); /* i-th key of the table, NULL past the end */
void outbox_config_dump(const outbox_config_t *cfg, FILE *out); /* effective, secrets masked */

void outbox_config_dispatcher_settings(const outbox_config_t *cfg, outbox_dispatcher_settings_t *s);

/*
 * The effective configuration as "key=value\0" records, unredacted (it
 * carries the supervisor's validated configuration to a worker it execs).
 * *out is malloc'd; caller frees. OUTBOX_OK or OUTBOX_ERR_NOMEM.
 */
int outbox_config_serialize(const outbox_config_t *cfg, char **out, size_t *len);
/* Rebuild a configuration from serialize()'s output: defaults, then each
 * record, then validation. No environment is read. */
int outbox_config_deserialize(outbox_config_t *cfg, const char *buf, size_t len, char *err,
                              size_t errlen);
/* Deep copy (dst must be zeroed or freed before). */
int outbox_config_copy(outbox_config_t *dst, const outbox_config_t *src, char *err, size_t errlen);
/* Keys whose change needs a restart and differ between a and b: their names,
 * comma-separated, into buf ("" if none). */
void outbox_config_restart_keys(const outbox_config_t *a, const outbox_config_t *b, char *buf,
                                size_t len);

/* Copy conninfo/URL text with any password replaced by "****". */
void outbox_config_redact(const char *in, char *out, size_t outlen);

/* Parse "250ms", "5s", "2m", "1h", "7d", "0"; with allow_never also
 * "never"/"forever" (-1). 0 on success. */
int outbox_parse_duration(const char *s, bool allow_never, int64_t *ms);

#endif
