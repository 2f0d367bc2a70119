/*
 * outboxbench: benchmarks of the outbox producer path, the relay and the
 * machine's ceiling. main owns the run: servers (--start-servers), the
 * session (schema, workdir), the JSON document; every path out of a
 * sub-command, Ctrl-C included, goes through the same cleanup.
 * Exit codes: 0 ok, 1 failure, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <nats/nats.h>

#include "db.h"
#include "options.h"
#include "relay.h"
#include "report.h"
#include "servers.h"
#include "session.h"
#include "util.h"

/* Server version and durability settings: a figure means little without. */
static int
describe_server(bench_t *b, json_t *doc)
{
    PGconn *c = db_connect(b->db, "database");
    json_t *srv;
    PGresult *r;
    char ver[200];
    int rc = -1;

    if (c == NULL)
        return -1;
    r = PQexec(c, "SELECT current_setting('server_version'), current_setting('fsync'),"
                  " current_setting('synchronous_commit')");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        bench_err("PostgreSQL: reading server settings: %s", PQerrorMessage(c));
        goto done;
    }
    relay_version(b, ver, sizeof(ver));
    srv = json_pack("{s:s, s:s, s:s, s:s, s:b}", "postgresql", PQgetvalue(r, 0, 0), "fsync",
                    PQgetvalue(r, 0, 1), "synchronous_commit", PQgetvalue(r, 0, 2), "outboxd", ver,
                    "started_by_outboxbench", b->o->start_servers);
    json_object_set_new(doc, "server", srv);
    bench_info("PostgreSQL %s (fsync %s, synchronous_commit %s), %s, schema %s",
               PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), ver, b->schema);
    if (strcmp(PQgetvalue(r, 0, 1), "on") != 0 || strcmp(PQgetvalue(r, 0, 2), "off") == 0)
        bench_info("note: fsync or synchronous_commit is off: commit figures are not those of "
                   "a durable database");
    rc = 0;
done:
    PQclear(r);
    PQfinish(c);
    return rc;
}

static int
dispatch(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    switch (o->cmd) {
    case BENCH_PRODUCER: return cmd_producer(b, o, doc);
    case BENCH_STEADY: return cmd_steady(b, o, doc);
    case BENCH_DRAIN: return cmd_drain(b, o, doc);
    case BENCH_RAW: return cmd_raw(b, o, doc);
    case BENCH_SMOKE: return cmd_smoke(b, o, doc);
    case BENCH_CLAIMCOST: return cmd_claimcost(b, o, doc);
    case BENCH_REPORT: return cmd_report(b, o, doc);
    }
    return BENCH_EXIT_USAGE;
}

int
main(int argc, char **argv)
{
    bench_opts_t o;
    servers_t srv;
    bench_t b;
    json_t *doc = NULL;
    const char *db, *nats;
    int rc = BENCH_EXIT_FAIL, session = 0;

    memset(&srv, 0, sizeof(srv));
    memset(&b, 0, sizeof(b));
    switch (bench_options_parse(argc, argv, &o)) {
    case 0: break;
    case 1: return BENCH_EXIT_OK;
    default: return BENCH_EXIT_USAGE;
    }
    bench_set_quiet(o.quiet);
    bench_signals_install();
    if ((doc = json_object()) == NULL) {
        bench_err("out of memory");
        return BENCH_EXIT_FAIL;
    }
    json_object_set_new(doc, "tool", json_string("outboxbench"));
    json_object_set_new(doc, "command", json_string(bench_cmd_name(o.cmd)));
    db = o.db;
    nats = o.nats;
    if (o.start_servers) {
        if (servers_start(&srv, o.servers_script) != 0)
            goto done;
        db = srv.db;
        nats = srv.nats;
    }
    if (session_open(&b, &o, db, nats) != 0)
        goto done;
    session = 1;
    if (describe_server(&b, doc) != 0)
        goto done;
    json_object_set_new(doc, "params", report_params_json(&o));
    rc = dispatch(&b, &o, doc);
    if (bench_stopping() && rc == BENCH_EXIT_OK)
        rc = BENCH_EXIT_FAIL;
done:
    if (bench_stopping())
        bench_err("interrupted: cleaning up");
    if (session)
        session_close(&b, rc != BENCH_EXIT_OK);
    servers_stop(&srv);
    json_object_set_new(doc, "ok", json_boolean(rc == BENCH_EXIT_OK));
    if (o.json_file != NULL && report_json_write(doc, o.json_file) != 0 && rc == BENCH_EXIT_OK)
        rc = BENCH_EXIT_FAIL;
    json_decref(doc);
    nats_Close(); /* cnats' threads and global state, if it was used */
    return rc;
}
