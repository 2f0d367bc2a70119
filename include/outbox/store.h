/*
 * The Store interface: where records live. Every operation is one statement
 * (one round trip). Lock times are the database's now(), never the caller's
 * clock. An implementation embeds outbox_store_t as its first member and
 * writes a one-line reason into err when an operation fails.
 */
#ifndef OUTBOX_STORE_H
#define OUTBOX_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "outbox/outbox.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum outbox_mark_kind {
    OUTBOX_MARK_DELIVERED = 0, /* state DELIVERED, processed_on = now(), lock cleared */
    OUTBOX_MARK_RETRY,         /* stays PENDING, lock cleared, next_attempt_at = now()+delay */
    OUTBOX_MARK_DEAD,          /* state MAX_ATTEMPTS_REACHED, processed_on = now() */
    OUTBOX_MARK_RELEASE        /* lock cleared, nothing else changes */
} outbox_mark_kind_t;

typedef struct outbox_mark {
    const char *id; /* borrowed */
    outbox_mark_kind_t kind;
    int32_t charge;         /* added to attempts (and last_attempt_on = now() if > 0) */
    int64_t retry_delay_ms; /* RETRY only */
    const char *error;      /* RETRY/DEAD: stored in last_error; NULL keeps it */
} outbox_mark_t;

typedef struct outbox_store outbox_store_t;

typedef struct outbox_store_ops {
    /* Lock and return up to limit PENDING, unlocked, due (next_attempt_at <=
     * now()) records, oldest seq first, for lock_id: the lock lasts until
     * mark() (or clear_locks_by_lock_id) for this lock id. Never more than
     * limit whatever the plan. A record with a crash count is returned
     * alone. With per-key ordering, a keyed record only with every pending
     * record of its key before it. Resets and fills out. */
    int (*claim)(outbox_store_t *s, const char *lock_id, int limit, outbox_batch_t *out);
    /* Records currently locked by lock_id (any state), oldest first. */
    int (*get_by_lock_id)(outbox_store_t *s, const char *lock_id, outbox_batch_t *out);
    /* Apply n marks in one statement. DELIVERED applies to a PENDING row
     * whoever holds it (the publish was acknowledged); the other kinds only
     * where locked_by = lock_id still holds. *updated = rows changed. */
    int (*mark)(outbox_store_t *s, const char *lock_id, const outbox_mark_t *marks, size_t n,
                int64_t *updated);
    /* Clear locks whose locked_on is older than now() - max_lock_ms. */
    int (*clear_stale_locks)(outbox_store_t *s, int64_t max_lock_ms, int64_t *released);
    /* Clear every lock held by lock_id (filters on locked_by). */
    int (*clear_locks_by_lock_id)(outbox_store_t *s, const char *lock_id, int64_t *released);
    /* The relay holding lock_id died (crash, kill) with records of seqs
     * [lo, hi] in flight (0, 0: none known): free its records and count
     * the crash: one more against a record that was alone in flight (lo ==
     * hi), else each becomes a suspect (count at least 1), claimed alone
     * from then on (see claim). A record reaching crash_limit (> 0)
     * becomes dead, last_error "worker died while processing (N times)".
     * Its records are those locked_by lock_id, and of [lo, hi] those
     * pending that no live relay holds. *parked = records made dead. */
    int (*release_crashed)(outbox_store_t *s, const char *lock_id, int64_t lo, int64_t hi,
                           int crash_limit, int64_t *released, int64_t *parked);
    /* Delete at most limit rows: DELIVERED ones processed before now() -
     * retention_ms, and dead ones before now() - dead_retention_ms. A
     * negative retention keeps that kind forever. Never a PENDING row. */
    int (*purge)(outbox_store_t *s, int64_t retention_ms, int64_t dead_retention_ms, int limit,
                 int64_t *deleted);
    void (*destroy)(outbox_store_t *s);
} outbox_store_ops_t;
/* Count out-parameters (updated, released, deleted) may be NULL. */

struct outbox_store {
    const outbox_store_ops_t *ops;
    char err[512];       /* last failure, one line */
    uint64_t reconnects; /* connections the implementation re-made after a loss */
};

/* Convenience wrappers: s->ops->x(s, ...). */
int outbox_store_claim(outbox_store_t *s, const char *lock_id, int limit, outbox_batch_t *out);
int outbox_store_get_by_lock_id(outbox_store_t *s, const char *lock_id, outbox_batch_t *out);
int outbox_store_mark(outbox_store_t *s, const char *lock_id, const outbox_mark_t *marks, size_t n,
                      int64_t *updated);
int outbox_store_clear_stale_locks(outbox_store_t *s, int64_t max_lock_ms, int64_t *released);
int outbox_store_clear_locks_by_lock_id(outbox_store_t *s, const char *lock_id, int64_t *released);
int outbox_store_release_crashed(outbox_store_t *s, const char *lock_id, int64_t lo, int64_t hi,
                                 int crash_limit, int64_t *released, int64_t *parked);
int outbox_store_purge(outbox_store_t *s, int64_t retention_ms, int64_t dead_retention_ms,
                       int limit, int64_t *deleted);
void outbox_store_destroy(outbox_store_t *s); /* NULL ok */

/* ---- PostgreSQL implementation (libpq) ---- */

