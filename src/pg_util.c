/*
 * Helpers shared by the libpq files: identifier quoting, the relay's
 * connection defaults, SQLSTATE -> status mapping and one-line error text.
 * Error text comes from the server or libpq, never from the conninfo, so it
 * cannot carry a password.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"
#include "pg_util.h"

char *
outbox_pg_quote_ident(const char *name)
{
    size_t len = 2, i;
    char *q, *p;

    for (i = 0; name[i] != '\0'; i++)
        len += name[i] == '"' ? 2 : 1;
    if ((q = malloc(len + 1)) == NULL)
        return NULL;
    p = q;
    *p++ = '"';
    for (i = 0; name[i] != '\0'; i++) {
        if (name[i] == '"')
            *p++ = '"';
        *p++ = name[i];
    }
    *p++ = '"';
    *p = '\0';
    return q;
}

char *
outbox_pg_qualify(const char *schema, const char *table, const char *suffix)
{
    char *qs = NULL, *qt = NULL, *raw = NULL, *out = NULL;
    size_t len;

    len = strlen(table) + strlen(suffix) + 1;
    if ((raw = malloc(len)) == NULL)
        goto done;
    snprintf(raw, len, "%s%s", table, suffix);
    if ((qt = outbox_pg_quote_ident(raw)) == NULL)
        goto done;
    if (schema == NULL) {
        out = qt;
        qt = NULL;
        goto done;
    }
    if ((qs = outbox_pg_quote_ident(schema)) == NULL)
        goto done;
    len = strlen(qs) + strlen(qt) + 2;
    if ((out = malloc(len)) != NULL)
        snprintf(out, len, "%s.%s", qs, qt);
done:
    free(qs);
    free(qt);
    free(raw);
    return out;
}

const char *
outbox_pg_name_problem(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t len = strlen(name), i, n;

    for (i = 0; i < len; i += n) {
        if ((n = outbox_utf8_len(p + i, len - i)) == 0)
            return "is not valid UTF-8";
        if (p[i] < 0x20 || p[i] == 0x7F || (n == 2 && p[i] == 0xC2 && p[i + 1] < 0xA0))
            return "contains a control character";
        if (p[i] == '$')
            return "contains '$' (outbox's functions are dollar-quoted)";
    }
    return NULL;
}

int
outbox_pg_names_init(outbox_pg_names_t *n, const char *schema, const char *table, char *err,
                     size_t errlen)
{
    const char *bad, *why;

    memset(n, 0, sizeof(*n));
    n->schema = schema != NULL ? schema : OUTBOX_PG_DEFAULT_SCHEMA;
    n->table = table != NULL ? table : OUTBOX_PG_DEFAULT_TABLE;
    if (n->schema[0] == '\0' || strlen(n->schema) > OUTBOX_PG_SCHEMA_MAX) {
        snprintf(err, errlen, "schema name must be 1 to %d bytes", OUTBOX_PG_SCHEMA_MAX);
        return OUTBOX_ERR_CONFIG;
    }
    if (n->table[0] == '\0' || strlen(n->table) > OUTBOX_PG_TABLE_MAX) {
        snprintf(err, errlen, "table name must be 1 to %d bytes", OUTBOX_PG_TABLE_MAX);
        return OUTBOX_ERR_CONFIG;
    }
    bad = n->schema;
    if ((why = outbox_pg_name_problem(bad)) == NULL)
        why = outbox_pg_name_problem(bad = n->table);
    if (why != NULL) {
        char shown[96];

        outbox_escape(shown, sizeof(shown), bad, strlen(bad), OUTBOX_ESCAPE_BACKSLASH);
        snprintf(err, errlen, "%s name \"%s\" %s", bad == n->schema ? "schema" : "table", shown,
                 why);
        return OUTBOX_ERR_CONFIG;
    }
    n->qschema = outbox_pg_quote_ident(n->schema);
    n->qtable = outbox_pg_qualify(n->schema, n->table, "");
    n->qmigrations = outbox_pg_qualify(n->schema, n->table, "_migrations");
    if (n->qschema == NULL || n->qtable == NULL || n->qmigrations == NULL) {
        outbox_pg_names_free(n);
        snprintf(err, errlen, "out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    return OUTBOX_OK;
}

void
outbox_pg_names_free(outbox_pg_names_t *n)
{
    free(n->qschema);
    free(n->qtable);
    free(n->qmigrations);
    n->qschema = n->qtable = n->qmigrations = NULL;
}

/* Copy msg into err as one line: whitespace runs become one space. */
static void
one_line(char *err, size_t errlen, const char *prefix, const char *msg, const char *sqlstate)
{
    size_t o;
    int space = 0;

    if (err == NULL || errlen == 0)
        return;
    o = (size_t)snprintf(err, errlen, "%s: ", prefix);
    for (; *msg != '\0' && o + 1 < errlen; msg++) {
        if (*msg == '\n' || *msg == '\r' || *msg == '\t' || *msg == ' ') {
            space = 1;
            continue;
        }
        if (space && o + 2 < errlen)
            err[o++] = ' ';
        space = 0;
        err[o++] = *msg;
    }
    if (o >= errlen)
        o = errlen - 1;
    err[o] = '\0';
    if (sqlstate != NULL && o + 1 < errlen)
        snprintf(err + o, errlen - o, " (%s)", sqlstate);
}

