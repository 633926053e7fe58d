#!/usr/bin/env bash
# Many-connections test: holds growing numbers of keep-alive connections to snatch's sold-out
# path (optionally also to the nginx reference) at a fixed open-loop request rate, and reports
# per level: connect errors, answers/s, latency. Connections are spread over loopback source
# addresses 127.0.0.1..127.0.0.N (--source) so one destination can take more than ~28k-64k.
# The file-descriptor limit is raised as far as the system lets this shell (bench and servers
# inherit it); levels beyond it are reported as connect errors, not hidden.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    cat <<USAGE
usage: $0 [--levels "1000 5000 10000"] [--rate R] [--duration S] [--host-threads N] [--nginx]
          [--url URL]
  --levels     connection counts to try (default "1000 5000 10000")
  --rate       total requests/s, open loop (default 20000)
  --duration   seconds per level (default 5)
  --nginx      also run every level against the nginx reference
  --url        an already running target instead of starting the stack
USAGE
}

levels="1000 5000 10000" rate=20000 dur=5 host_threads=2 nginx=0 url=""
while [ $# -gt 0 ]; do
    case "$1" in
    --levels) levels="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --duration) dur="$2"; shift ;;
    --host-threads) host_threads="$2"; shift ;;
    --nginx) nginx=1 ;;
    --url) url="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=lib/bench_stack.sh
source "$ROOT/scripts/lib/bench_stack.sh"
# shellcheck source=lib/nginx_ref.sh
source "$ROOT/scripts/lib/nginx_ref.sh"
BENCH="$BUILD_DIR/snatch-bench"
bench_build

max=0
for l in $levels; do [ "$l" -gt "$max" ] && max=$l; done
want=$((max * 2 + 1000))
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n) (wanted $want)"

tmp="$(mktemp -d /tmp/snatch-conns.XXXXXX)"
cleanup() {
    [ -z "$url" ] && bench_stack_stop
    nginx_ref_stop
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ -z "$url" ]; then
    bench_stack_start "$host_threads"
    ev="conns$(date +%s)"
    bench_event "$ev" 1 1
    curl -sf -o /dev/null -X POST "$BENCH_HTTP/v1/events/$ev/snatch?user=first" || true
    url="$BENCH_HTTP/v1/events/$ev/snatch"
fi
targets=("snatch|$url")
if [ "$nginx" = 1 ]; then
    nginx_ref_start 1
    targets+=("nginx|$NGINX_REF_URL")
fi

printf '%-7s %8s %10s %10s %9s %9s %9s %9s\n' target conns answers/s conn_err timeouts \
    p50_us p99_us p999_us
for t in "${targets[@]}"; do
    name="${t%%|*}" target="${t#*|}"
    for l in $levels; do
        # Some 20000 connections per source address keep clear of the ephemeral port range.
        nsrc=$(((l + 19999) / 20000))
        [ "$nsrc" -gt 200 ] && nsrc=200
        json="$tmp/$name-$l.json"
        timeout $((dur + 120)) "$BENCH" --quiet -t 2 -c "$l" -d "$dur" --rate "$rate" \
            --timeout 10000 --source "1-$nsrc" -m POST --json "$json" "$target" \
            >"$tmp/$name-$l.txt" 2>&1 || true
        if [ ! -f "$json" ]; then
            echo "$name $l: no result"; tail -3 "$tmp/$name-$l.txt"; continue
        fi
        python3 - "$name" "$l" "$json" <<'PY'
import json, sys
n, c, p = sys.argv[1:4]
r = json.load(open(p))
l = r["latency_us"]
print("%-7s %8s %10.0f %10d %9d %9d %9d %9d" % (n, c, r["rps"], r["conn_errors"], r["timeouts"],
      l["p50"], l["p99"], l["p999"]))
PY
    done
done
