#!/usr/bin/env bash
# The selling path at full speed: huge stock, a new buyer per request, the full stack (Redis with
# AOF appendfsync always, JetStream file store, subscriber), with snatch-bench and wrk over a few
# concurrencies, next to nginx `return 409` measured the same way in the same run.
#
# Per run: durable sales/s (200s: JetStream acknowledged; from the host's /metrics), answers/s,
# p50/p99/p99.9, Redis CPU microseconds per sale (/proc/<redis pid>/stat utime+stime+cutime+cstime over the run
# divided by the sales; the same for NATS, the subscriber and the host) and the mean deduction batch size (snatch_deduct_batch_size in /metrics;
# "-" for a build without it). The load tool's own CPU per request (its user+system time) is
# recorded for every run, and nginx's (its workers' utime+stime) per answer in the host column of
# its rows, so the CPU budget of a sale can be read off one run. --soldout also runs each build's
# host against a sold-out event (every answer a 409 from the local quota: the host's HTTP floor,
# host CPU per answer in the host column, target LABEL-soldout). Several builds can be compared in one session (before/after): each
# round starts a fresh stack per build, in alternating order, so that load from elsewhere on the
# machine falls on both alike; the load average is recorded with every run.
# Writes OUT/sell.csv and prints a table of medians over the rounds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    cat <<USAGE
usage: $0 [--builds "after=build before=/tmp/base/build"] [--conns "50 100 200"] [--duration S]
          [--rounds N] [--tools "bench wrk"] [--no-nginx] [--soldout] [--out DIR]
  default: --builds "after=build" --conns "50 100 200" --duration 5 --rounds 1 --tools "bench wrk"
  A build is LABEL=DIR, or LABEL=DIR,ARG,ARG... to start its Redis with those arguments too, e.g.
  norewrite=build,--auto-aof-rewrite-percentage,0 (no AOF rewrite during the run).
USAGE
}

builds="after=$ROOT/build" conns="50 100 200" dur=5 rounds=1 tools="bench wrk" nginx=1 out=""
soldout=0
while [ $# -gt 0 ]; do
    case "$1" in
    --builds) builds="$2"; shift ;;
    --conns) conns="$2"; shift ;;
    --duration) dur="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --tools) tools="$2"; shift ;;
    --no-nginx) nginx=0 ;;
    --soldout) soldout=1 ;;
    --out) out="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

# shellcheck source=lib/stack.sh
source "$ROOT/scripts/lib/stack.sh"
# shellcheck source=lib/nginx_ref.sh
source "$ROOT/scripts/lib/nginx_ref.sh"
BENCH="${BENCH:-$ROOT/build/snatch-bench}"
[ -x "$BENCH" ] || { echo "benchmark_sell: $BENCH missing (scripts/setup.sh)" >&2; exit 1; }

out="${out:-$ROOT/results/sell-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
csv="$out/sell.csv"
echo "round,target,tool,connections,answers_per_s,sales_per_s,p50_us,p99_us,p999_us,redis_us_per_sale,nats_us_per_sale,subscriber_us_per_sale,host_us_per_sale,mean_batch,load1,tool_us_per_req" >"$csv"
tmp="$(mktemp -d /tmp/snatch-sell.XXXXXX)"
stack_up=0
cleanup() {
    [ "$stack_up" = 1 ] && stack_stop
    nginx_ref_stop || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# wrk: a new buyer per request, and the figures as one JSON line (wrk prints no p99.9).
{ cat "$ROOT/scripts/lib/wrk_buyers.lua"; cat <<'LUA'; } >"$tmp/buyers.lua"
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"answers":%d,"duration_us":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9)))
end
LUA

