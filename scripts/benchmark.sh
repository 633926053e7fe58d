#!/usr/bin/env bash
# The snatch benchmark suite: snatch-bench against the full stack and the nginx reference.
#
# Scenarios, each over a list of concurrencies (connections), each run also checked by the oracle:
#   soldout  event with stock 1, sold out first, then the flood: every answer is 409 sold_out
#            (the local quota answers without Redis). nginx returning a static 409 is the yardstick.
#   selling  stock 10^9, per_user_limit 1, each request a new buyer: every answer is a sale
#            (Redis deduction + JetStream publish + ack); the oracle checks ids, limit, counters.
#   mixed    stock 20000, buyers drawn from 50000 ids with repeats: sales, limit_reached, then
#            sold_out; the oracle checks no oversell, no double sale, and the SQLite rows.
# Writes results/<timestamp>/results.csv, per-run JSON, PNG plots (gnuplot), prints a table of
# snatch/nginx ratios, and with --update-docs rewrites the section of docs/BENCHMARKS.md between
# <!-- benchmark.sh begin --> and <!-- benchmark.sh end -->.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    cat <<USAGE
usage: $0 [--quick] [--conns "50 100 200 400"] [--duration S] [--scenarios "soldout selling mixed"]
          [--host-threads N] [--bench-threads N] [--no-nginx] [--update-docs] [--out DIR]
  default: 4 concurrencies x 3 scenarios x 5 s + nginx, about 2.5 minutes
  --quick: concurrencies "50 200", 2 s runs, about 30 s
USAGE
}

conns="50 100 200 400" dur=5 scenarios="soldout selling mixed" host_threads=2 bench_threads=2
nginx=1 update_docs=0 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) conns="50 200"; dur=2 ;;
    --conns) conns="$2"; shift ;;
    --duration) dur="$2"; shift ;;
    --scenarios) scenarios="$2"; shift ;;
    --host-threads) host_threads="$2"; shift ;;
    --bench-threads) bench_threads="$2"; shift ;;
    --no-nginx) nginx=0 ;;
    --update-docs) update_docs=1 ;;
    --out) out="$2"; shift ;;
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
command -v gnuplot >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq gnuplot-nox >/dev/null; } || true

ts="$(date +%Y%m%d-%H%M%S)"
out="${out:-$ROOT/results/$ts}"
mkdir -p "$out"
csv="$out/results.csv"
echo "scenario,target,connections,rps,p50_us,p90_us,p99_us,p999_us,max_us,answers,status_200,conn_errors,timeouts,oracle_failures" >"$csv"

cleanup() {
    bench_stack_stop || true
    nginx_ref_stop || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_stack_start "$host_threads"
# Same number of workers as snatch-host has loop threads: the comparison is per machine.
[ "$nginx" = 1 ] && nginx_ref_start "$host_threads"

# Appends one CSV line from snatch-bench's JSON.
record() {
    local scenario="$1" target="$2" c="$3" json="$4"
    python3 - "$scenario" "$target" "$c" "$json" >>"$csv" <<'PY'
import json, sys
s, t, c, path = sys.argv[1:5]
r = json.load(open(path))
l = r["latency_us"]
o = r.get("oracle", {}).get("failures", 0)
print(",".join(str(x) for x in (s, t, c, round(r["rps"], 1), l["p50"], l["p90"], l["p99"],
      l["p999"], l["max"], r["answers"], r["status"].get("200", 0), r["conn_errors"],
      r["timeouts"], o)))
PY
}

oracle_fail=0
# run SCENARIO TARGET CONNS JSON -- snatch-bench args...
run() {
    local scenario="$1" target="$2" c="$3" json="$4"
    shift 5
    local rc=0
    timeout $((dur + 120)) "$BENCH" --quiet -t "$bench_threads" -c "$c" -d "$dur" \
        --json "$json" "$@" >"${json%.json}.txt" 2>&1 || rc=$?
    if [ ! -f "$json" ]; then
        echo "benchmark: $scenario/$target/$c produced no result (exit $rc):" >&2
        tail -5 "${json%.json}.txt" >&2
        return 0
    fi
    grep "oracle: FAIL" "${json%.json}.txt" >&2 && oracle_fail=1
    record "$scenario" "$target" "$c" "$json"
    printf '  %-8s %-6s c=%-4s %s\n' "$scenario" "$target" "$c" \
        "$(grep -E '^requests:' "${json%.json}.txt")"
}

n=0
for c in $conns; do
    if [ "$nginx" = 1 ]; then
        run nginx nginx "$c" "$out/nginx-c$c.json" -- -m POST "$NGINX_REF_URL"
    fi
    for s in $scenarios; do
        n=$((n + 1))
        ev="b${ts//-/}${s}${c}"
        url="$BENCH_HTTP/v1/events/$ev/snatch"
        evurl="$BENCH_HTTP/v1/events/$ev"
        case "$s" in
        soldout)
            bench_event "$ev" 1 1
            curl -sf -o /dev/null -X POST "$url?user=first" || true
            run soldout snatch "$c" "$out/soldout-c$c.json" -- -m POST --check \
                --event-url "$evurl" "$url"
            ;;
        selling)
            bench_event "$ev" 1000000000 1
            run selling snatch "$c" "$out/selling-c$c.json" -- -m POST --check \
                --event-url "$evurl" "$url"
            ;;
        mixed)
            bench_event "$ev" 20000 1
            run mixed snatch "$c" "$out/mixed-c$c.json" -- -m POST --users 50000 \
                --event-url "$evurl" ${BENCH_DB:+--db "$BENCH_DB" --wait-db 30} "$url"
            ;;
        *) echo "benchmark: unknown scenario $s" >&2; exit 2 ;;
        esac
    done
