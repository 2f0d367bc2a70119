/*
 * Option table and parsing for outboxbench. getopt_long permutes argv, so
 * options may come before or after the sub-command; each option records the
 * sub-commands it applies to and is checked against the one given.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "util.h"

#define ALL                                                                                        \
    (BENCH_PRODUCER | BENCH_STEADY | BENCH_DRAIN | BENCH_RAW | BENCH_SMOKE | BENCH_CLAIMCOST |     \
     BENCH_REPORT)
#define LOAD (BENCH_PRODUCER | BENCH_STEADY)
#define RELAY (BENCH_STEADY | BENCH_DRAIN)

enum {
    O_DB = 256,
    O_NATS,
    O_START_SERVERS,
    O_SERVERS_SCRIPT,
    O_OUTBOXD,
    O_JSON,
    O_SMOKE,
    O_QUIET,
    O_HELP,
    O_CONNECTIONS,
    O_BATCH,
    O_SECONDS,
    O_BODY_SIZE,
    O_HEADERS,
    O_API,
    O_RATE,
    O_JITTER,
    O_DELETE_DELIVERED,
    O_GRACE,
    O_WORKERS,
    O_RELAY_ARG,
    O_NATS_MODE,
    O_BATCH_SIZE,
    O_MESSAGES,
    O_TIMEOUT,
    O_REPEAT,
    O_DELIVERED,
    O_ROUNDS,
    O_QUICK,
    O_PLOTS,
    O_NO_CLAIMCOST,
    O_END
};

static const struct option longopts[] = {
    {"db", required_argument, NULL, O_DB},
    {"nats", required_argument, NULL, O_NATS},
    {"start-servers", no_argument, NULL, O_START_SERVERS},
    {"servers-script", required_argument, NULL, O_SERVERS_SCRIPT},
    {"outboxd", required_argument, NULL, O_OUTBOXD},
    {"json", required_argument, NULL, O_JSON},
    {"smoke", no_argument, NULL, O_SMOKE},
    {"quiet", no_argument, NULL, O_QUIET},
    {"help", no_argument, NULL, O_HELP},
    {"connections", required_argument, NULL, O_CONNECTIONS},
    {"batch", required_argument, NULL, O_BATCH},
    {"seconds", required_argument, NULL, O_SECONDS},
    {"body-size", required_argument, NULL, O_BODY_SIZE},
    {"headers", required_argument, NULL, O_HEADERS},
    {"api", required_argument, NULL, O_API},
    {"rate", required_argument, NULL, O_RATE},
    {"jitter", no_argument, NULL, O_JITTER},
    {"delete-delivered", no_argument, NULL, O_DELETE_DELIVERED},
    {"grace", required_argument, NULL, O_GRACE},
    {"workers", required_argument, NULL, O_WORKERS},
    {"relay-arg", required_argument, NULL, O_RELAY_ARG},
    {"nats-mode", required_argument, NULL, O_NATS_MODE},
    {"batch-size", required_argument, NULL, O_BATCH_SIZE},
    {"messages", required_argument, NULL, O_MESSAGES},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"repeat", required_argument, NULL, O_REPEAT},
    {"delivered", required_argument, NULL, O_DELIVERED},
    {"rounds", required_argument, NULL, O_ROUNDS},
    {"quick", no_argument, NULL, O_QUICK},
    {"plots", required_argument, NULL, O_PLOTS},
    {"no-claimcost", no_argument, NULL, O_NO_CLAIMCOST},
    {NULL, 0, NULL, 0},
};

/* Sub-commands each option applies to, indexed by option id - O_DB. */
static const int applies[O_END - O_DB] = {
    [O_DB - O_DB] = ALL,
    [O_NATS - O_DB] = ALL,
    [O_START_SERVERS - O_DB] = ALL,
    [O_SERVERS_SCRIPT - O_DB] = ALL,
    [O_OUTBOXD - O_DB] = ALL,
    [O_JSON - O_DB] = ALL,
    [O_SMOKE - O_DB] = ALL,
    [O_QUIET - O_DB] = ALL,
    [O_HELP - O_DB] = ALL,
    [O_CONNECTIONS - O_DB] = LOAD,
    [O_BATCH - O_DB] = LOAD,
    [O_SECONDS - O_DB] = LOAD,
    [O_BODY_SIZE - O_DB] = LOAD | BENCH_DRAIN | BENCH_RAW,
    [O_HEADERS - O_DB] = LOAD | BENCH_DRAIN | BENCH_RAW,
    [O_API - O_DB] = LOAD,
    [O_RATE - O_DB] = BENCH_STEADY,
    [O_JITTER - O_DB] = BENCH_STEADY,
    [O_DELETE_DELIVERED - O_DB] = RELAY | BENCH_RAW,
    [O_GRACE - O_DB] = BENCH_STEADY,
    [O_WORKERS - O_DB] = RELAY,
    [O_RELAY_ARG - O_DB] = RELAY | BENCH_PRODUCER,
    [O_NATS_MODE - O_DB] = RELAY,
    [O_BATCH_SIZE - O_DB] = RELAY | BENCH_RAW | BENCH_CLAIMCOST,
    [O_MESSAGES - O_DB] = BENCH_DRAIN | BENCH_RAW,
    [O_TIMEOUT - O_DB] = BENCH_DRAIN,
    [O_REPEAT - O_DB] = BENCH_PRODUCER,
    [O_DELIVERED - O_DB] = BENCH_CLAIMCOST | BENCH_REPORT,
    [O_ROUNDS - O_DB] = BENCH_CLAIMCOST,
    [O_QUICK - O_DB] = BENCH_REPORT,
    [O_PLOTS - O_DB] = BENCH_REPORT,
    [O_NO_CLAIMCOST - O_DB] = BENCH_REPORT,
};

