#!/usr/bin/env bash
# The full snatch stack for benchmarks, on free loopback ports in a temp dir:
# redis-server, nats-server (JetStream), snatch-subscriber (SQLite) and snatch-host.
#
# Source it and call:
#   bench_stack_start [HOST_THREADS]  sets BENCH_HTTP (http://127.0.0.1:PORT), BENCH_TOKEN (admin
#                                     bearer token), BENCH_DB (SQLite file), BENCH_STACK_DIR
#   bench_stack_stop                  stops what bench_stack_start started (by PID), removes the dir
#   bench_event NAME STOCK [LIMIT]    creates or resets an event through the admin API
# When scripts/lib/stack.sh (the project's starter) exists and defines stack_start, it is used
# instead of the built-in starter (its STACK_URL, STACK_TOKEN, STACK_DB are mapped to BENCH_*).
# Binaries come from $BUILD_DIR (default build/, built with scripts/setup.sh when missing).

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-${SNATCH_BUILD_DIR:-$BENCH_ROOT/build}}"
BENCH_PIDS=()

bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_wait_port() {
    local port="$1" i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench_stack: nothing listens on port $port" >&2
    return 1
}

bench_build() {
    local b
    for b in snatch-host snatch-subscriber snatch-bench; do
        [ -x "$BUILD_DIR/$b" ] && continue
        if [ -x "$BENCH_ROOT/scripts/setup.sh" ] && [ "$BUILD_DIR" = "$BENCH_ROOT/build" ]; then
            "$BENCH_ROOT/scripts/setup.sh" >&2
        else
            cmake -S "$BENCH_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >&2 &&
                cmake --build "$BUILD_DIR" -j2 >&2
        fi
        break
    done
}

bench_stack_start() {
    local threads="${1:-2}"
    if [ -f "$BENCH_ROOT/scripts/lib/stack.sh" ]; then
        # shellcheck source=/dev/null
        source "$BENCH_ROOT/scripts/lib/stack.sh"
        if declare -F stack_start >/dev/null; then
            STACK_BUILD="$BUILD_DIR"
            bench_build
            stack_start --threads "$threads" || return 1
            BENCH_HTTP="${STACK_URL:?stack.sh must set STACK_URL}"
            BENCH_TOKEN="${STACK_TOKEN:?stack.sh must export STACK_TOKEN}"
            BENCH_DB="${STACK_DB:-}"
            BENCH_USES_STACK_SH=1
            return 0
        fi
    fi
    bench_build
    BENCH_STACK_DIR="$(mktemp -d /tmp/snatch-bench-stack.XXXXXX)"
    local d="$BENCH_STACK_DIR"
    local rport nport hport
    rport="$(bench_free_port)"
    nport="$(bench_free_port)"
    hport="$(bench_free_port)"
    redis-server --port "$rport" --bind 127.0.0.1 --dir "$d" --save '' --appendonly no \
        --daemonize no >"$d/redis.log" 2>&1 &
    BENCH_PIDS+=($!)
    mkdir -p "$d/js"
    nats-server -js -sd "$d/js" -a 127.0.0.1 -p "$nport" >"$d/nats.log" 2>&1 &
    BENCH_PIDS+=($!)
    bench_wait_port "$rport" && bench_wait_port "$nport" || return 1
    BENCH_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$BENCH_TOKEN" >"$d/token"
    BENCH_DB="$d/orders.db"
    "$BUILD_DIR/snatch-host" --listen "127.0.0.1:$hport" --threads "$threads" \
        --redis "127.0.0.1:$rport" --nats "nats://127.0.0.1:$nport" --host-id h1 --hosts 1 \
        --admin-token-file "$d/token" --allow-query-user "$BENCH_ROOT/lua/policy.lua" \
        >"$d/host.log" 2>&1 &
    BENCH_PIDS+=($!)
    bench_wait_port "$hport" || { tail -20 "$d/host.log" >&2; return 1; }
    "$BUILD_DIR/snatch-subscriber" --nats "nats://127.0.0.1:$nport" --db "$BENCH_DB" \
        >"$d/subscriber.log" 2>&1 &
    BENCH_PIDS+=($!)
    BENCH_HTTP="http://127.0.0.1:$hport"
}

bench_stack_stop() {
    if [ "${BENCH_USES_STACK_SH:-0}" = 1 ]; then
        stack_stop || true
        return 0
    fi
    local i pid
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${BENCH_PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BENCH_PIDS=()
    if [ -n "${BENCH_STACK_DIR:-}" ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        rm -rf "$BENCH_STACK_DIR"
    fi
}

bench_event() {
    local name="$1" stock="$2" limit="${3:-1}"
    curl -sf -X PUT -H "Authorization: Bearer $BENCH_TOKEN" \
        -d "{\"stock\":$stock,\"per_user_limit\":$limit}" \
        "$BENCH_HTTP/admin/events/$name?reset=1" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "usage: source $0; bench_stack_start [HOST_THREADS]; bench_event NAME STOCK [LIMIT];"
    echo "       ...; bench_stack_stop   (sets BENCH_HTTP, BENCH_TOKEN, BENCH_DB)"
    [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]
fi
