#!/usr/bin/env bash
# ApacheBench (keep-alive) against snatch's sold-out path and the nginx reference, or against
# one URL given as argument. ab sends the very same request every time, so all requests come
# from one buyer: it fits the sold-out flood, not the selling path (use benchmark_wrk.sh or
# snatch-bench for that).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    cat <<USAGE
usage: $0 [-c CONNS] [-n REQUESTS] [-m METHOD] [URL]
  URL given: ab -k on it. No URL: snatch stack (sold-out event) and the nginx reference.
  Defaults: -c 100 -n 200000 -m POST.
USAGE
}

conns=100 total=200000 method=POST
while getopts "c:n:m:h" o; do
    case "$o" in
    c) conns="$OPTARG" ;;
    n) total="$OPTARG" ;;
    m) method="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
command -v ab >/dev/null || { apt-get update -qq && apt-get install -y -qq apache2-utils >/dev/null; }

cleanup() {
    declare -F bench_stack_stop >/dev/null && bench_stack_stop
    declare -F nginx_ref_stop >/dev/null && nginx_ref_stop
    true
}
trap cleanup EXIT

run() {
    echo "== $1: ab -k -c $conns -n $total -m $method $2"
    timeout 300 ab -q -k -c "$conns" -n "$total" -m "$method" "$2" |
        grep -E "Complete requests|Failed requests|Non-2xx|Requests per second|Time per request|  50%|  90%|  99%|100%"
}

if [ $# -ge 1 ]; then
    run target "$1"
    exit 0
fi
# shellcheck source=lib/bench_stack.sh
source "$ROOT/scripts/lib/bench_stack.sh"
# shellcheck source=lib/nginx_ref.sh
source "$ROOT/scripts/lib/nginx_ref.sh"
bench_stack_start 2
ev="ab$(date +%s)"
bench_event "$ev" 1
curl -sf -o /dev/null -X POST "$BENCH_HTTP/v1/events/$ev/snatch?user=first" || true
run "snatch sold-out" "$BENCH_HTTP/v1/events/$ev/snatch?user=ab"
nginx_ref_start 2 # as many workers as snatch-host has threads (bench_stack_start 2)
run "nginx reference" "$NGINX_REF_URL"