void
bench_usage(FILE *out)
{
    fprintf(
        out,
        "Usage: outboxbench [options] producer|steady|drain|raw|claimcost|report [options]\n"
        "       outboxbench [options] --smoke\n"
        "\n"
        "Benchmarks the outbox producer path, the relay (outboxd) and this machine's ceiling.\n"
        "Tables go to stdout, progress to stderr. Each run works in its own schema\n"
        "(bench_<pid>) and JetStream stream, both dropped at the end.\n"
        "\n"
        "Where (any command):\n"
        "  --db CONNINFO          PostgreSQL (default $OUTBOX_DB)\n"
        "  --nats URL             NATS server (default $OUTBOX_NATS_URL)\n"
        "  --start-servers        start a throwaway PostgreSQL + nats-server (durable: fsync on)\n"
        "                         with tests/harness/servers.sh, stopped at exit (Ctrl-C too)\n"
        "  --servers-script PATH  servers.sh to use (default: the source tree's)\n"
        "  --outboxd PATH         relay binary (default: outboxd next to outboxbench)\n"
        "  --json FILE            also write the results as one JSON document\n"
        "  --quiet                no progress lines on stderr\n"
        "\n"
        "producer   commits/s of the producer path, per connection count and variant:\n"
        "           no-trigger, trigger-idle, relay-poll, relay-notify, notify-every-commit\n"
        "  --connections LIST     concurrent producer connections (default 1,8,32)\n"
        "  --batch B              messages per transaction (default 1)\n"
        "  --seconds T            per measurement (default 5)\n"
        "  --body-size S          body bytes (default 256)   --headers H  headers (default 2)\n"
        "  --api sql|c|both       outbox_enqueue() in SQL, the C API, or both (default sql)\n"
        "  --repeat R             R rounds over the variants, interleaved; median reported\n"
        "                         with the spread (max - min) / median (default 1)\n"
        "steady     latency commit -> NATS receipt at a paced rate, relay running\n"
        "  --rate R               messages/s, all producers together (default 1000)\n"
        "  --connections P        producer connections (default 4)\n"
        "  --batch B --seconds T (default 10) --body-size S --headers H --api sql|c\n"
        "  --jitter               random (Poisson) spacing instead of even spacing\n"
        "  --grace G              seconds to wait for stragglers after T (default 10)\n"
        "  --workers N            relay workers (default 1)\n"
        "drain      relay throughput on a preloaded table\n"
        "  --messages M           preloaded messages (default 100000)\n"
        "  --workers LIST         relay workers, one run each (default 1,2,4)\n"
        "  --body-size S --headers H\n"
        "  --timeout S            longest wait for one drain (default 300)\n"
        "raw        ceiling without relay logic: SQL claim+mark, NATS publish, both\n"
        "  --messages M (default 100000)  --batch-size N (default 500)  --body-size S --headers H\n"
        "claimcost  claim cost against the number of DELIVERED rows the table holds: per size,\n"
        "           claim + mark-delivered rounds through liboutbox's Store (own schema, grown\n"
        "           from one size to the next; needs ~1.2 kB free per row on the server's disk)\n"
        "  --delivered LIST       delivered rows, ascending (default 10000,10000000)\n"
        "  --batch-size N         rows per claim (default 500)\n"
        "  --rounds R             timed claims per size (default 30)\n"
        "report     every figure of the performance targets in one run (~15-25 min): raw, drain\n"
        "           (JetStream 256 B / 4 KiB / 64 KiB, delete-delivered, core), steady, worker\n"
        "           RSS, claimcost, producer; then a summary of the targets met\n"
        "  --quick                smaller sizes, 1-2 min: checks the command, not the figures\n"
        "  --plots DIR            gnuplot data and script in DIR; PNGs when gnuplot is on PATH\n"
        "  --no-claimcost         skip claimcost (its 10M rows take minutes and ~12 GB of disk)\n"
        "  --delivered LIST       claimcost sizes (default 10000,10000000; --quick 10000,200000)\n"
        "\n"
        "Relay options (steady, drain; --relay-arg also producer):\n"
        "  --nats-mode jetstream|core   relay mode (drain counts with a subscription in core)\n"
        "  --batch-size N         outboxd --batch-size\n"
        "  --relay-arg \"--key value\"  passed to outboxd run, repeatable\n"
        "  --delete-delivered     relay with retention 0 (a delivered row is deleted); raw too\n"
        "\n"
        "--smoke    every command in a few seconds with tiny sizes; exit 0 only if all sane\n"
        "\n"
        "Exit codes: 0 ok, 1 failure (messages missing, server error, interrupted), 2 usage.\n");
}

