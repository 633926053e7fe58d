#!/usr/bin/env bash
# Many keep-alive connections against one snatch-host: holds N connections (100 000 by default)
# open at once on the sold-out path, and reports the host's memory per connection (VmRSS with
# the connections open minus before, divided by N) and that requests on them are still served
# (answers, errors, latency while all N are open). Connections are spread over loopback source
# addresses 127.0.0.1..127.0.0.K (--source) so one destination can take more than the ~28k
# ephemeral ports of one source address. Loopback only, bounded in time, stops what it started.
#
#   scripts/connections.sh [--conns N] [--rate R] [--duration S] [--host-threads N] [--nginx]
#     --conns N        connections to hold (default 100000; capped by the open-files limit,
#                      which is said when it happens)
#     --rate R         total requests/s over all connections while they are held (default 20000)
#     --duration S     seconds to hold them (default 10)
#     --host-threads N snatch-host loop threads (default 2)
#     --nginx          also hold them against the nginx reference (its RSS per connection too)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

conns=100000 rate=20000 dur=10 host_threads=2 nginx=0
while [ $# -gt 0 ]; do
    case "$1" in
    --conns) conns="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --duration) dur="$2"; shift ;;
    --host-threads) host_threads="$2"; shift ;;
    --nginx) nginx=1 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "connections.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

scripts/setup.sh >/dev/null
# shellcheck source=lib/stack.sh
source scripts/lib/stack.sh
# shellcheck source=lib/nginx_ref.sh
source scripts/lib/nginx_ref.sh

# Both ends hold one descriptor per connection: the limit of one process bounds N.
ulimit -n "$((conns + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
if [ "$conns" -gt $((limit - 1000)) ]; then
    echo "connections.sh: open-files limit is $limit here (hard limit $(ulimit -Hn), not raisable" \
        "in this environment): holding $((limit - 1000)) connections instead of $conns"
    conns=$((limit - 1000))
fi

cleanup() { stack_stop; nginx_ref_stop 2>/dev/null || true; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

hold() { # name url pid-to-measure
    local name=$1 url=$2 pid=$3 json="$STACK_DIR/$1.json"
    local nsrc=$(((conns + 19999) / 20000))
    local before mid
    before=$(rss_kib "$pid")
    "$STACK_BUILD/snatch-bench" --quiet -t 2 -c "$conns" -d "$dur" --rate "$rate" --timeout 20000 \
        --source "1-$nsrc" -m POST --json "$json" "$url" >"$STACK_DIR/$name.out" 2>&1 &
    local bp=$!
    # Measure once every connection is up and has been used: well into the run.
    sleep $((dur * 2 / 3 + 1))
    mid=$(rss_kib "$pid")
    wait "$bp" || true
    python3 - "$name" "$conns" "$before" "$mid" "$json" <<'PY'
import json, sys
name, n, before, mid, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
l = r["latency_us"]
per = (mid - before) * 1024.0 / n
print("%-7s conns %6d  RSS %7.1f -> %7.1f MiB  %6.0f bytes/conn  answers %8d (%6.0f/s)  "
      "conn errors %d  timeouts %d  p50 %d us  p99 %d us" % (
      name, n, before / 1024.0, mid / 1024.0, per, r["answers"], r["rps"], r["conn_errors"],
      r["timeouts"], l["p50"], l["p99"]))
PY
}

stack_start --threads "$host_threads" >/dev/null
stack_create_event conns 1 1 >/dev/null
curl -sf -o /dev/null -X POST "$STACK_URL/v1/events/conns/snatch?user=first" || true
echo "holding $conns connections for ${dur}s at $rate requests/s (sold-out path)"
hold snatch "$STACK_URL/v1/events/conns/snatch" "${STACK_HOST_PIDS[0]}"
if [ "$nginx" -eq 1 ]; then
    nginx_ref_start "$host_threads"
    npid=$NGINX_REF_PID
    # nginx's memory is in its workers: measure the first one.
    wpid=$(pgrep -P "$npid" | head -1)
    hold nginx "$NGINX_REF_URL" "${wpid:-$npid}"
fi
