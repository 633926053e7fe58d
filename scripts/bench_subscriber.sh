#!/bin/sh
# Benchmark (not a test): fills stream ORDERS with N orders (default 1 000 000) on a private
# nats-server, then measures how fast snatch-subscriber persists them into SQLite.
#   scripts/bench_subscriber.sh [BUILD_DIR] [N] [extra subscriber flags, e.g. --sync normal]
# Servers run on free loopback ports in a temp dir and are stopped by PID at the end.
set -eu
BUILD=${1:-build}
N=${2:-1000000}
shift 2 2>/dev/null || shift $#
TMP=$(mktemp -d /tmp/snatch-bench-sub-XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=nats://127.0.0.1:$PORT
NATS_PID=
SUB_PID=
cleanup() {
    [ -n "$SUB_PID" ] && kill "$SUB_PID" 2>/dev/null || true
    [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

nats-server -js -sd "$TMP/nats" -a 127.0.0.1 -p "$PORT" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
i=0
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "nats-server did not start"; exit 1; }; sleep 0.1
done

echo "filling ORDERS with $N orders..."
T0=$(date +%s.%N)
"$BUILD/orders-fill" --nats "$URL" --count "$N"
T1=$(date +%s.%N)
echo "fill: $(python3 -c "print(f'{$N/($T1-$T0):,.0f}')") msg/s (async publish, 4096 in flight)"

count() {
    python3 -c "
import sqlite3,sys
try:
    c=sqlite3.connect('file:$TMP/orders.db?mode=ro',uri=True,timeout=5)
    print(c.execute('select count(*) from orders').fetchone()[0])
except Exception: print(0)"
}
T0=$(date +%s.%N)
"$BUILD/snatch-subscriber" --nats "$URL" --db "$TMP/orders.db" "$@" 2>"$TMP/sub.log" &
SUB_PID=$!
i=0
while [ "$(count)" -lt "$N" ]; do
    i=$((i + 1)); [ $i -lt 6000 ] || { echo "timeout"; cat "$TMP/sub.log"; exit 1; }
    sleep 0.1
done
T1=$(date +%s.%N)
kill -TERM "$SUB_PID"; wait "$SUB_PID" || true; SUB_PID=
echo "subscriber: $N orders persisted in $(python3 -c "print(f'{$T1-$T0:.2f}')") s =" \
     "$(python3 -c "print(f'{$N/($T1-$T0):,.0f}')") orders/s (flags: ${*:-default})"
tail -n 3 "$TMP/sub.log"
