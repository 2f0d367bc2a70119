#!/usr/bin/env bash
# Install what outbox needs to build and test, on Debian 12: only packages
# that are missing (dpkg -s), with apt-get, one `apt-get update` first when
# anything is missing. Touches no running service; the PostgreSQL server is
# only needed as binaries (tests start their own clusters on free ports).
# Usage: tools/deps.sh [--valgrind]
set -euo pipefail

PKGS=(build-essential cmake pkg-config libpq-dev libnats-dev libcmocka-dev libinih-dev
    libjansson-dev uuid-dev libsystemd-dev nats-server postgresql-15)

for a in "$@"; do
    case $a in
    --valgrind) PKGS+=(valgrind) ;;
    -h | --help)
        echo "usage: tools/deps.sh [--valgrind]"
        exit 0
        ;;
    *)
        echo "deps.sh: unknown option $a" >&2
        exit 2
        ;;
    esac
done

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps.sh: all ${#PKGS[@]} packages present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps.sh: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
    exit 1
fi
SUDO=()
if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "deps.sh: missing packages (${missing[*]}); run as root or install sudo" >&2
        exit 1
    fi
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# apt-get has no time limit of its own; a dead mirror must not hang CI.
if ! "${SUDO[@]}" timeout 900 apt-get update -qq; then
    echo "deps.sh: apt-get update failed" >&2
    exit 1
fi
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -qq \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}"; then
    echo "deps.sh: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
echo "deps.sh: installed ${missing[*]}"
