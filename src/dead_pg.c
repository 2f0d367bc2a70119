/*
 * `outboxd dead list|show|requeue|purge`. Every action is one parameterised
 * statement whose WHERE starts with state = 2, so nothing but dead rows is
 * ever read, requeued or deleted. Requeue gives a record a fresh id (a new
 * Nats-Msg-Id: the stream must not drop it as a duplicate) and a fresh seq
 * (it joins the back of the queue and of its key), and resets attempts and
 * crashes; the previous id and error stay in last_error. Text output shows
 * row data escaped (escape.h): a topic, key, error or body written around
 * the guard trigger cannot move the cursor or recolour the terminal.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dead_pg.h"
#include "escape.h"
#include "pg_util.h"

#define DEFAULT_LIMIT 100
#define SHOW_BODY_MAX 4096 /* bytes of body shown by `show` (JSON: all of it) */
#define MISSED_NAMED 5     /* given ids not acted on that are named, with why */

/* $1 ids, $2 topic regex, $3 error text, $4 older-than ms, $5 newer-than ms */
#define FILTER                                                                                     \
    " state = 2 AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))"                                  \
    " AND ($2::text IS NULL OR topic ~ $2::text)"                                                  \
    " AND ($3::text IS NULL OR strpos(lower(coalesce(last_error, '')), lower($3::text)) > 0)"      \
    " AND ($4::float8 IS NULL OR processed_on < now() - $4::float8 * interval '1 millisecond')"    \
    " AND ($5::float8 IS NULL OR processed_on >= now() - $5::float8 * interval '1 millisecond')"
#define NFILTER 5
#define UTC(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const char sql_list[] = "SELECT id, topic, coalesce(msg_key, ''), attempts, crashes, " UTC(
    "processed_on") ","
                    " coalesce(last_error, ''), octet_length(body), count(*) OVER ()"
                    " FROM @T@ WHERE" FILTER " ORDER BY processed_on DESC, seq DESC LIMIT $6";
static const char sql_show[] =
    "SELECT id, seq, topic, msg_key, headers::text, attempts, crashes, " UTC("created_on") ", " UTC(
        "processed_on") ", " UTC("last_attempt_on") ", coalesce(last_error, ''), "
                                                    "octet_length(body),"
                                                    " encode(substring(body FROM 1 FOR 4096), "
                                                    "'hex'),"
                                                    " translate(encode(body, 'base64'), E'\\n', '')"
                                                    " FROM @T@ WHERE" FILTER " ORDER BY seq";
/* New seqs are drawn in the records' old order (the inner ORDER BY), so a
 * key's requeued records keep their order among themselves. $6: at most
 * that many (NULL: all); $7: the quoted table, whose seq sequence it is. */
static const char sql_requeue[] =
    "WITH t AS (SELECT old_id, gen_random_uuid() AS new_id,"
    " nextval(pg_get_serial_sequence($7, 'seq')) AS new_seq FROM"
    " (SELECT id AS old_id FROM @T@ WHERE" FILTER " ORDER BY seq LIMIT $6 FOR UPDATE) s)"
    " UPDATE @T@ AS o SET id = t.new_id, seq = t.new_seq, state = 0, attempts = 0, crashes = 0,"
    " locked_by = NULL, locked_on = NULL, processed_on = NULL, next_attempt_at = now(),"
    " last_error = 'requeued from dead (was ' || t.old_id || '): ' || coalesce(o.last_error, '')"
    " FROM t WHERE o.id = t.old_id RETURNING t.old_id, o.id";
static const char sql_purge[] = "DELETE FROM @T@ WHERE id IN (SELECT id FROM @T@ WHERE" FILTER
                                " ORDER BY processed_on LIMIT $6) RETURNING id";
/* What the given ids not acted on are now; $1 uuid[] */
static const char sql_state[] = "SELECT id::text, state FROM @T@ WHERE id = ANY($1::uuid[])";

