/*
 * `outboxd dead`: the operator's view of dead records (state
 * MAX_ATTEMPTS_REACHED): list, show, requeue, purge, selected by ids or by
 * filters. Each action is one statement; requeue and purge touch dead rows
 * only, never a pending or delivered one.
 */
#ifndef OUTBOX_DEAD_PG_H
#define OUTBOX_DEAD_PG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define OUTBOX_DEAD_MAX_IDS 1000

typedef struct outbox_dead_query {
    const char *conninfo, *schema, *table;
    const char *ids[OUTBOX_DEAD_MAX_IDS]; /* record ids (any filter below also applies) */
    int nids;
    const char *topic;     /* NATS subject pattern ('*' one token, '>' the rest); NULL any */
    const char *error;     /* substring of last_error, any case; NULL any */
    int64_t older_than_ms; /* died before now() - this; < 0 any */
    int64_t newer_than_ms; /* died at or after now() - this; < 0 any */
    int64_t limit;         /* list: rows shown (0: 100) */
    bool all;              /* requeue/purge with neither ids nor filters */
    bool json;
} outbox_dead_query_t;

/*
 * Run action "list", "show", "requeue" or "purge"; output on out, errors
 * (one line naming the culprit) on err. Returns an exit code: 0 ok, 1
 * database failure or a given id not acted on (not a dead record, or not
 * selected by the filters; err names them, the others are still acted on),
 * 2 usage (unknown action, bad id or pattern, requeue or purge of
 * everything without --all). Filters or --all matching nothing: 0.
 */
int outbox_dead_run(const char *action, const outbox_dead_query_t *q, FILE *out, FILE *err);

/* The POSIX regex matching NATS subject pattern p into buf; false when p is
 * not a valid pattern. Exposed for tests. */
bool outbox_dead_topic_regex(const char *p, char *buf, size_t len);

#endif
