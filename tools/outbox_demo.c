/*
 * outbox-demo: a demo producer. Each transaction writes an order row and its
 * outbox message together, alternating the two producer paths (C API
 * outbox_enqueue() and the SQL function <table>_enqueue()); every K-th one
 * is rolled back, so neither the order nor its message ever exists. Bounded:
 * --count transactions, then exit (0 ok, 1 database failure, 2 usage).
 */
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox/outbox.h"

typedef struct demo_opts {
    const char *db, *topic, *schema, *table;
    long count, interval_ms, rollback_every;
} demo_opts_t;

static void
usage(FILE *f)
{
    fprintf(f, "usage: outbox-demo [--db CONNINFO] [--topic PREFIX] [--count N] [--interval-ms M]\n"
               "                   [--rollback-every K] [--schema S] [--table T]\n"
               "  --db CONNINFO       database (default $OUTBOX_DB)\n"
               "  --topic PREFIX      messages go to PREFIX.created (default demo.orders)\n"
               "  --count N           transactions (default 20)\n"
               "  --interval-ms M     pause between transactions (default 250)\n"
               "  --rollback-every K  roll back every K-th transaction, 0 never (default 5)\n"
               "  --schema S --table T  the outbox table (default public.outbox)\n");
}

static int
parse_nonneg(const char *s, const char *what, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        fprintf(stderr, "outbox-demo: %s must be a non-negative integer, not \"%s\"\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Runs a statement without parameters; prints the error and returns -1. */
static int
exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

    if (!ok) {
        fprintf(stderr, "outbox-demo: %s: %s", sql, PQerrorMessage(c));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

/* "schema"."name" quoted for SQL; NULL on failure. Caller frees. */
static char *
qualified(PGconn *c, const char *schema, const char *name)
{
    char *qs = PQescapeIdentifier(c, schema, strlen(schema));
    char *qn = PQescapeIdentifier(c, name, strlen(name));
    char *out = NULL;
    size_t len;

    if (qs != NULL && qn != NULL) {
        len = strlen(qs) + strlen(qn) + 2;
        out = malloc(len);
        if (out != NULL) {
            snprintf(out, len, "%s.%s", qs, qn);
        }
    }
    PQfreemem(qs);
    PQfreemem(qn);
    return out;
}

/* The business write: the order row that the message announces. */
static int
insert_order(PGconn *c, const char *orders, long n, const char *item, long qty)
{
    char sql[512], ref[32], nbuf[24], qbuf[24];
    const char *params[3] = {ref, item, qbuf};
    PGresult *r;
    int ok;

    snprintf(ref, sizeof(ref), "order-%ld", n);
    snprintf(nbuf, sizeof(nbuf), "%ld", n);
    snprintf(qbuf, sizeof(qbuf), "%ld", qty);
    snprintf(sql, sizeof(sql), "INSERT INTO %s (ref, item, qty) VALUES ($1, $2, $3::int)", orders);
    r = PQexecParams(c, sql, 3, NULL, params, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        fprintf(stderr, "outbox-demo: insert order-%s: %s", nbuf, PQerrorMessage(c));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

/* Producer path 2: SELECT <schema>.<table>_enqueue(topic, key, headers, body). */
static int
enqueue_sql(PGconn *c, const char *fn, const outbox_message_t *m, const char *hdr_json,
            char id[OUTBOX_ID_LEN + 1])
{
    const char *params[4] = {m->topic, m->key, hdr_json, m->body};
    int lengths[4] = {0, 0, 0, (int)m->body_len};
    int formats[4] = {0, 0, 0, 1}; /* body as binary bytea: no escaping */
    char sql[600];
    PGresult *r;
    int ok;

    snprintf(sql, sizeof(sql), "SELECT %s($1, $2, $3::jsonb, $4::bytea)", fn);
    r = PQexecParams(c, sql, 4, NULL, params, lengths, formats, 0);
    ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (ok) {
        snprintf(id, OUTBOX_ID_LEN + 1, "%s", PQgetvalue(r, 0, 0));
    } else {
        fprintf(stderr, "outbox-demo: %s: %s", sql, PQerrorMessage(c));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static int
run(PGconn *c, const demo_opts_t *o)
{
    static const char *const items[] = {"widget", "gadget", "sprocket", "gizmo"};
    static const outbox_header_t hdrs[] = {{"content-type", "application/json"}, {"demo", "yes"}};
    static const char hdr_json[] = "{\"content-type\":\"application/json\",\"demo\":\"yes\"}";
    char topic[OUTBOX_TOPIC_MAX + 1], fn_name[256], *orders = NULL, *fn = NULL;
    char sql[600];
    long n, committed = 0, rolled_back = 0;
    int rc = -1;

    snprintf(topic, sizeof(topic), "%s.created", o->topic);
    snprintf(fn_name, sizeof(fn_name), "%s_enqueue", o->table);
    orders = qualified(c, o->schema, "demo_orders");
    fn = qualified(c, o->schema, fn_name);
    if (orders == NULL || fn == NULL) {
        fprintf(stderr, "outbox-demo: out of memory\n");
        goto done;
    }
    snprintf(sql, sizeof(sql),
             "CREATE TABLE IF NOT EXISTS %s (id bigint GENERATED ALWAYS AS IDENTITY "
             "PRIMARY KEY, ref text NOT NULL, item text NOT NULL, qty int NOT NULL, "
             "created_on timestamptz NOT NULL DEFAULT now())",
             orders);
    if (exec_ok(c, "SET client_min_messages = warning") != 0 || exec_ok(c, sql) != 0) {
        goto done;
    }

    for (n = 1; n <= o->count; n++) {
        const char *item = items[n % 4];
        long qty = 1 + n % 7;
        int via_sql = n % 2 == 0;
        int rollback = o->rollback_every > 0 && n % o->rollback_every == 0;
        char key[32], body[256], id[OUTBOX_ID_LEN + 1], err[512];
        outbox_message_t m;
        int len;

        snprintf(key, sizeof(key), "order-%ld", n);
        len = snprintf(body, sizeof(body),
                       "{\"order\":\"%s\",\"item\":\"%s\",\"qty\":%ld,\"path\":\"%s\"}", key, item,
                       qty, via_sql ? "sql" : "c-api");
        memset(&m, 0, sizeof(m));
        m.topic = topic;
        m.key = key;
        m.headers = hdrs;
        m.nheaders = sizeof(hdrs) / sizeof(hdrs[0]);
        m.body = body;
        m.body_len = (size_t)len;

        if (exec_ok(c, "BEGIN") != 0 || insert_order(c, orders, n, item, qty) != 0) {
            goto done;
        }
        if (via_sql) {
            if (enqueue_sql(c, fn, &m, hdr_json, id) != 0) {
                goto done;
            }
        } else {
            int st = outbox_enqueue(c, o->schema, o->table, &m, id, err, sizeof(err));

            if (st != OUTBOX_OK) {
                fprintf(stderr, "outbox-demo: outbox_enqueue %s: %s: %s\n", key,
                        outbox_strerror(st), err);
                goto done;
            }
        }
        if (rollback) {
            if (exec_ok(c, "ROLLBACK") != 0) {
                goto done;
            }
            rolled_back++;
            printf("rolled back %s (never published)\n", key);
        } else {
            if (exec_ok(c, "COMMIT") != 0) {
                goto done;
            }
            committed++;
            printf("committed %s %s via %s\n", key, id, via_sql ? "SQL function" : "C API");
        }
        fflush(stdout);
        if (n < o->count && o->interval_ms > 0) {
            sleep_ms(o->interval_ms);
        }
    }
    printf("outbox-demo: committed %ld, rolled back %ld\n", committed, rolled_back);
    rc = 0;

done:
    free(orders);
    free(fn);
    return rc;
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {{"db", required_argument, NULL, 'd'},
                                             {"topic", required_argument, NULL, 't'},
                                             {"count", required_argument, NULL, 'c'},
                                             {"interval-ms", required_argument, NULL, 'i'},
                                             {"rollback-every", required_argument, NULL, 'r'},
                                             {"schema", required_argument, NULL, 'S'},
                                             {"table", required_argument, NULL, 'T'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    demo_opts_t o = {getenv("OUTBOX_DB"), "demo.orders", "public", "outbox", 20, 250, 5};
    PGconn *c = NULL;
    int opt, rc = 1;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'd': o.db = optarg; break;
        case 't': o.topic = optarg; break;
        case 'c':
            if (parse_nonneg(optarg, "--count", &o.count) != 0) {
                return 2;
            }
            break;
        case 'i':
            if (parse_nonneg(optarg, "--interval-ms", &o.interval_ms) != 0) {
                return 2;
            }
            break;
        case 'r':
            if (parse_nonneg(optarg, "--rollback-every", &o.rollback_every) != 0) {
                return 2;
            }
            break;
        case 'S': o.schema = optarg; break;
        case 'T': o.table = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (o.db == NULL || *o.db == '\0') {
        fprintf(stderr, "outbox-demo: no database: give --db CONNINFO or set OUTBOX_DB\n");
        return 2;
    }
    if (!outbox_subject_valid(o.topic)) {
        fprintf(stderr, "outbox-demo: --topic \"%s\" is not a valid NATS subject\n", o.topic);
        return 2;
    }

    c = PQconnectdb(o.db);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "outbox-demo: connect failed: %s", PQerrorMessage(c));
        goto done;
    }
    rc = run(c, &o) == 0 ? 0 : 1;

done:
    PQfinish(c);
    return rc;
}