typedef struct outbox_pg_options {
    const char *conninfo;         /* libpq conninfo or URI; borrowed */
    const char *schema;           /* NULL = "public" */
    const char *table;            /* NULL = "outbox" */
    int statement_timeout_ms;     /* 0 = server default */
    bool per_key_order;           /* claim whole per-key prefixes, marked in locked_by (see
                                     claim); else a claim is the row locks of a transaction
                                     held open until the mark commits it */
    bool delete_delivered;        /* a DELIVERED mark deletes the row (retention 0) */
    int64_t batch_bytes;          /* transaction claim: a batch stops once its bodies reach
                                     this many bytes (at least one record); 0 = count only */
    int idle_tx_timeout_ms;       /* idle_in_transaction_session_timeout: frees the claim of
                                     a relay whose host vanished; 0 = server default */
    const char *application_name; /* NULL: "outboxd" (the keeper finds a dead relay's
                                     sessions by it; a conninfo setting wins) */
} outbox_pg_options_t;

/* Connect and check the schema version. The store reconnects by itself on
 * the next call after a lost connection. Errors: OUTBOX_ERR_UNREACHABLE,
 * OUTBOX_ERR_SCHEMA (not migrated), OUTBOX_ERR_CONFIG (bad conninfo/names),
 * OUTBOX_ERR_NOMEM; err (errlen bytes) gets the reason, never a password. */
int outbox_pg_store_create(outbox_store_t **out, const outbox_pg_options_t *opt, char *err,
                           size_t errlen);

/* NULL when name can be the schema or table name, else why not: any
 * identifier PostgreSQL takes goes (it is quoted), but for '$' (outbox's
 * functions are dollar-quoted), control characters and bytes that are not
 * UTF-8. */
const char *outbox_pg_name_problem(const char *name);

/* Install or upgrade the schema to OUTBOX_SCHEMA_VERSION, idempotent and safe
 * to run concurrently (advisory lock). from and to report the versions.
 * OUTBOX_ERR_SCHEMA when <table>_migrations records a version but the table
 * or its enqueue function was dropped; err says how to reinstall. */
int outbox_pg_migrate(const outbox_pg_options_t *opt, int *from, int *to, char *err, size_t errlen);

/* Create again what was dropped by hand of the latest schema version
 * beside the table (functions, the guard trigger, dropped or disabled,
 * indexes, <table>_listeners, <table>_idle, <table>_migrations and its
 * versions); what is there is left as it is, the table and its rows are
 * never touched. One transaction; the trigger is re-created, which locks
 * out inserts for that moment. OUTBOX_ERR_SCHEMA when the table is
 * missing or not at the latest version (migrate is the fix); err says so. */
int outbox_pg_repair(const outbox_pg_options_t *opt, char *err, size_t errlen);

/* What `outboxd migrate` checks before applying anything, alone: OUTBOX_OK,
 * or OUTBOX_ERR_SCHEMA with every object dropped or disabled by hand and
 * the fix in err (also when versions are still to apply: OUTBOX_OK). */
int outbox_pg_schema_check(const outbox_pg_options_t *opt, char *err, size_t errlen);

/* The SQL outbox_pg_repair() runs, for schema/table (NULL = defaults).
 * *sql_out is malloc'd; caller frees. */
int outbox_pg_repair_sql(const char *schema, const char *table, char **sql_out);

/* The SQL of migration `version` for schema/table (NULL = defaults), for
 * DBAs who apply migrations themselves. *sql_out is malloc'd; caller frees.
 * OUTBOX_OK, OUTBOX_ERR_CONFIG (bad name or version), OUTBOX_ERR_NOMEM. */
int outbox_pg_migration_sql(const char *schema, const char *table, int version, char **sql_out);

/*
 * Wake-up listener (PostgreSQL): a dedicated connection that LISTENs on the
 * table's channel. arm() registers lock_id as an idle listener and raises
 * the table's idle flag, so that producers' inserts notify (calling it again
 * while armed re-asserts the flag); disarm() withdraws it, so a busy relay
 * costs producers no NOTIFY. fd() is the socket to poll (-1 when
 * disconnected); when it is readable, consume() says whether a notification
 * came. Any failure (OUTBOX_ERR_UNREACHABLE...) means: destroy and create
 * anew later.
 */
typedef struct outbox_pg_waker outbox_pg_waker_t;
int outbox_pg_waker_create(outbox_pg_waker_t **out, const outbox_pg_options_t *opt,
                           const char *lock_id, char *err, size_t errlen);
int outbox_pg_waker_fd(const outbox_pg_waker_t *w);
int outbox_pg_waker_arm(outbox_pg_waker_t *w, char *err, size_t errlen);
int outbox_pg_waker_disarm(outbox_pg_waker_t *w, char *err, size_t errlen);
int outbox_pg_waker_consume(outbox_pg_waker_t *w, bool *notified, char *err, size_t errlen);
bool outbox_pg_waker_armed(const outbox_pg_waker_t *w);
/* Withdraws the registration (best effort) and closes. NULL ok. The lock
 * check (clear_stale_locks) deletes registrations whose session is gone,
 * and clear_locks_by_lock_id that of the lock id. */
void outbox_pg_waker_destroy(outbox_pg_waker_t *w);

/* The application_name the relay with lock id lock_id connects with
 * ("outboxd <lock id>", cut to what PostgreSQL keeps): the keeper ends the
 * sessions of a relay that died by it. */
#define OUTBOX_PG_APPNAME_MAX 63
void outbox_pg_appname(const char *lock_id, char out[OUTBOX_PG_APPNAME_MAX + 1]);

/* OUTBOX_OK if libpq can parse conninfo (a conninfo string or URI; "" is
 * fine), else OUTBOX_ERR_CONFIG with a reason that quotes none of it. */
int outbox_pg_check_conninfo(const char *conninfo, char *err, size_t errlen);

/* Quote an identifier for SQL ("a""b"); returns NULL on NOMEM; caller frees. */
char *outbox_pg_quote_ident(const char *name);

#ifdef __cplusplus
}
#endif
#endif