# CPU ticks of Redis, NATS, the subscriber and the host, space separated: utime+stime plus
# cutime+cstime, so that Redis's AOF-rewrite children (forked as the AOF grows, and a real cost
# of every sale's bytes) count once they have exited; one still running at the end is missed.
stack_ticks() {
    local p
    for p in "$STACK_REDIS_PID" "$STACK_NATS_PID" "$STACK_SUB_PID" "${STACK_HOST_PIDS[0]}"; do
        awk '{ printf "%d ", $14 + $15 + $16 + $17 }' "/proc/$p/stat"
    done
}
metric() { # NAME-with-labels: value from the host's /metrics, 0 when absent
    curl -fsS -H "Authorization: Bearer $STACK_TOKEN" "$STACK_URL/metrics" 2>/dev/null |
        awk -v m="$1" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# measure TOOL URL CONNS -> "answers_per_s p50 p99 p999 tool_us_per_req" (latencies in microseconds)
# The tool's own user+system seconds go to $tmp/cpu.txt (bash's time keyword: the rusage of the
# tool, which timeout waits for).
measure() {
    local r
    r="$(measure_tool "$@")"
    set -- $r
    echo "$r $(awk -v a="$1" -v d="$dur" '{ printf "%.2f", (a > 0 ? ($1 + $2) * 1e6 / (a * d) : 0) }' \
        "$tmp/cpu.txt")"
}
measure_tool() {
    local tool="$1" url="$2" c="$3" TIMEFORMAT='%3U %3S'
    if [ "$tool" = wrk ]; then
        { time timeout $((dur + 60)) wrk -t1 -c"$c" -d"${dur}s" -s "$tmp/buyers.lua" "$url" \
            >"$tmp/wrk.txt" 2>&1 || true; } 2>"$tmp/cpu.txt"
        python3 - "$tmp/wrk.txt" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("WRKJSON "):
        r = json.loads(line[8:])
        print(round(r["answers"] / (r["duration_us"] / 1e6), 1), r["p50"], r["p99"], r["p999"])
        break
else:
    print("0 0 0 0")
PY
    else
        { time timeout $((dur + 60)) "$BENCH" --quiet -t 1 -c "$c" -d "$dur" -m POST \
            --json "$tmp/b.json" "$url" >/dev/null 2>&1 || true; } 2>"$tmp/cpu.txt"
        python3 - "$tmp/b.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    l = r["latency_us"]
    print(round(r["rps"], 1), l["p50"], l["p99"], l["p999"])
except Exception:
    print("0 0 0 0")
PY
        rm -f "$tmp/b.json"
    fi
}

# One run of TOOL at CONNS against the stack: MODE sell (a huge stock; CPU per sale) or soldout
# (an event of 1 ticket, so the rest are 409s from the local quota; CPU per answer).
sell_run() { # round label tool conns mode
    local round="$1" label="$2" tool="$3" c="$4" mode="$5" ev stock=1000000000 target="$2"
    ev="s${round}${label}${tool}${c}${mode}"
    if [ "$mode" = soldout ]; then stock=1 target="$label-soldout"; fi
    stack_create_event "$ev" "$stock" 1 >/dev/null
    local sold0 t0 bs0 bc0 l r sold1 t1 bs1 bc1
    sold0="$(metric 'snatch_snatch_outcomes_total{outcome="sold"}')"
    bs0="$(metric snatch_deduct_batch_size_sum)"
    bc0="$(metric snatch_deduct_batch_size_count)"
    t0="$(stack_ticks)"
    l="$(load1)"
    r="$(measure "$tool" "$STACK_URL/v1/events/$ev/snatch" "$c")"
    sold1="$(metric 'snatch_snatch_outcomes_total{outcome="sold"}')"
    bs1="$(metric snatch_deduct_batch_size_sum)"
    bc1="$(metric snatch_deduct_batch_size_count)"
    t1="$(stack_ticks)"
    python3 - "$round" "$target" "$tool" "$c" "$r" "$sold0" "$sold1" "$t0" "$t1" \
        "$bs0" "$bs1" "$bc0" "$bc1" "$dur" "$l" "$(getconf CLK_TCK)" "$mode" >>"$csv" <<'PY'
import sys
(rd, target, tool, c, r, s0, s1, t0, t1, bs0, bs1, bc0, bc1, dur, l, tck, mode) = sys.argv[1:]
rps, p50, p99, p999, tool_us = r.split()
sales = float(s1) - float(s0)
# Sales are counted over the tool's whole run (the tool's own duration is dur seconds).
sales_s = sales / float(dur)
cpu = [(float(b) - float(a)) * 1e6 / float(tck) for a, b in zip(t0.split(), t1.split())]
# Per sale; on a sold-out event per answer (nearly all of them 409s).
unit = sales if mode == "sell" else float(rps) * float(dur)
per_sale = [round(x / unit, 2) if unit > 0 else 0 for x in cpu]
bc = float(bc1) - float(bc0)
mean_batch = round((float(bs1) - float(bs0)) / bc, 2) if bc > 0 else "-"
print(",".join(str(x) for x in [rd, target, tool, c, rps, round(sales_s, 1), p50, p99, p999] +
               per_sale + [mean_batch, l, tool_us]))
PY
    tail -1 "$csv"
}

run_snatch() { # round label builddir[,redis-arg...]
    local round="$1" label="$2" dir="${3%%,*}" c tool b
    local rargs=() a
    if [[ "$3" == *,* ]]; then
        IFS=, read -r -a a <<<"${3#*,}"
        for b in "${a[@]}"; do rargs+=(--redis-arg "$b"); done
    fi
    for b in snatch-host snatch-subscriber; do
        [ -x "$dir/$b" ] || { echo "benchmark_sell: $dir/$b missing" >&2; exit 1; }
    done
    STACK_BUILD="$dir"
    STACK_PIDS=() STACK_HOST_PIDS=() STACK_HOST_PORTS=()
    # Each build runs with the Lua of its own source tree (deduct.lua beside policy.lua).
    local policy="$ROOT/lua/policy.lua"
    [ -f "$dir/../lua/policy.lua" ] && policy="$(cd "$dir/.." && pwd)/lua/policy.lua"
    stack_start --aof --threads 2 --policy "$policy" "${rargs[@]}" >/dev/null
    stack_up=1
    sleep 0.5
    kill -0 "$STACK_SUB_PID" 2>/dev/null || { echo "benchmark_sell: the subscriber died" >&2; exit 1; }
    for c in $conns; do
        for tool in $tools; do
            sell_run "$round" "$label" "$tool" "$c" sell
            if [ "$soldout" = 1 ]; then sell_run "$round" "$label" "$tool" "$c" soldout; fi
        done
    done
    stack_stop >/dev/null 2>&1
    stack_up=0
}

# CPU ticks (utime+stime) of the nginx workers: the master's children, started by nginx_ref_start.
nginx_ticks() {
    local p sum=0
    for p in $(cat "/proc/$NGINX_REF_PID/task/"*/children 2>/dev/null); do
        sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}

run_nginx() { # round
    local round="$1" c tool l r t0 t1 us
    for c in $conns; do
        for tool in $tools; do
            l="$(load1)"
            t0="$(nginx_ticks)"
            r="$(measure "$tool" "$NGINX_REF_URL" "$c")"
            t1="$(nginx_ticks)"
            set -- $r
            # The host column of an nginx row: its workers' CPU per answer.
            us="$(awk -v a="$1" -v d="$dur" -v t="$((t1 - t0))" -v k="$(getconf CLK_TCK)" \
                'BEGIN { printf "%.2f", (a > 0 ? t * 1e6 / k / (a * d) : 0) }')"
            echo "$round,nginx,$tool,$c,$1,-,$2,$3,$4,-,-,-,$us,-,$l,$5" >>"$csv"
            tail -1 "$csv"
        done
    done
}

[ "$nginx" = 1 ] && nginx_ref_start 2 # as many workers as snatch-host has threads
read -r -a blist <<<"$builds"
for ((round = 1; round <= rounds; round++)); do
    # Alternate the order of the builds from round to round.
    order=("${blist[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#blist[@]} - 1; i >= 0; i--)); do order+=("${blist[$i]}"); done
    fi
    for b in "${order[@]}"; do
        run_snatch "$round" "${b%%=*}" "${b#*=}"
    done
    [ "$nginx" = 1 ] && run_nginx "$round"
done

echo
echo "medians over $rounds round(s), ${dur} s per run (sales/s: durable 200s; CPU us per sale of each server; nginx and *-soldout rows: CPU us per answer in the host column, and answers/nginx):"
python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def med(v):
    v = [float(x) for x in v if x not in ("-", "")]
    return round(statistics.median(v), 1) if v else "-"
keys = sorted({(r["tool"], int(r["connections"]), r["target"]) for r in rows})
print("| tool | conns | target | answers/s | sales/s | p50 us | p99 us | p99.9 us | CPU us/sale: Redis | NATS | subscriber | host | mean batch | tool us/req | sales/nginx |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for tool, c, t in keys:
    rs = [r for r in rows if r["tool"] == tool and int(r["connections"]) == c and r["target"] == t]
    ng = [r for r in rows if r["tool"] == tool and int(r["connections"]) == c and r["target"] == "nginx"]
    s = med(r["sales_per_s"] for r in rs)
    n = med(r["answers_per_s"] for r in ng)
    x = med(r["answers_per_s"] for r in rs) if t.endswith("-soldout") else s
    ratio = round(x / n, 2) if isinstance(x, float) and isinstance(n, float) and n > 0 else "-"
    print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        tool, c, t, med(r["answers_per_s"] for r in rs), s, med(r["p50_us"] for r in rs),
        med(r["p99_us"] for r in rs), med(r["p999_us"] for r in rs),
        med(r["redis_us_per_sale"] for r in rs), med(r["nats_us_per_sale"] for r in rs),
        med(r["subscriber_us_per_sale"] for r in rs), med(r["host_us_per_sale"] for r in rs),
        med(r["mean_batch"] for r in rs), med(r.get("tool_us_per_req") or "-" for r in rs),
        ratio))
loads = [float(r["load1"]) for r in rows]
print("\nload average (1 min) during the runs: min %.2f, median %.2f, max %.2f" % (
    min(loads), statistics.median(loads), max(loads)))
PY
echo "raw: $csv"
