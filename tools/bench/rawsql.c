/*
 * Copies of the relay's statements. If src/store_pg.c changes its claim or
 * mark, change these too: `raw` is only a ceiling for the relay when it
 * runs the same SQL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uuid/uuid.h>

#include "rawsql.h"
#include "util.h"

#define TEXTOID 25
#define INT4OID 23
#define UUIDARRAYOID 2951

#define COLS                                                                                       \
    "id, seq, topic, msg_key, headers, body, state, attempts, created_on, locked_on, "             \
    "processed_on, last_attempt_on, locked_by, last_error"

/* %1$s is the quoted table (store_pg.c's @T@). */
static const char claim_fmt[] =
    "WITH c AS MATERIALIZED ("
    " SELECT id FROM %1$s WHERE state = 0 AND locked_by IS NULL"
    " AND next_attempt_at <= now() ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " u AS (UPDATE %1$s AS t SET locked_by = $1, locked_on = now() FROM c"
    " WHERE t.id = c.id RETURNING t.*)"
    " SELECT " COLS " FROM u ORDER BY seq";
static const char mark_fmt[] = "UPDATE %1$s SET state = 1, processed_on = now(), locked_by = NULL,"
                               " locked_on = NULL, attempts = attempts + $2, last_attempt_on ="
                               " CASE WHEN $2 > 0 THEN now() ELSE last_attempt_on END"
                               " WHERE id = ANY($1) AND state = 0";

static int
prepare(PGconn *c, const char *name, const char *fmt, const char *qtable, const Oid *types)
{
    size_t len = strlen(fmt) + 2 * strlen(qtable) + 1;
    char *sql = malloc(len);
    PGresult *r;
    int ok;

    if (sql == NULL) {
        bench_err("out of memory");
        return -1;
    }
    snprintf(sql, len, fmt, qtable);
    r = PQprepare(c, name, sql, 2, types);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        bench_err("PostgreSQL: prepare %s: %s", name, PQresultErrorMessage(r));
    PQclear(r);
    free(sql);
    return ok ? 0 : -1;
}

int
rawsql_prepare(PGconn *c, const char *qtable)
{
    static const Oid claim_types[2] = {TEXTOID, INT4OID};
    static const Oid mark_types[2] = {UUIDARRAYOID, INT4OID};

    if (prepare(c, "raw_claim", claim_fmt, qtable, claim_types) != 0)
        return -1;
    return prepare(c, "raw_mark", mark_fmt, qtable, mark_types);
}

int
rawsql_claim(PGconn *c, const char *lock_id, long limit, PGresult **out)
{
    char lim[24];
    const char *values[2] = {lock_id, lim};
    PGresult *r;

    snprintf(lim, sizeof(lim), "%ld", limit);
    r = PQexecPrepared(c, "raw_claim", 2, values, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || (PQntuples(r) > 0 && PQnfields(r) != RAW_C_NCOLS)) {
        bench_err("PostgreSQL: claim: %s", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    *out = r;
    return 0;
}

void
rawsql_id(const PGresult *claimed, int i, char out[37])
{
    uuid_t u;

    memcpy(u, PQgetvalue(claimed, i, RAW_C_ID), 16);
    uuid_unparse_lower(u, out);
}

int
rawsql_mark(PGconn *c, const PGresult *claimed)
{
    int n = PQntuples(claimed), i, rc = -1;
    char *ids = malloc((size_t)n * 37 + 2), *o;
    const char *values[2] = {NULL, "0"};
    PGresult *r = NULL;

    if (ids == NULL) {
        bench_err("out of memory");
        return -1;
    }
    o = ids;
    *o++ = '{';
    for (i = 0; i < n; i++) {
        rawsql_id(claimed, i, o);
        o += 36;
        *o++ = i + 1 < n ? ',' : '}';
    }
    *o = '\0';
    values[0] = ids;
    r = PQexecPrepared(c, "raw_mark", 2, values, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        bench_err("PostgreSQL: mark delivered: %s", PQresultErrorMessage(r));
        goto done;
    }
    if (strtol(PQcmdTuples(r), NULL, 10) != n) {
        bench_err("PostgreSQL: mark delivered changed %s rows of %d claimed", PQcmdTuples(r), n);
        goto done;
    }
    rc = 0;
done:
    PQclear(r);
    free(ids);
    return rc;
}