const char *
bench_cmd_name(bench_cmd_t c)
{
    switch (c) {
    case BENCH_PRODUCER: return "producer";
    case BENCH_STEADY: return "steady";
    case BENCH_DRAIN: return "drain";
    case BENCH_RAW: return "raw";
    case BENCH_SMOKE: return "smoke";
    case BENCH_CLAIMCOST: return "claimcost";
    case BENCH_REPORT: return "report";
    }
    return "?";
}

/* "--key value" (split at the first blank, in place: argv is ours to
 * write, and the tokens live as long as it) or "--key=value" / "--flag". */
static int
add_relay_arg(bench_opts_t *o, char *arg)
{
    char *sp = strpbrk(arg, " \t");

    if (arg[0] != '-' || arg[1] != '-') {
        bench_err("--relay-arg \"%s\": expected \"--key value\" (an outboxd option)", arg);
        return -1;
    }
    if (o->nrelay_args + 2 > BENCH_RELAY_ARGS_MAX) {
        bench_err("--relay-arg: more than %d", BENCH_RELAY_ARGS_MAX / 2);
        return -1;
    }
    o->relay_args[o->nrelay_args++] = arg;
    if (sp == NULL)
        return 0;
    *sp++ = '\0';
    while (*sp == ' ' || *sp == '\t')
        sp++;
    o->relay_args[o->nrelay_args++] = sp;
    return 0;
}

static void
defaults(bench_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->db = getenv("OUTBOX_DB");
    o->nats = getenv("OUTBOX_NATS_URL");
    o->batch = 1;
    o->repeat = 1;
    o->body_size = 256;
    o->headers = 2;
    o->api = BENCH_API_SQL;
    o->rate = 1000;
    o->grace = 10;
    o->relay_batch = 500;
    o->messages = 100000;
    o->timeout = 300;
    o->rounds = 30;
}

/* Defaults that differ by sub-command, for what was not given. */
static void
command_defaults(bench_opts_t *o, int seconds_set)
{
    if (o->nconnections == 0) {
        if (o->cmd == BENCH_PRODUCER) {
            o->connections[0] = 1;
            o->connections[1] = 8;
            o->connections[2] = 32;
            o->nconnections = 3;
        } else {
            o->connections[0] = 4;
            o->nconnections = 1;
        }
    }
    if (o->nworkers == 0) {
        if (o->cmd == BENCH_DRAIN) {
            o->workers[0] = 1;
            o->workers[1] = 2;
            o->workers[2] = 4;
            o->nworkers = 3;
        } else {
            o->workers[0] = 1;
            o->nworkers = 1;
        }
    }
    if (!seconds_set)
        o->seconds = o->cmd == BENCH_STEADY ? 10 : 5;
    if (o->ndelivered == 0) {
        o->delivered[0] = 10000;
        o->delivered[1] = o->cmd == BENCH_REPORT && o->quick ? 200000 : 10000000;
        o->ndelivered = 2;
    }
}