bool
outbox_dead_topic_regex(const char *p, char *buf, size_t len)
{
    size_t o = 0;
    const char *tok = p;

    if (p == NULL || *p == '\0' || len < 3)
        return false;
    buf[o++] = '^';
    for (;;) {
        const char *end = strchr(tok, '.');
        size_t n = end ? (size_t)(end - tok) : strlen(tok), i;
        const char *add;

        if (n == 0)
            return false; /* empty token */
        if (n == 1 && tok[0] == '*') {
            add = "[^.]+";
        } else if (n == 1 && tok[0] == '>') {
            if (end != NULL)
                return false; /* '>' must be last */
            add = ".+";
        } else {
            for (i = 0; i < n; i++) {
                unsigned char c = (unsigned char)tok[i];

                if (c <= ' ' || c == 0x7f)
                    return false; /* '*' or '>' inside a token (a*b) is a plain character */
                if (o + 3 >= len)
                    return false;
                if (strchr("\\^$.|?*+()[]{}", c) != NULL)
                    buf[o++] = '\\';
                buf[o++] = (char)c;
            }
            add = "";
        }
        if (o + strlen(add) + 3 >= len)
            return false;
        memcpy(buf + o, add, strlen(add));
        o += strlen(add);
        if (end == NULL)
            break;
        buf[o++] = '\\';
        buf[o++] = '.';
        tok = end + 1;
    }
    buf[o++] = '$';
    buf[o] = '\0';
    return true;
}

