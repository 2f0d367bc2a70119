#!/usr/bin/env bash
# Throw-away PostgreSQL 15 + nats-server (JetStream) on free 127.0.0.1 ports,
# for the ctest "servers" fixture, private outage tests (harness.c) and demo.sh.
# Invariants: nothing ever listens beyond 127.0.0.1; every wait is bounded;
# DIR/state records what runs so a later `start` or `stop` can clean up after
# a crashed run; `stop` is idempotent. Consumers read DIR/env (KEY=VALUE,
# values shell-quoted).
set -euo pipefail

usage() {
    echo "usage: servers.sh start DIR [--durable] | stop DIR |" \
        "pg-stop DIR | pg-start DIR | nats-stop DIR | nats-start DIR" >&2
    exit 2
}

die() {
    echo "servers.sh: $*" >&2
    exit 1
}

# Single-quote for a shell (and for harness.c's parser): a'b -> 'a'\''b'.
shq() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port in 20000-60999 on which nothing listens now. Another process may
# still take it before we bind; callers retry on bind failure.
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 41000))
        if ! port_busy "$p"; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found on 127.0.0.1 after 200 tries"
}

# Is $1 a live process whose command line contains $2? Guards every kill
# against a pid reused by an unrelated process.
pid_is() {
    local pid=$1 pat=$2
    [[ -n $pid && $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pat"
}

# Wait up to $2 tenths of a second for pid $1 to exit.
wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

log_tail() {
    if [[ -f $1 ]]; then
        echo "--- last lines of $1:" >&2
        tail -n 20 "$1" >&2 || true
    fi
}

find_pg_bin() {
    local d
    for d in /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)"; do
        if [[ -n $d && -x $d/pg_ctl && -x $d/initdb ]]; then
            echo "$d"
            return 0
        fi
    done
    d=$(command -v pg_ctl 2>/dev/null || true)
    [[ -n $d ]] && { dirname "$d"; return 0; }
    die "PostgreSQL server binaries (initdb, pg_ctl) not found; run tools/deps.sh"
}

find_nats_bin() {
    local b
    for b in /usr/bin/nats-server /usr/sbin/nats-server "$(command -v nats-server 2>/dev/null || true)"; do
        [[ -n $b && -x $b ]] && { echo "$b"; return 0; }
    done
    die "nats-server not found; run tools/deps.sh"
}

# PostgreSQL refuses to run as root: pick (or make) an unprivileged user.
pick_run_user() {
    if [[ $(id -u) != 0 ]]; then
        id -un
        return 0
    fi
    if id postgres >/dev/null 2>&1; then
        echo postgres
        return 0
    fi
    if ! id outbox-test >/dev/null 2>&1; then
        # A concurrent run may create it first; only the end state matters.
        useradd --system --no-create-home --shell /usr/sbin/nologin outbox-test \
            >/dev/null 2>&1 || true
        id outbox-test >/dev/null 2>&1 || die "useradd outbox-test failed"
    fi
    echo outbox-test
}

# Run a PostgreSQL tool as RUN_USER, from a directory that user can enter.
as_pg() {
    if [[ $(id -u) == 0 ]]; then
        (cd "$TMPD" && runuser -u "$RUN_USER" -- "$@")
    else
        (cd "$TMPD" && "$@")
    fi
}

write_state() {
    {
        echo "MODE=$(shq "$MODE")"
        echo "TMPD=$(shq "$TMPD")"
        echo "RUN_USER=$(shq "$RUN_USER")"
        echo "PG_BIN=$(shq "$PG_BIN")"
        echo "NATS_BIN=$(shq "$NATS_BIN")"
        echo "PG_PORT=$(shq "$PG_PORT")"
        echo "NATS_PORT=$(shq "$NATS_PORT")"
        echo "NATS_PID=$(shq "$NATS_PID")"
        echo "PG_HOST=$(shq "${PG_HOST:-}")"
        echo "PG_USER=$(shq "${PG_USER:-}")"
        echo "DB=$(shq "${DB:-}")"
        echo "NATS_URL=$(shq "${NATS_URL:-}")"
    } >"$DIR/state.tmp"
    mv -f "$DIR/state.tmp" "$DIR/state"
}

write_env() {
    {
        echo "OUTBOX_TEST_PG_HOST=$(shq "$PG_HOST")"
        echo "OUTBOX_TEST_PG_PORT=$(shq "$PG_PORT")"
        echo "OUTBOX_TEST_PG_USER=$(shq "$PG_USER")"
        echo "OUTBOX_TEST_DB=$(shq "$DB")"
        echo "OUTBOX_TEST_NATS=$(shq "$NATS_URL")"
        echo "OUTBOX_TEST_NATS_PORT=$(shq "$NATS_PORT")"
        echo "OUTBOX_TEST_DIR=$(shq "$TMPD")"
        echo "OUTBOX_TEST_PG_PID=$(shq "$(pg_pid)")"
        echo "OUTBOX_TEST_NATS_PID=$(shq "$NATS_PID")"
    } >"$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"
}

load_state() {
    [[ -f $DIR/state ]] || return 1
    # shellcheck disable=SC1091
    source "$DIR/state"
}

pg_pid() {
    local p=""
    [[ -n ${TMPD:-} && -r $TMPD/pg/postmaster.pid ]] && p=$(head -n 1 "$TMPD/pg/postmaster.pid")
    echo "$p"
}

pg_init() {
    mkdir -p "$TMPD/pg"
    : >"$TMPD/pg.log"
    if [[ $(id -u) == 0 ]]; then
        chown "$RUN_USER" "$TMPD/pg" "$TMPD/pg.log"
    fi
    chmod 700 "$TMPD/pg"
    local sync=(--no-sync)
    ((DURABLE)) && sync=()
    if ! as_pg timeout 120 "$PG_BIN/initdb" -D "$TMPD/pg" -U postgres --auth=trust \
        -E UTF8 --locale=C "${sync[@]}" >"$TMPD/initdb.log" 2>&1; then
        log_tail "$TMPD/initdb.log"
        die "initdb failed (user $RUN_USER, dir $TMPD/pg)"
    fi
    {
        echo ""
        echo "# outbox test harness"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$TMPD/pg'"
        echo "max_connections = 200"
        if ((!DURABLE)); then
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >>"$TMPD/pg/postgresql.conf"
}

# Start the cluster on PG_PORT; returns 2 when the port could not be bound.
pg_try_start() {
    local from
    from=$(wc -l <"$TMPD/pg.log")
    if as_pg "$PG_BIN/pg_ctl" -D "$TMPD/pg" -l "$TMPD/pg.log" -o "-p $PG_PORT" \
        -w -t 60 start >>"$TMPD/pg_ctl.log" 2>&1; then
        return 0
    fi
    # pg_ctl may time out with a postmaster still starting: stop it.
    as_pg "$PG_BIN/pg_ctl" -D "$TMPD/pg" -m immediate -w -t 30 stop \
        >>"$TMPD/pg_ctl.log" 2>&1 || true
    if tail -n +"$((from + 1))" "$TMPD/pg.log" | grep -qE "could not (bind|create listen)"; then
        return 2
    fi
    return 1
}

pg_start_any_port() {
    local try rc
    for ((try = 1; try <= 8; try++)); do
        PG_PORT=$(free_port)
        rc=0
        pg_try_start || rc=$?
        ((rc == 0)) && return 0
        ((rc == 2)) || break
    done
    log_tail "$TMPD/pg.log"
    log_tail "$TMPD/pg_ctl.log"
    die "PostgreSQL failed to start (port $PG_PORT, data $TMPD/pg)"
}

pg_start_same_port() {
    local try rc
    [[ -d $TMPD/pg ]] || die "no PostgreSQL data dir in $TMPD"
    if [[ -n $(pg_pid) ]] && pid_is "$(pg_pid)" "$TMPD/pg"; then
        return 0
    fi
    # The port may linger for a moment after a stop; retry it a few times.
    for ((try = 1; try <= 10; try++)); do
        rc=0
        pg_try_start || rc=$?
        ((rc == 0)) && return 0
        ((rc == 2)) || break
        sleep 0.5
    done
    log_tail "$TMPD/pg.log"
    die "PostgreSQL failed to restart on port $PG_PORT (data $TMPD/pg)"
}

pg_stop() {
    local pid
    [[ -n ${TMPD:-} && -d $TMPD/pg ]] || return 0
    pid=$(pg_pid)
    [[ -n $pid ]] || return 0
    if ! pid_is "$pid" "$TMPD/pg"; then
        rm -f "$TMPD/pg/postmaster.pid"
        return 0
    fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$TMPD/pg" -m fast -w -t 30 stop \
        >>"$TMPD/pg_ctl.log" 2>&1; then
        echo "servers.sh: pg_ctl stop failed, killing postmaster $pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 100 || die "postmaster $pid did not exit"
        rm -f "$TMPD/pg/postmaster.pid"
    fi
}

# Start nats-server on NATS_PORT (detached: it must not hold ctest's pipes).
nats_try_start() {
    local i from from_out
    mkdir -p "$TMPD/nats"
    : >>"$TMPD/nats.log"
    : >>"$TMPD/nats.out"
    # Only what this attempt logs counts (the files survive restarts).
    from=$(stat -c %s "$TMPD/nats.log")
    from_out=$(stat -c %s "$TMPD/nats.out")
    setsid "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMPD/nats" \
        -l "$TMPD/nats.log" </dev/null >>"$TMPD/nats.out" 2>&1 &
    NATS_PID=$!
    for ((i = 0; i < 150; i++)); do
        if ! kill -0 "$NATS_PID" 2>/dev/null; then
            wait "$NATS_PID" 2>/dev/null || true
            NATS_PID=""
            if { tail -c +"$((from + 1))" "$TMPD/nats.log"
                tail -c +"$((from_out + 1))" "$TMPD/nats.out"; } |
                grep -qi "address already in use"; then
                return 2
            fi
            return 1
        fi
        if tail -c +"$((from + 1))" "$TMPD/nats.log" | grep -q "Server is ready" &&
            port_busy "$NATS_PORT"; then
            return 0
        fi
        sleep 0.1
    done
    kill -KILL "$NATS_PID" 2>/dev/null || true
    NATS_PID=""
    return 1
}

nats_start_any_port() {
    local try rc
    for ((try = 1; try <= 8; try++)); do
        NATS_PORT=$(free_port)
        rc=0
        nats_try_start || rc=$?
        ((rc == 0)) && return 0
        ((rc == 2)) || break
    done
    log_tail "$TMPD/nats.log"
    log_tail "$TMPD/nats.out"
    die "nats-server failed to start (port $NATS_PORT, store $TMPD/nats)"
}

nats_start_same_port() {
    local try rc
    if pid_is "${NATS_PID:-}" nats-server; then
        return 0
    fi
    for ((try = 1; try <= 10; try++)); do
        rc=0
        nats_try_start || rc=$?
        ((rc == 0)) && return 0
        ((rc == 2)) || break
        sleep 0.5
    done
    log_tail "$TMPD/nats.log"
    die "nats-server failed to restart on port $NATS_PORT (store $TMPD/nats)"
}

nats_stop() {
    local pid=${NATS_PID:-}
    NATS_PID=""
    pid_is "$pid" nats-server || return 0
    pid_is "$pid" "${TMPD:-/nonexistent}" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 100; then
        echo "servers.sh: nats-server $pid ignored TERM, killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || die "nats-server $pid did not exit"
    fi
}

do_stop() {
    load_state || { rm -f "$DIR/env"; return 0; }
    if [[ ${MODE:-} == local ]]; then
        pg_stop
        nats_stop
        if [[ -n ${TMPD:-} && $TMPD == /tmp/outbox-servers.* && -d $TMPD ]]; then
            rm -rf "$TMPD"
        fi
    fi
    rm -f "$DIR/env" "$DIR/state"
}

# Pull host/port/user out of a keyword=value conninfo (best effort).
conninfo_get() {
    local key=$1 ci=$2
    sed -nE "s/.*(^|[[:space:]])${key}[[:space:]]*=[[:space:]]*'?([^' ]*).*/\2/p" <<<"$ci"
}

do_start_external() {
    MODE=external TMPD="" RUN_USER="" PG_BIN="" NATS_BIN="" NATS_PID=""
    DB=$OUTBOX_TEST_DB
    NATS_URL=$OUTBOX_TEST_NATS
    PG_HOST=$(conninfo_get host "$DB")
    PG_PORT=$(conninfo_get port "$DB")
    PG_USER=$(conninfo_get user "$DB")
    PG_HOST=${PG_HOST:-127.0.0.1} PG_PORT=${PG_PORT:-5432} PG_USER=${PG_USER:-postgres}
    NATS_PORT=$(sed -nE 's#.*:([0-9]+)/?$#\1#p' <<<"$NATS_URL")
    NATS_PORT=${NATS_PORT:-4222}
    write_state
    write_env
    echo "servers.sh: using external servers: $DB / $NATS_URL"
}

do_start() {
    do_stop # leftovers of an earlier, crashed run
    if [[ -n ${OUTBOX_TEST_DB:-} && -n ${OUTBOX_TEST_NATS:-} ]]; then
        do_start_external
        return 0
    fi
    MODE=local PG_PORT="" NATS_PORT="" NATS_PID=""
    PG_BIN=$(find_pg_bin)
    NATS_BIN=$(find_nats_bin)
    RUN_USER=$(pick_run_user)
    TMPD=$(mktemp -d /tmp/outbox-servers.XXXXXX)
    chmod 755 "$TMPD" # the PostgreSQL user must traverse it
    echo "$DIR" >"$TMPD/state-dir" # lets harness.c find DIR from OUTBOX_TEST_DIR
    write_state       # from here on `stop` can clean up
    # Any failure below exits: take down whatever did start.
    trap 'write_state; do_stop' EXIT
    pg_init
    pg_start_any_port
    write_state
    nats_start_any_port
    PG_HOST=127.0.0.1 PG_USER=postgres
    DB="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
    NATS_URL="nats://127.0.0.1:$NATS_PORT"
    write_state
    trap - EXIT
    write_env
    echo "servers.sh: PostgreSQL on 127.0.0.1:$PG_PORT, nats-server on 127.0.0.1:$NATS_PORT ($TMPD)"
}

[[ $# -ge 2 ]] || usage
CMD=$1
DIR=$2
shift 2
DURABLE=0
for a in "$@"; do
    case $a in
    --durable) DURABLE=1 ;;
    *) usage ;;
    esac
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

case $CMD in
start) do_start ;;
stop) do_stop ;;
pg-stop | pg-start | nats-stop | nats-start)
    load_state || die "$CMD: no servers recorded in $DIR (run start first)"
    [[ $MODE == local ]] || die "$CMD: servers in $DIR are external, not ours to stop"
    case $CMD in
    pg-stop) pg_stop ;;
    pg-start) pg_start_same_port ;;
    nats-stop) nats_stop ;;
    nats-start) nats_start_same_port ;;
    esac
    write_state
    write_env
    ;;
*) usage ;;
esac