void
bench_options_for(const bench_opts_t *outer, bench_cmd_t cmd, bench_opts_t *out)
{
    defaults(out);
    out->cmd = cmd;
    out->db = outer->db;
    out->nats = outer->nats;
    out->outboxd = outer->outboxd;
    out->servers_script = outer->servers_script;
    out->start_servers = outer->start_servers;
    out->quiet = outer->quiet;
    command_defaults(out, 0);
}

int
bench_options_parse(int argc, char **argv, bench_opts_t *o)
{
    int seen[O_END - O_DB] = {0};
    int c, i, seconds_set = 0, smoke = 0;
    const char *cmd;

    defaults(o);
    opterr = 0;
    optind = 0; /* glibc: a full restart of getopt's scan (tests parse many times) */
    while ((c = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1 || optind < argc) {
        if (c == -1) {
            /* A sub-command: remember it, go on with the options after it. */
            if (o->cmd != 0) {
                bench_err("unexpected argument \"%s\"", argv[optind]);
                return -1;
            }
            cmd = argv[optind++];
            if (strcmp(cmd, "producer") == 0)
                o->cmd = BENCH_PRODUCER;
            else if (strcmp(cmd, "steady") == 0)
                o->cmd = BENCH_STEADY;
            else if (strcmp(cmd, "drain") == 0)
                o->cmd = BENCH_DRAIN;
            else if (strcmp(cmd, "raw") == 0)
                o->cmd = BENCH_RAW;
            else if (strcmp(cmd, "claimcost") == 0)
                o->cmd = BENCH_CLAIMCOST;
            else if (strcmp(cmd, "report") == 0)
                o->cmd = BENCH_REPORT;
            else {
                bench_err("unknown command \"%s\" (producer, steady, drain, raw, claimcost, "
                          "report, or --smoke)",
                          cmd);
                return -1;
            }
            continue;
        }
        if (c == '?' || c == ':') {
            if (c == ':')
                bench_err("%s needs a value", argv[optind - 1]);
            else
                bench_err("unknown option %s (see --help)", argv[optind - 1]);
            return -1;
        }
        if (c == 'h' || c == O_HELP) {
            bench_usage(stdout);
            return 1;
        }
        seen[c - O_DB] = 1;
        switch (c) {
        case O_DB: o->db = optarg; break;
        case O_NATS: o->nats = optarg; break;
        case O_START_SERVERS: o->start_servers = 1; break;
        case O_SERVERS_SCRIPT: o->servers_script = optarg; break;
        case O_OUTBOXD: o->outboxd = optarg; break;
        case O_JSON: o->json_file = optarg; break;
        case O_SMOKE: smoke = 1; break;
        case O_QUIET: o->quiet = 1; break;
        case O_CONNECTIONS:
            if ((o->nconnections = bench_parse_list(optarg, "--connections", 1, 190, o->connections,
                                                    BENCH_LIST_MAX)) < 0)
                return -1;
            break;
        case O_BATCH:
            if (bench_parse_long(optarg, "--batch", 1, 10000, &o->batch) != 0)
                return -1;
            break;
        case O_SECONDS:
            if (bench_parse_double(optarg, "--seconds", 0.1, 3600, &o->seconds) != 0)
                return -1;
            seconds_set = 1;
            break;
        case O_BODY_SIZE:
            if (bench_parse_long(optarg, "--body-size", 0, 1 << 20, &o->body_size) != 0)
                return -1;
            break;
        case O_HEADERS:
            if (bench_parse_long(optarg, "--headers", 0, 64, &o->headers) != 0)
                return -1;
            break;
        case O_API:
            if (strcmp(optarg, "sql") == 0)
                o->api = BENCH_API_SQL;
            else if (strcmp(optarg, "c") == 0)
                o->api = BENCH_API_C;
            else if (strcmp(optarg, "both") == 0)
                o->api = BENCH_API_BOTH;
            else {
                bench_err("--api: \"%s\" is not sql, c or both", optarg);
                return -1;
            }
            break;
        case O_RATE:
            if (bench_parse_double(optarg, "--rate", 0.1, 1e6, &o->rate) != 0)
                return -1;
            break;
        case O_JITTER: o->jitter = 1; break;
        case O_DELETE_DELIVERED: o->delete_delivered = 1; break;
        case O_GRACE:
            if (bench_parse_double(optarg, "--grace", 0, 600, &o->grace) != 0)
                return -1;
            break;
        case O_WORKERS:
            if ((o->nworkers =
                     bench_parse_list(optarg, "--workers", 1, 64, o->workers, BENCH_LIST_MAX)) < 0)
                return -1;
            break;
        case O_RELAY_ARG:
            if (add_relay_arg(o, optarg) != 0)
                return -1;
            break;
        case O_NATS_MODE:
            if (strcmp(optarg, "jetstream") == 0)
                o->nats_core = 0;
            else if (strcmp(optarg, "core") == 0)
                o->nats_core = 1;
            else {
                bench_err("--nats-mode: \"%s\" is not jetstream or core", optarg);
                return -1;
            }
            break;
        case O_BATCH_SIZE:
            if (bench_parse_long(optarg, "--batch-size", 1, 10000, &o->relay_batch) != 0)
                return -1;
            o->relay_batch_set = 1;
            break;
        case O_MESSAGES:
            if (bench_parse_long(optarg, "--messages", 1, 50000000, &o->messages) != 0)
                return -1;
            break;
        case O_REPEAT:
            if (bench_parse_long(optarg, "--repeat", 1, BENCH_REPEAT_MAX, &o->repeat) != 0)
                return -1;
            break;
        case O_TIMEOUT:
            if (bench_parse_double(optarg, "--timeout", 1, 86400, &o->timeout) != 0)
                return -1;
            break;
        case O_DELIVERED:
            if ((o->ndelivered = bench_parse_list(optarg, "--delivered", 0, BENCH_DELIVERED_MAX,
                                                  o->delivered, BENCH_LIST_MAX)) < 0)
                return -1;
            for (i = 1; i < o->ndelivered; i++) {
                if (o->delivered[i] <= o->delivered[i - 1]) {
                    bench_err("--delivered: \"%s\" is not ascending (the table grows from one "
                              "size to the next)",
                              optarg);
                    return -1;
                }
            }
            break;
        case O_ROUNDS:
            if (bench_parse_long(optarg, "--rounds", 1, 10000, &o->rounds) != 0)
                return -1;
            break;
        case O_QUICK: o->quick = 1; break;
        case O_PLOTS: o->plots_dir = optarg; break;
        case O_NO_CLAIMCOST: o->no_claimcost = 1; break;
        default: bench_err("unknown option (see --help)"); return -1;
        }
    }
    if (smoke && o->cmd != 0) {
        bench_err("--smoke runs every command: give no command with it");
        return -1;
    }
    if (smoke)
        o->cmd = BENCH_SMOKE;
    if (o->cmd == 0) {
        bench_err("no command given (producer, steady, drain, raw, claimcost, report, or --smoke; "
                  "see --help)");
        return -1;
    }
    for (i = 0; longopts[i].name != NULL; i++) {
        int id = longopts[i].val;

        if (seen[id - O_DB] && (applies[id - O_DB] & (int)o->cmd) == 0) {
            bench_err("--%s does not apply to %s", longopts[i].name, bench_cmd_name(o->cmd));
            return -1;
        }
    }
    if (o->cmd == BENCH_STEADY && o->nconnections != 1 && o->nconnections != 0) {
        bench_err("--connections: steady takes one number, not a list");
        return -1;
    }
    if (o->cmd == BENCH_STEADY && o->nworkers > 1) {
        bench_err("--workers: steady takes one number, not a list");
        return -1;
    }
    if (o->cmd == BENCH_REPORT && o->no_claimcost && seen[O_DELIVERED - O_DB]) {
        bench_err("--delivered: claimcost sizes, but --no-claimcost skips claimcost");
        return -1;
    }
    if (o->cmd == BENCH_STEADY && o->api == BENCH_API_BOTH) {
        bench_err("--api: steady takes sql or c, not both");
        return -1;
    }
    if (!o->start_servers && (o->db == NULL || o->db[0] == '\0')) {
        bench_err("no database: give --db CONNINFO, set OUTBOX_DB, or use --start-servers");
        return -1;
    }
    if (!o->start_servers && (o->nats == NULL || o->nats[0] == '\0')) {
        bench_err("no NATS server: give --nats URL, set OUTBOX_NATS_URL, or use --start-servers");
        return -1;
    }
    command_defaults(o, seconds_set);
    return 0;
}