/* tmpl with @T@ = qt; NULL on NOMEM. */
static char *
with_table(const char *tmpl, const char *qt)
{
    size_t n = strlen(tmpl) + 2 * strlen(qt) + 1;
    char *out = malloc(n), *o = out;
    const char *p;

    if (out == NULL)
        return NULL;
    for (p = tmpl; *p != '\0';) {
        if (strncmp(p, "@T@", 3) == 0) {
            o = stpcpy(o, qt);
            p += 3;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static bool
uuid_text(const char *s)
{
    int i;

    if (strlen(s) != 36)
        return false;
    for (i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? s[i] != '-' : strchr("0123456789abcdefABCDEF", s[i]) == NULL || s[i] == '\0')
            return false;
    }
    return true;
}

static bool
has_filter(const outbox_dead_query_t *q)
{
    return q->nids > 0 || q->topic != NULL || q->error != NULL || q->older_than_ms >= 0 ||
           q->newer_than_ms >= 0;
}

/* '{a,b}' from ids (uuid text, checked); NULL on NOMEM; caller frees. */
static char *
id_array(const char *const *ids, int n)
{
    char *a = malloc(3 + 37 * (size_t)n);
    int i;

    if (a == NULL)
        return NULL;
    strcpy(a, "{");
    for (i = 0; i < n; i++) {
        strcat(a, ids[i]);
        strcat(a, i + 1 < n ? "," : "");
    }
    strcat(a, "}");
    return a;
}

/*
 * The given ids that column 0 of done (the ids acted on) lacks: named on err
 * with what each is now (up to MISSED_NAMED), so that an id that was not a
 * dead record is never passed over in silence. Returns how many there are.
 */
static int
report_missed(PGconn *conn, const char *qtable, const char *action, const outbox_dead_query_t *q,
              const PGresult *done, FILE *err)
{
    static const char *const state_why[] = {"pending, not dead", "delivered, not dead",
                                            "dead, but outside the filters or --limit"};
    const char *missed[OUTBOX_DEAD_MAX_IDS];
    PGresult *res = NULL;
    char *sql = NULL, *ids = NULL;
    const char *values[1];
    int nmissed = 0, ngiven = 0, rows = PQntuples(done), i, j;

    for (i = 0; i < q->nids; i++) {
        bool seen = false;

        for (j = 0; j < i && !seen; j++) /* an id given twice counts once */
            seen = strcasecmp(q->ids[i], q->ids[j]) == 0;
        if (seen)
            continue;
        ngiven++;
        for (j = 0; j < rows && !seen; j++)
            seen = strcasecmp(q->ids[i], PQgetvalue(done, j, 0)) == 0;
        if (!seen)
            missed[nmissed++] = q->ids[i];
    }
    if (nmissed == 0)
        return 0;
    /* Best effort: without the states the ids are still named. */
    if ((sql = with_table(sql_state, qtable)) != NULL &&
        (ids = id_array(missed, nmissed < MISSED_NAMED ? nmissed : MISSED_NAMED)) != NULL) {
        values[0] = ids;
        res = PQexecParams(conn, sql, 1, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            PQclear(res);
            res = NULL;
        }
    }
    outbox_fprintf_safe(err, "outboxd: dead %s: %d of %d given id%s not %s:", action, nmissed,
                        ngiven, ngiven == 1 ? "" : "s",
                        strcmp(action, "show") == 0    ? "shown"
                        : strcmp(action, "purge") == 0 ? "purged"
                                                       : "requeued");
    for (i = 0; i < nmissed && i < MISSED_NAMED; i++) {
        const char *why = res != NULL ? "no such record" : "not a dead record";

        for (j = 0; res != NULL && j < PQntuples(res); j++) {
            if (strcasecmp(missed[i], PQgetvalue(res, j, 0)) != 0)
                continue;
            why = state_why[atoi(PQgetvalue(res, j, 1)) % 3]; /* state IN (0, 1, 2) */
        }
        outbox_fprintf_safe(err, "%s %s (%s)", i > 0 ? "," : "", missed[i], why);
    }
    if (nmissed > MISSED_NAMED)
        outbox_fprintf_safe(err, " and %d more", nmissed - MISSED_NAMED);
    outbox_fprintf_safe(err, "\n");
    PQclear(res);
    free(sql);
    free(ids);
    return nmissed;
}

/* Column c of row i escaped into buf (len bytes), backslashes included
 * but in the headers: JSON, whose own escapes are unambiguous. */
static const char *
escaped(char *buf, size_t len, const PGresult *res, int i, int c)
{
    outbox_escape(buf, len, PQgetvalue(res, i, c), (size_t)PQgetlength(res, i, c),
                  strcmp(PQfname(res, c), "headers") == 0 ? 0 : OUTBOX_ESCAPE_BACKSLASH);
    return buf;
}

/* Column c of row i, hex of bytes, decoded and escaped into buf. */
static const char *
body_escaped(char *buf, size_t len, const PGresult *res, int i, int c)
{
    static char raw[SHOW_BODY_MAX];
    const char *hex = PQgetvalue(res, i, c);
    size_t n = 0;
    unsigned int b;

    for (; hex[0] != '\0' && hex[1] != '\0' && n < sizeof(raw); hex += 2)
        if (sscanf(hex, "%2x", &b) == 1)
            raw[n++] = (char)b;
    outbox_escape(buf, len, raw, n, OUTBOX_ESCAPE_BACKSLASH);
    return buf;
}

static void
print_list(PGresult *res, const outbox_dead_query_t *q, FILE *out)
{
    int rows = PQntuples(res), i;
    long long total = rows > 0 ? atoll(PQgetvalue(res, 0, 8)) : 0;

    if (q->json) {
        json_t *a = json_array(), *doc;
        char *text;

        for (i = 0; i < rows; i++)
            json_array_append_new(
                a,
                json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:s, s:I}", "id", PQgetvalue(res, i, 0),
                          "topic", PQgetvalue(res, i, 1), "key", PQgetvalue(res, i, 2), "attempts",
                          atoi(PQgetvalue(res, i, 3)), "crashes", atoi(PQgetvalue(res, i, 4)),
                          "died", PQgetvalue(res, i, 5), "error", PQgetvalue(res, i, 6),
                          "body_bytes", (json_int_t)atoll(PQgetvalue(res, i, 7))));
        doc = json_pack("{s:I, s:o}", "total", (json_int_t)total, "records", a);
        text = json_dumps(doc, JSON_INDENT(2) | JSON_ENSURE_ASCII);
        if (text != NULL)
            fprintf(out, "%s\n", text);
        free(text);
        json_decref(doc);
        return;
    }
    if (rows == 0) {
        fprintf(out, "no dead records match\n");
        return;
    }
    fprintf(out, "%-36s  %-20s  %4s %3s  %-24s  %s\n", "ID", "DIED (UTC)", "ATT", "CR", "TOPIC",
            "ERROR");
    for (i = 0; i < rows; i++) {
        char topic[64], error[104];

        escaped(topic, 61, res, i, 1);
        escaped(error, 101, res, i, 6);
        fprintf(out, "%-36s  %-20s  %4s %3s  %-24s  %s\n", PQgetvalue(res, i, 0),
                PQgetvalue(res, i, 5), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), topic, error);
    }
    if (total > rows)
        fprintf(out, "%d of %lld dead records shown (newest first; --limit N for more)\n", rows,
                total);
    else
        fprintf(out, "%lld dead record%s\n", total, total == 1 ? "" : "s");
}

