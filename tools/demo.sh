#!/usr/bin/env bash
# The outbox in one command, on a fresh machine: installs what is missing,
# builds, starts a throw-away PostgreSQL + nats-server on free loopback ports,
# runs the relay and a subscriber, produces orders (some rolled back) and
# checks that exactly the committed ones arrive. Everything it started is
# stopped on exit, Ctrl-C included. Extra arguments go to outbox-demo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${OUTBOX_BUILD_DIR:-$ROOT/build}
BIN=$BUILD/bin
WAIT_S=30 # for the last committed message to arrive

RELAY_PID="" SUB_PID="" TAIL_PID="" ENVDIR="" OK=0

say() { echo "demo: $*"; }

# Stop pid $1 with TERM, bounded, then KILL. Sets STOPPED_STATUS.
stop_pid() {
    local pid=$1 i
    STOPPED_STATUS=0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: process $pid ignored TERM for 10 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || STOPPED_STATUS=$?
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$SUB_PID"
    stop_pid "$TAIL_PID"
    stop_pid "$RELAY_PID"
    if ((!OK)) && [[ -n $ENVDIR && -s $ENVDIR/outboxd.log ]]; then
        echo "--- outboxd log:" >&2
        tail -n 40 "$ENVDIR/outboxd.log" >&2
    fi
    if [[ -n $ENVDIR ]]; then
        bash "$ROOT/tests/harness/servers.sh" stop "$ENVDIR" >/dev/null || true
        rm -rf "$ENVDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

say "1/7 dependencies"
bash "$ROOT/tools/deps.sh"

say "2/7 build ($BUILD)"
cmake -S "$ROOT" -B "$BUILD" >/dev/null
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target outboxd outboxstat outbox-demo outbox-sub \
    >"$BUILD/demo-build.log" 2>&1 || {
    tail -n 30 "$BUILD/demo-build.log" >&2
    echo "demo: build failed (log $BUILD/demo-build.log)" >&2
    exit 1
}

say "3/7 servers: PostgreSQL + nats-server (JetStream) on 127.0.0.1"
ENVDIR=$(mktemp -d /tmp/outbox-demo.XXXXXX)
bash "$ROOT/tests/harness/servers.sh" start "$ENVDIR"
# shellcheck disable=SC1091
source "$ENVDIR/env"
DB=$OUTBOX_TEST_DB
NATS=$OUTBOX_TEST_NATS
say "    DB   = $DB"
say "    NATS = $NATS"

say "4/7 schema and stream"
"$BIN/outboxd" migrate --db "$DB"
"$BIN/outboxd" stream add DEMO 'demo.>' --nats "$NATS"

say "5/7 relay (a supervisor, 2 workers and the keeper) and subscriber"
INSTANCE=demo-$$
"$BIN/outboxd" run --db "$DB" --nats "$NATS" --workers 2 --instance "$INSTANCE" \
    </dev/null >"$ENVDIR/outboxd.log" 2>&1 &
RELAY_PID=$!
"$BIN/outbox-sub" --nats "$NATS" --subject 'demo.>' --timeout-s 120 --total-s 600 \
    </dev/null >"$ENVDIR/sub.out" 2>"$ENVDIR/sub.err" &
SUB_PID=$!
# Core NATS delivers only to subscriptions that exist: wait for it.
for ((i = 0; i < 100; i++)); do
    grep -q listening "$ENVDIR/sub.err" 2>/dev/null && break
    kill -0 "$SUB_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q listening "$ENVDIR/sub.err" 2>/dev/null; then
    cat "$ENVDIR/sub.err" >&2
    echo "demo: outbox-sub did not subscribe" >&2
    exit 1
fi
tail -n +1 -f --pid="$SUB_PID" "$ENVDIR/sub.out" 2>/dev/null | sed -u 's/^/    received: /' &
TAIL_PID=$!
sleep 0.5
kill -0 "$RELAY_PID" 2>/dev/null || { echo "demo: outboxd run exited at start" >&2; exit 1; }

say "6/7 producer (outbox-demo${*:+ $*})"
"$BIN/outbox-demo" --db "$DB" "$@" | tee "$ENVDIR/demo.out"
committed=$(grep -c '^committed ' "$ENVDIR/demo.out" || true)
rolled=$(grep -c '^rolled back ' "$ENVDIR/demo.out" || true)

received=0
for ((i = 0; i < WAIT_S * 10; i++)); do
    received=$(wc -l <"$ENVDIR/sub.out")
    ((received >= committed)) && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.1
done
sleep 0.5 # anything beyond the committed ones (a bug) shows up too
received=$(wc -l <"$ENVDIR/sub.out")

say "7/7 summary"
say "    live stats (outboxstat -i $INSTANCE -1):"
"$BIN/outboxstat" -i "$INSTANCE" -1 | sed 's/^/    /' || true
stream=$("$BIN/outboxd" stream info DEMO --nats "$NATS" | sed -n 's/^messages: *//p')
leaked=0
while read -r key; do
    if grep -q " key=$key " "$ENVDIR/sub.out"; then
        echo "demo: rolled-back $key was published!" >&2
        leaked=$((leaked + 1))
    fi
done < <(sed -n 's/^rolled back \([^ ]*\).*/\1/p' "$ENVDIR/demo.out")
stop_pid "$RELAY_PID"
relay_status=$STOPPED_STATUS
RELAY_PID=""

echo "  committed   $committed"
echo "  rolled back $rolled"
echo "  received    $received"
echo "  stream DEMO holds ${stream:-?}"
echo "  relay exit  $relay_status"
if ((received == committed && leaked == 0)) && [[ ${stream:-} == "$committed" ]] &&
    ((relay_status == 0)); then
    OK=1
    say "OK: every committed message arrived once, no rolled-back one did"
    exit 0
fi
echo "demo: FAILED (expected $committed received and in the stream, none rolled back," \
    "relay exit 0)" >&2
exit 1
