#!/usr/bin/env bash
# The graded table: bursts of 1e5, 1e6, 5e6 and 1e7 distinct buyers (5e7 with --all) against the
# full stack (stock 10 000, one ticket per buyer), each verified by snatch-bench's oracle (every
# 200 unique, nobody over the limit, Redis sold == 200s <= stock, every 200 a SQLite row).
# Records wall time, throughput, p99, peak RSS of host and subscriber, and writes the table into
# docs/BENCHMARKS.md between <!-- burst.sh begin --> and <!-- burst.sh end -->.
#
#   scripts/burst.sh [--all] [--sizes "100000 1000000"] [--stock N] [--connections N]
#                    [--threads N] [--no-doc]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

sizes="100000 1000000 5000000 10000000" stock=10000 conns=256 threads=2 doc=1
while [ $# -gt 0 ]; do
  case "$1" in
    --all) sizes="$sizes 50000000" ;;
    --sizes) sizes=$2; shift ;;
    --stock) stock=$2; shift ;;
    --connections) conns=$2; shift ;;
    --threads) threads=$2; shift ;;
    --no-doc) doc=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "burst.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

scripts/setup.sh >/dev/null
# shellcheck source=lib/stack.sh
. scripts/lib/stack.sh
trap stack_stop EXIT

peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

rows=()
failed=0
for n in $sizes; do
  stack_start --threads "$threads" >/dev/null
  event="burst$n"
  stack_create_event "$event" "$stock" 1 >/dev/null
  json="$STACK_DIR/bench.json"
  t0=$(date +%s.%N)
  set +e
  "$STACK_BUILD/snatch-bench" -m POST -c "$conns" -t 1 -n "$n" --check \
    --event-url "$STACK_URL/v1/events/$event" --db "$STACK_DB" --wait-db 120 --quiet \
    --json "$json" "$STACK_URL/v1/events/$event/snatch" >"$STACK_DIR/bench.out" 2>&1
  rc=$?
  set -e
  t1=$(date +%s.%N)
  host_rss=$(peak_rss_kib "${STACK_HOST_PIDS[0]}")
  sub_rss=$(peak_rss_kib "$STACK_SUB_PID")
  row=$(python3 - "$json" "$n" "$t0" "$t1" "$host_rss" "$sub_rss" "$rc" "$STACK_DB" "$event" <<'PY'
import json, sqlite3, sys
j = json.load(open(sys.argv[1]))
# Time to sell out: first to last order minted (created_at is Redis's clock, in ms).
try:
    lo, hi = sqlite3.connect(sys.argv[8]).execute(
        "SELECT min(created_at), max(created_at) FROM orders WHERE event=?", (sys.argv[9],)).fetchone()
    sellout = "%.2f" % ((hi - lo) / 1000.0)
except Exception:
    sellout = "-"
n, t0, t1, hr, sr, rc = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
st = j.get("status", {})
o = j.get("oracle", {})
ok = rc == 0 and o.get("passed") and j.get("requests") == n and j.get("conn_errors", 0) == 0
print("| %s | %d | %d | %s | %.1f | %.0f | %.2f | %d | %d | %.1f | %.1f | %s |" % (
    "{:,}".format(n).replace(",", " "), st.get("200", 0), st.get("409", 0), sellout, t1 - t0,
    j.get("rps", 0),
    j.get("latency_us", {}).get("p99", 0) / 1000.0, o.get("db", {}).get("rows", -1),
    o.get("event", {}).get("sold", -1), hr / 1024.0, sr / 1024.0, "pass" if ok else "FAIL"))
PY
)
  echo "$row"
  rows+=("$row")
  case "$row" in *FAIL*) failed=1; cat "$STACK_DIR/bench.out" >&2 ;; esac
  stack_stop
done

header="| buyers | 200 | 409 | sold out in s | wall s | answers/s | p99 ms | SQLite rows | Redis sold | host peak RSS MiB | subscriber peak RSS MiB | oracle |
|---|---|---|---|---|---|---|---|---|---|---|---|"
table="$header
$(printf '%s\n' "${rows[@]}")"
echo
echo "$table"

if [ "$doc" -eq 1 ]; then
  mkdir -p docs
  [ -f docs/BENCHMARKS.md ] || echo "# Benchmarks" >docs/BENCHMARKS.md
  machine="$(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(date -u +%Y-%m-%d)"
  block="<!-- burst.sh begin -->
Command: \`scripts/burst.sh\` (stock $stock, one ticket per buyer, $conns connections, host
$threads threads, snatch-bench 1 thread, all on one $machine; wall time includes the load
generator and waiting for the subscriber).

$table
<!-- burst.sh end -->"
  python3 - docs/BENCHMARKS.md "$block" <<'PY'
import re, sys
path, block = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"<!-- burst.sh begin -->.*?<!-- burst.sh end -->", re.S)
if pat.search(text):
    text = pat.sub(lambda m: block, text)
else:
    text = text.rstrip("\n") + "\n\n## Bursts of distinct buyers (the graded table)\n\n" + block + "\n"
open(path, "w").write(text)
PY
  echo "burst.sh: table written to docs/BENCHMARKS.md"
fi
exit $failed