static void
print_show(PGresult *res, const outbox_dead_query_t *q, FILE *out)
{
    static const char *const names[] = {"id",      "seq",          "topic",   "key",
                                        "headers", "attempts",     "crashes", "created",
                                        "died",    "last_attempt", "error",   "body_bytes"};
    static char buf[4 * SHOW_BODY_MAX + 1]; /* a body shown, each byte escaped */
    int rows = PQntuples(res), i, c;

    for (i = 0; i < rows; i++) {
        if (q->json) {
            json_t *o = json_object(), *h = json_loads(PQgetvalue(res, i, 4), 0, NULL);
            char *text;

            for (c = 0; c < 12; c++) {
                if (c == 4)
                    json_object_set_new(o, "headers", h != NULL ? h : json_object());
                else if (c == 1 || c == 5 || c == 6 || c == 11)
                    json_object_set_new(o, names[c], json_integer(atoll(PQgetvalue(res, i, c))));
                else
                    json_object_set_new(
                        o, names[c],
                        PQgetisnull(res, i, c) ? json_null() : json_string(PQgetvalue(res, i, c)));
            }
            json_object_set_new(o, "body_base64", json_string(PQgetvalue(res, i, 13)));
            text = json_dumps(o, JSON_INDENT(2) | JSON_ENSURE_ASCII);
            if (text != NULL)
                fprintf(out, "%s\n", text);
            free(text);
            json_decref(o);
            continue;
        }
        if (i > 0)
            fputc('\n', out);
        for (c = 0; c < 12; c++)
            fprintf(out, "%-13s %s\n", names[c],
                    PQgetisnull(res, i, c) ? "-" : escaped(buf, sizeof(buf), res, i, c));
        fprintf(out, "%-13s %s%s\n", "body", body_escaped(buf, sizeof(buf), res, i, 12),
                atoll(PQgetvalue(res, i, 11)) > SHOW_BODY_MAX ? " ... (cut; --json has it all)"
                                                              : "");
    }
}

