#!/usr/bin/env bash
# The one-machine cluster (scripts/cluster.sh: 6 Redis, 3 NATS, 3 hosts, nginx) next to a single
# node (one redis-server, one nats-server, one host), selling at full speed (huge stock, a new
# buyer per request, snatch-bench -m POST), and nginx `return 409` measured the same way in the
# same run as the yardstick. Everything shares this machine's cores: the cluster runs twelve
# servers plus nginx where the single node runs three, so this shows what the cluster costs
# here, not how it scales (docs/CLUSTER.md says how it does).
#
#   scripts/benchmark_cluster.sh [--conns "100 200"] [--duration S] [--out DIR]
# Rows: nginx return 409; single node (host direct, 2 threads); single node behind nginx
# (examples/nginx/snatch.conf); cluster, one event (one Redis master); cluster, three events
# (one per master, three snatch-bench at once, conns/3 each). Prints a markdown table.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
conns="100 200" dur=5 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --conns) conns="$2"; shift ;;
    --duration) dur="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "benchmark_cluster: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck source=lib/stack.sh
source "$ROOT/scripts/lib/stack.sh"
# shellcheck source=lib/nginx_ref.sh
source "$ROOT/scripts/lib/nginx_ref.sh"
BENCH="${STACK_BUILD}/snatch-bench"
[ -x "$BENCH" ] || { echo "benchmark_cluster: $BENCH missing (scripts/setup.sh)" >&2; exit 1; }
out="${out:-$ROOT/results/cluster-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
rows="$out/rows.txt"
: >"$rows"
cdir=""
stack_up=0
lb_pid=""
cleanup() {
    [ "$stack_up" = 1 ] && stack_stop >/dev/null 2>&1
    [ -n "$lb_pid" ] && kill "$lb_pid" 2>/dev/null
    [ -n "$cdir" ] && "$ROOT/scripts/cluster.sh" down --dir "$cdir" >/dev/null 2>&1
    nginx_ref_stop || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# bench LABEL CONNS URL... : one snatch-bench per URL at once (conns split between them); one
# row "label conns answers/s sales/s p50 p99" (latencies: the worst of the runs).
bench() {
    local label="$1" c="$2" i=0 pids=()
    shift 2
    local each=$((c / $#))
    for url in "$@"; do
        "$BENCH" --quiet -t 1 -c "$each" -d "$dur" -m POST --json "$out/b$i.json" "$url" \
            >/dev/null 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    python3 - "$label" "$c" "$out"/b*.json >>"$rows" <<'PY'
import json, sys
label, c, runs = sys.argv[1], sys.argv[2], [json.load(open(p)) for p in sys.argv[3:]]
rps = sum(r["rps"] for r in runs)
sales = sum(r.get("status", {}).get("200", 0) / r["duration_s"] for r in runs)
p50 = max(r["latency_us"]["p50"] for r in runs)
p99 = max(r["latency_us"]["p99"] for r in runs)
print(label, c, round(rps), round(sales), p50, p99)
PY
    rm -f "$out"/b*.json
    tail -1 "$rows"
}

nginx_ref_start 2
for c in $conns; do bench nginx-return-409 "$c" "$NGINX_REF_URL"; done
nginx_ref_stop

stack_start --threads 2 >/dev/null
stack_up=1
lb_port=$(stack_free_port)
# The shipped balancer in front of the one host (the harness writes its nginx.conf).
lb_dir="$out/nginx"
mkdir -p "$lb_dir"
SNATCH_SOURCE_DIR="$ROOT" SNATCH_BUILD_DIR="$STACK_BUILD" python3 - "$lb_dir" "${STACK_HOST_PORTS[0]}" "$lb_port" >/dev/null <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["SNATCH_SOURCE_DIR"], "tests", "integration"))
from harness import Nginx
n = Nginx(sys.argv[1], [int(sys.argv[2])], port=int(sys.argv[3]), workers=2)
print(n.write())
PY
nginx -p "$lb_dir/nginx-$lb_port" -c "$lb_dir/nginx-$lb_port/nginx.conf" \
    -e "$lb_dir/nginx-$lb_port/error.log" &
lb_pid=$!
stack_wait_port "$lb_port" 10 "$lb_pid"
for c in $conns; do
    stack_create_event "one$c" 1000000000 1 >/dev/null
    bench single-node "$c" "$STACK_URL/v1/events/one$c/snatch"
    stack_create_event "lb$c" 1000000000 1 >/dev/null
    bench single-node-behind-nginx "$c" "http://127.0.0.1:$lb_port/v1/events/lb$c/snatch"
done
kill "$lb_pid"
wait "$lb_pid" 2>/dev/null || true
lb_pid=""
stack_stop >/dev/null 2>&1
stack_up=0

cdir="$out/cluster"
"$ROOT/scripts/cluster.sh" up --dir "$cdir" >/dev/null
eval "$("$ROOT/scripts/cluster.sh" env --dir "$cdir")"
create() { curl -fsS -X PUT -H "Authorization: Bearer $(cat "$CLUSTER_TOKEN_FILE")" \
    -d '{"stock":1000000000,"per_user_limit":1}' "$CLUSTER_ADMIN_URL/admin/events/$1" >/dev/null; }
for c in $conns; do
    create "c1e$c"
    bench cluster-1-event "$c" "$CLUSTER_URL/v1/events/c1e$c/snatch"
    urls=()
    for ev in $("$ROOT/scripts/cluster.sh" events --dir "$cdir" --prefix "c3e${c}x"); do
        create "$ev"
        urls+=("$CLUSTER_URL/v1/events/$ev/snatch")
    done
    bench cluster-3-events "$c" "${urls[@]}"
done
"$ROOT/scripts/cluster.sh" down --dir "$cdir" >/dev/null
cdir=""

echo
echo "| target | conns | answers/s | sales/s | p50 us | p99 us | answers vs nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|"
python3 - "$rows" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ref = {r[1]: float(r[2]) for r in rows if r[0] == "nginx-return-409"}
for label, c, rps, sales, p50, p99 in rows:
    ratio = float(rps) / ref[c] if ref.get(c) else 0
    print("| %s | %s | %s | %s | %s | %s | %.2f |" % (
        label, c, rps, sales if label != "nginx-return-409" else "-", p50, p99, ratio))
PY
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); raw rows in $rows)"