/* Notices ("relation already exists, skipping") are not errors; libpq's
 * default would print them on stderr, out of the daemon's log format. */
static void
ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

void
outbox_pg_channel(const char *schema, const char *table, char out[OUTBOX_PG_CHANNEL_LEN + 1])
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 of "schema.table" */
    const char *parts[3] = {schema, ".", table};
    const unsigned char *p;
    int i;

    for (i = 0; i < 3; i++)
        for (p = (const unsigned char *)parts[i]; *p != '\0'; p++)
            h = (h ^ *p) * 0x100000001b3ULL;
    snprintf(out, OUTBOX_PG_CHANNEL_LEN + 1, "outbox_%016llx", (unsigned long long)h);
}

int
outbox_pg_check_conninfo(const char *conninfo, char *err, size_t errlen)
{
    PQconninfoOption *opts, *o;
    char *perr = NULL;

    if (conninfo == NULL || conninfo[0] == '\0')
        return OUTBOX_OK;
    /* libpq's message may quote part of the string (a password): not shown */
    if ((opts = PQconninfoParse(conninfo, &perr)) == NULL) {
        PQfreemem(perr);
        snprintf(err, errlen, "db: not a valid libpq connection string or URI");
        return OUTBOX_ERR_CONFIG;
    }
    for (o = opts; o->keyword != NULL; o++) {
        /* the value checks libpq makes before connecting */
        if (o->val == NULL)
            continue;
        if ((strcmp(o->keyword, "sslmode") == 0 &&
             strstr(",disable,allow,prefer,require,verify-ca,verify-full,", o->val) == NULL) ||
            (strcmp(o->keyword, "port") == 0 && strspn(o->val, "0123456789,") != strlen(o->val))) {
            snprintf(err, errlen, "db: invalid %s value", o->keyword);
            PQconninfoFree(opts);
            return OUTBOX_ERR_CONFIG;
        }
    }
    PQconninfoFree(opts);
    return OUTBOX_OK;
}

void
outbox_pg_appname(const char *lock_id, char out[OUTBOX_PG_APPNAME_MAX + 1])
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
    const unsigned char *p;
    size_t n = strlen(lock_id);

    if (n + 8 <= OUTBOX_PG_APPNAME_MAX) {
        snprintf(out, OUTBOX_PG_APPNAME_MAX + 1, "outboxd %s", lock_id);
        return;
    }
    /* too long to keep whole: its end (slot, incarnation) and a hash of all
     * of it, so that no two lock ids share a name */
    for (p = (const unsigned char *)lock_id; *p != '\0'; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    snprintf(out, OUTBOX_PG_APPNAME_MAX + 1, "outboxd ~%016llx %s", (unsigned long long)h,
             lock_id + n - (OUTBOX_PG_APPNAME_MAX - 26));
}

int
outbox_pg_connect(PGconn **out, const char *conninfo, char *err, size_t errlen)
{
    return outbox_pg_connect_as(out, conninfo, NULL, err, errlen);
}