done

# Per-series data files for gnuplot: connections rps p99 p999.
series=""
for s in nginx $scenarios; do
    awk -F, -v s="$s" 'NR > 1 && $1 == s { print $3, $4, $7, $8 }' "$csv" | sort -n >"$out/$s.dat"
    [ -s "$out/$s.dat" ] && series="$series $s"
done
if command -v gnuplot >/dev/null && [ -n "$series" ]; then
    plot_rps="" plot_lat=""
    for s in $series; do
        plot_rps="$plot_rps'$out/$s.dat' using 1:2 with linespoints title '$s',"
        plot_lat="$plot_lat'$out/$s.dat' using 1:3 with linespoints title '$s p99',"
        plot_lat="$plot_lat'$out/$s.dat' using 1:4 with linespoints dashtype 2 title '$s p99.9',"
    done
    gnuplot <<GP || echo "benchmark: gnuplot failed" >&2
set terminal png size 900,540
set key outside right
set grid
set xlabel 'connections'
set output '$out/throughput.png'
set title 'throughput (answers/s)'
set ylabel 'answers/s'
plot ${plot_rps%,}
set output '$out/latency.png'
set title 'latency p99 and p99.9 (us)'
set ylabel 'microseconds'
set logscale y
plot ${plot_lat%,}
GP
fi

# The table: every snatch run with its nginx ratio at the same concurrency.
table="$(python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ref = {r["connections"]: r for r in rows if r["target"] == "nginx"}
print("| scenario | conns | answers/s | p50 us | p99 us | p99.9 us | vs nginx rps | vs nginx p99 | oracle |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    n = ref.get(r["connections"])
    rr = "%.2f" % (float(r["rps"]) / float(n["rps"])) if n and float(n["rps"]) else "-"
    rl = "%.2f" % (float(r["p99_us"]) / float(n["p99_us"])) if n and float(n["p99_us"]) else "-"
    if r["target"] == "nginx":
        rr = rl = "1.00"
    ok = "ok" if r["oracle_failures"] == "0" else "FAIL"
    print("| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |" % (
        r["scenario"], r["connections"], float(r["rps"]), r["p50_us"], r["p99_us"],
        r["p999_us"], rr, rl, ok))
PY
)"
echo
echo "$table"
echo
echo "results: $csv"
ls "$out"/*.png 2>/dev/null || true

if [ "$update_docs" = 1 ]; then
    doc="$ROOT/docs/BENCHMARKS.md"
    mkdir -p "$ROOT/docs"
    [ -f "$doc" ] || printf '# Benchmarks\n\n<!-- benchmark.sh begin -->\n<!-- benchmark.sh end -->\n' >"$doc"
    section="$out/section.md"
    {
        echo "Run of \`scripts/benchmark.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m);"
        echo "snatch-host --threads $host_threads, snatch-bench -t $bench_threads, ${dur} s per run, the"
        echo "load generator sharing the cores). Ratios are against nginx returning a static 409."
        echo
        echo "$table"
    } >"$section"
    python3 - "$doc" "$section" <<'PY'
import sys
doc, sec = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
b, e = "<!-- benchmark.sh begin -->", "<!-- benchmark.sh end -->"
if b in text and e in text and text.index(b) < text.index(e):
    head, rest = text.split(b, 1)
    tail = rest.split(e, 1)[1]
    text = head + b + "\n" + sec + e + tail
else:
    text = text.rstrip("\n") + "\n\n" + b + "\n" + sec + e + "\n"
open(doc, "w").write(text)
PY
    echo "updated $doc"
fi
exit "$oracle_fail"
