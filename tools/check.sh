#!/usr/bin/env bash
# The project's test command (README and CI): install missing dependencies,
# build with -Werror, run every unit and integration test (the ctest fixture
# starts PostgreSQL and nats-server on free loopback ports). Exit 0 = passed.
# Usage: tools/check.sh [--sanitize | --valgrind]
# Build dir: build/ (build-asan/ with --sanitize), or $OUTBOX_BUILD_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANITIZE=0
VALGRIND=0
for a in "$@"; do
    case $a in
    --sanitize) SANITIZE=1 ;;
    --valgrind) VALGRIND=1 ;;
    -h | --help)
        sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "check.sh: unknown option $a (use --sanitize or --valgrind)" >&2
        exit 2
        ;;
    esac
done
if ((SANITIZE && VALGRIND)); then
    echo "check.sh: --sanitize and --valgrind exclude each other; run them one by one" >&2
    exit 2
fi

JOBS=$(nproc 2>/dev/null || echo 2)
((JOBS > 2)) || JOBS=2

step() { echo "==> $*"; }

step "dependencies"
if ((VALGRIND)); then
    bash "$ROOT/tools/deps.sh" --valgrind
else
    bash "$ROOT/tools/deps.sh"
fi

# OUTBOX_BUILD_DIR: another build dir (e.g. to keep a developer's build/).
BUILD=${OUTBOX_BUILD_DIR:-$ROOT/build}
CMAKE_ARGS=(-DOUTBOX_WERROR=ON -DOUTBOX_TESTS=ON -DOUTBOX_FAULT_INJECTION=ON)
if ((SANITIZE)); then
    BUILD=${OUTBOX_BUILD_DIR:-$ROOT/build-asan}
    CMAKE_ARGS+=(-DOUTBOX_SANITIZE=ON)
    # Leaks fail the run; ASan reports on stderr, ctest shows it on failure.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
    CMAKE_ARGS+=(-DOUTBOX_SANITIZE=OFF)
fi

step "configure $BUILD"
cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}"
step "build"
cmake --build "$BUILD" -j"$JOBS"

CTEST=(ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS")
if ((VALGRIND)); then
    # Definite leaks and memory errors fail a test; cnats keeps some state
    # reachable until nats_Close(), which is not an error.
    VG_OPTS="--leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"
    VG_OPTS+=" --error-exitcode=1 --child-silent-after-fork=yes --num-callers=30"
    CTEST+=(-T memcheck --overwrite "MemoryCheckCommand=$(command -v valgrind)"
        --overwrite "MemoryCheckCommandOptions=$VG_OPTS")
fi

step "test (${CTEST[*]})"
LOG=$BUILD/check-ctest.log
set +e
"${CTEST[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
# A crashed run may leave the fixture's servers up: stopping is idempotent.
bash "$ROOT/tests/harness/servers.sh" stop "$BUILD/testenv" >/dev/null 2>&1 || true

summary=$(grep -E '^[0-9]+% tests passed' "$LOG" | tail -n 1 || true)
if [[ $rc -eq 0 && -n $summary ]]; then
    echo "check.sh: OK: $summary"
    exit 0
fi
echo "check.sh: FAILED: ${summary:-ctest produced no summary} (exit $rc; log $LOG)" >&2
exit 1