int
outbox_dead_run(const char *action, const outbox_dead_query_t *q, FILE *out, FILE *err)
{
    outbox_pg_names_t names = {0};
    PGconn *conn = NULL;
    PGresult *res = NULL;
    char *sql = NULL, *ids = NULL, regex[2048], older[32], newer[32], limit[32], msg[600],
         channel[OUTBOX_PG_CHANNEL_LEN + 1];
    const char *values[NFILTER + 2] = {NULL};
    const char *tmpl;
    int code = 2, i, nparams = NFILTER;
    bool list = false, show = false, requeue = false;

    if (strcmp(action, "list") == 0) {
        tmpl = sql_list, list = true, nparams = NFILTER + 1;
    } else if (strcmp(action, "show") == 0) {
        tmpl = sql_show, show = true;
    } else if (strcmp(action, "requeue") == 0) {
        tmpl = sql_requeue, requeue = true, nparams = NFILTER + 2;
    } else if (strcmp(action, "purge") == 0) {
        tmpl = sql_purge, nparams = NFILTER + 1;
    } else {
        outbox_fprintf_safe(
            err, "outboxd: dead: unknown action \"%s\" (list, show, requeue, purge)\n", action);
        return 2;
    }
    if ((q->topic != NULL && q->topic[0] == '\0') || (q->error != NULL && q->error[0] == '\0')) {
        outbox_fprintf_safe(
            err,
            "outboxd: dead %s: an empty --%s would match every record: give a text, or "
            "--all\n",
            action, q->topic != NULL && q->topic[0] == '\0' ? "topic" : "error");
        return 2;
    }
    if (show && q->nids == 0) {
        outbox_fprintf_safe(err, "outboxd: dead show needs a record id\n");
        return 2;
    }
    if (q->all && (list || show)) {
        outbox_fprintf_safe(err, "outboxd: dead %s: --all is for requeue and purge\n", action);
        return 2;
    }
    if (q->all && has_filter(q)) {
        outbox_fprintf_safe(
            err,
            "outboxd: dead %s: --all acts on every dead record: give it alone, or ids or "
            "filters without it\n",
            action);
        return 2;
    }
    if (!list && !show && !has_filter(q) && !q->all) {
        outbox_fprintf_safe(err,
                            "outboxd: dead %s: name record ids or a filter (--topic, --error, "
                            "--older-than, --newer-than), or --all for every dead record\n",
                            action);
        return 2;
    }
    if (q->nids > 0) {
        for (i = 0; i < q->nids; i++) {
            if (!uuid_text(q->ids[i])) {
                outbox_fprintf_safe(err,
                                    "outboxd: dead %s: \"%.60s\" is not a record id (a uuid)\n",
                                    action, q->ids[i]);
                return 2;
            }
        }
        if ((ids = id_array(q->ids, q->nids)) == NULL)
            goto nomem;
        values[0] = ids;
    }
    if (q->topic != NULL) {
        if (!outbox_dead_topic_regex(q->topic, regex, sizeof(regex))) {
            outbox_fprintf_safe(
                err,
                "outboxd: dead %s: --topic \"%.100s\" is not a subject pattern (tokens "
                "separated by '.', '*' for one token, '>' last for the rest)\n",
                action, q->topic);
            code = 2;
            goto done;
        }
        values[1] = regex;
    }
    values[2] = q->error;
    if (q->older_than_ms >= 0) {
        snprintf(older, sizeof(older), "%lld", (long long)q->older_than_ms);
        values[3] = older;
    }
    if (q->newer_than_ms >= 0) {
        snprintf(newer, sizeof(newer), "%lld", (long long)q->newer_than_ms);
        values[4] = newer;
    }
    /* list shows DEFAULT_LIMIT by default; requeue and purge act on all */
    snprintf(limit, sizeof(limit), "%lld", (long long)(q->limit > 0 ? q->limit : DEFAULT_LIMIT));
    values[5] = list || q->limit > 0 ? limit : NULL;

    if (outbox_pg_names_init(&names, q->schema, q->table, msg, sizeof(msg)) != OUTBOX_OK) {
        outbox_fprintf_safe(err, "outboxd: dead: %s\n", msg);
        code = 2;
        goto done;
    }
    if ((sql = with_table(tmpl, names.qtable)) == NULL)
        goto nomem;
    values[6] = names.qtable;
    if (outbox_pg_connect(&conn, q->conninfo, msg, sizeof(msg)) != OUTBOX_OK) {
        outbox_fprintf_safe(err, "outboxd: dead: connecting to PostgreSQL failed: %s\n", msg);
        code = 1;
        goto done;
    }
    res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
        outbox_pg_error(msg, sizeof(msg), "dead", conn, res);
        outbox_fprintf_safe(err, "outboxd: %s: %s\n", action, msg);
        code = outbox_pg_status(conn, res) == OUTBOX_ERR_SCHEMA ? 2 : 1;
        goto done;
    }
    code = 0;
    if (list) {
        print_list(res, q, out);
    } else if (show) {
        print_show(res, q, out);
    } else if (requeue) {
        int rows = PQntuples(res);

        for (i = 0; i < rows && !q->json; i++)
            fprintf(out, "%s requeued as %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        if (q->json)
            fprintf(out, "{\"requeued\": %d}\n", rows);
        else
            fprintf(out, "%d dead record%s requeued\n", rows, rows == 1 ? "" : "s");
    } else {
        int rows = PQntuples(res);

        if (q->json)
            fprintf(out, "{\"purged\": %d}\n", rows);
        else
            fprintf(out, "%d dead record%s purged\n", rows, rows == 1 ? "" : "s");
    }
    /* Ids name what the operator expects to be acted on: one that was not
     * is a failure (the others are still done); a filter or --all matching
     * nothing is not. */
    if (!list && q->nids > 0 && report_missed(conn, names.qtable, action, q, res, err) > 0)
        code = 1;
    if (requeue && PQntuples(res) > 0) {
        /* wake an idle relay now rather than at its next poll */
        char notify[64];

        outbox_pg_channel(names.schema, names.table, channel);
        snprintf(notify, sizeof(notify), "NOTIFY \"%s\"", channel);
        PQclear(res);
        res = PQexec(conn, notify);
    }
    goto done;
nomem:
    outbox_fprintf_safe(err, "outboxd: dead: out of memory\n");
    code = 1;
done:
    PQclear(res);
    PQfinish(conn);
    outbox_pg_names_free(&names);
    free(sql);
    free(ids);
    return code;
}