int
outbox_pg_connect_as(PGconn **out, const char *conninfo, const char *application_name, char *err,
                     size_t errlen)
{
    /* Defaults come first so that the expanded conninfo (dbname entry)
     * overrides them; client_encoding comes last because the relay's
     * strings are UTF-8 whatever the user's environment says. */
    const char *kw[] = {"connect_timeout",
                        "keepalives",
                        "keepalives_idle",
                        "keepalives_interval",
                        "keepalives_count",
                        application_name != NULL ? "application_name" : "fallback_application_name",
                        "dbname",
                        "client_encoding",
                        NULL};
    const char *val[] = {"10", "1",    "10",
                         "5",  "3",    application_name != NULL ? application_name : "outboxd",
                         NULL, "UTF8", NULL};
    PQconninfoOption *opts;
    char *perr = NULL;
    const char *encoding;
    PGconn *c;

    *out = NULL;
    if (conninfo != NULL && conninfo[0] != '\0') {
        /* Parse first to tell a typo (config) from a server that is down.
         * libpq's parse message may quote part of the string, so only a
         * generic reason is given. */
        if ((opts = PQconninfoParse(conninfo, &perr)) == NULL) {
            PQfreemem(perr);
            snprintf(err, errlen, "conninfo is not a valid libpq connection string or URI");
            return OUTBOX_ERR_CONFIG;
        }
        PQconninfoFree(opts);
        val[6] = conninfo;
    }
    c = PQconnectdbParams(kw, val, 1);
    if (c == NULL) {
        snprintf(err, errlen, "connect: out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        /* libpq checks option values ("invalid sslmode value", "invalid
         * port number") before any network traffic: a typo, not an outage. */
        bool bad_option = strncmp(PQerrorMessage(c), "invalid ", 8) == 0;

        one_line(err, errlen, bad_option ? "conninfo" : "connect", PQerrorMessage(c), NULL);
        PQfinish(c);
        return bad_option ? OUTBOX_ERR_CONFIG : OUTBOX_ERR_UNREACHABLE;
    }
    /* Topics, keys and headers are UTF-8 text, as NATS wants them. A
     * SQL_ASCII database stores any bytes; a row that is not UTF-8 would
     * then fail every claim that reads it, stalling the relay. */
    if ((encoding = PQparameterStatus(c, "server_encoding")) == NULL ||
        strcmp(encoding, "UTF8") != 0) {
        snprintf(err, errlen,
                 "database \"%s\" has encoding %s; outbox needs UTF8 (topics, keys and headers "
                 "are UTF-8 text, as NATS subjects and headers are): create it with "
                 "ENCODING 'UTF8'",
                 PQdb(c), encoding != NULL ? encoding : "(unknown)");
        PQfinish(c);
        return OUTBOX_ERR_SCHEMA;
    }
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    *out = c;
    return OUTBOX_OK;
}

int
outbox_pg_status(PGconn *conn, const PGresult *res)
{
    const char *st;

    if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
        return OUTBOX_ERR_UNREACHABLE;
    if (res == NULL)
        return OUTBOX_ERR_NOMEM;
    st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (st == NULL)
        return OUTBOX_ERR_PERMANENT;
    if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
        strcmp(st, "57P03") == 0)
        return OUTBOX_ERR_UNREACHABLE;
    /* Serialization failure, deadlock, lock not available, statement
     * timeout/cancel; class 53 is the server out of connections, memory or
     * disk, which passes. */
    if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 || strcmp(st, "55P03") == 0 ||
        strcmp(st, "57014") == 0 || strncmp(st, "53", 2) == 0)
        return OUTBOX_ERR_TRANSIENT;
    if (strcmp(st, "42P01") == 0 || strcmp(st, "42703") == 0)
        return OUTBOX_ERR_SCHEMA;
    return OUTBOX_ERR_PERMANENT;
}

void
outbox_pg_error(char *err, size_t errlen, const char *what, PGconn *conn, const PGresult *res)
{
    const char *msg = NULL, *st = NULL;

    if (res != NULL) {
        msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    }
    if (msg == NULL)
        msg = conn != NULL ? PQerrorMessage(conn) : "no connection";
    if (msg[0] == '\0')
        msg = "connection lost";
    one_line(err, errlen, what, msg, st);
}
