#!/bin/sh
# Benchmark (not a test): fills stream ORDERS with N orders (default 1 000 000) on a private
# nats-server, then measures how fast snatch-subscriber persists them into SQLite.
#   scripts/bench_subscriber.sh [BUILD_DIR] [N] [extra subscriber flags, e.g. --sync normal]
# Prints the fill rate (a reference for how loaded the machine is: compare runs only with
# similar fill rates), the persist rate, and the CPU seconds the subscriber and nats-server used
# (orders per subscriber CPU second barely moves when other work shares the machine).
# Progress is watched by ONE poller reading max(rowid) (a B-tree seek, while count(*) scans the
# table): a poller started every 100 ms would itself take a good part of a core.
# Servers run on free loopback ports in a temp dir and are stopped by PID at the end.
# SUB_WRAP="perf record -g -o /tmp/sub.data" runs the subscriber under a wrapper.
set -eu
BUILD=${1:-build}
N=${2:-1000000}
if [ $# -ge 2 ]; then shift 2; else shift $#; fi
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

# CPU seconds (user + system) a process used so far.
cpu() {
    python3 -c "
import os
f = open('/proc/$1/stat').read().rsplit(')', 1)[1].split()
print((int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))"
}

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

NATS_CPU0=$(cpu "$NATS_PID")
T0=$(date +%s.%N)
${SUB_WRAP:-} "$BUILD/snatch-subscriber" --nats "$URL" --db "$TMP/orders.db" "$@" \
    2>"$TMP/sub.log" &
SUB_PID=$!
# Waits until N rows are there (60 s at most); max(rowid) is the row count here because rows
# are only ever appended, then count(*) confirms it once.
python3 - "$TMP/orders.db" "$N" <<'EOF' || { echo "timeout"; cat "$TMP/sub.log"; exit 1; }
import sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
con = None
while time.monotonic() < deadline:
    try:
        con = con or sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
        top = con.execute("SELECT max(rowid) FROM orders").fetchone()[0] or 0
        if top >= n and con.execute("SELECT count(*) FROM orders").fetchone()[0] >= n:
            sys.exit(0)
    except sqlite3.Error:
        con = None
    time.sleep(0.05)
sys.exit(1)
EOF
T1=$(date +%s.%N)
SUB_CPU=$(cpu "$SUB_PID" 2>/dev/null || echo 0)
NATS_CPU=$(python3 -c "print($(cpu "$NATS_PID") - $NATS_CPU0)")
kill -TERM "$SUB_PID"; wait "$SUB_PID" || true; SUB_PID=
echo "subscriber: $N orders persisted in $(python3 -c "print(f'{$T1-$T0:.2f}')") s =" \
     "$(python3 -c "print(f'{$N/($T1-$T0):,.0f}')") orders/s (flags: ${*:-default})"
echo "cpu: subscriber ${SUB_CPU} s ($(python3 -c "print(f'{$N/max($SUB_CPU,0.01):,.0f}')")" \
     "orders per cpu s), nats-server ${NATS_CPU} s"
tail -n 3 "$TMP/sub.log"
