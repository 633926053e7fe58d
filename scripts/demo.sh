#!/usr/bin/env bash
# The main job: a whole flash sale on this machine, verified.
# Starts redis-server, nats-server (JetStream), snatch-subscriber and snatch-host on free loopback
# ports in a temp dir, creates an event, sends a burst of distinct simulated buyers with
# snatch-bench, waits for the subscriber to catch up, prints the result and checks every
# invariant. Exits non-zero if one failed. Installs and builds what is missing first.
#
#   scripts/demo.sh [--stock N] [--buyers N] [--connections N] [--threads N] [--bench-threads N]
#                   [--hosts N] [--keep] [--cluster]
#     --stock N          tickets on sale (default 10000)
#     --buyers N         distinct buyers, one request each (default 1000000)
#     --connections N    concurrent keep-alive connections of the buyers (default 256)
#     --threads N        snatch-host loop threads (default 2)
#     --bench-threads N  snatch-bench threads (default 1: it shares the 2 cores)
#     --hosts N          snatch-host processes sharing the sale (default 1)
#     --keep             leave the stack running afterwards (prints how to reach and stop it)
#     --cluster          on scripts/cluster.sh's cluster instead (6 Redis, 3 NATS, 3 hosts):
#                        the buyers go through nginx, one snatch-bench checks every answer
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

stock=10000 buyers=1000000 conns=256 threads=2 bthreads=1 hosts=1 keep=0 cluster=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stock) stock=$2; shift ;;
    --buyers) buyers=$2; shift ;;
    --connections) conns=$2; shift ;;
    --threads) threads=$2; shift ;;
    --bench-threads) bthreads=$2; shift ;;
    --hosts) hosts=$2; shift ;;
    --keep) keep=1 ;;
    --cluster) cluster=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

scripts/setup.sh
# shellcheck source=lib/stack.sh
. scripts/lib/stack.sh

cleanup() {
  if [ "$keep" -eq 1 ]; then return; fi
  if [ "$cluster" -eq 1 ]; then
    scripts/cluster.sh down --dir "$STACK_DIR" >/dev/null || true
    rm -rf "$STACK_DIR"
    return
  fi
  stack_stop
}
trap cleanup EXIT

event="demo"
if [ "$cluster" -eq 1 ]; then
  # One target: nginx in front of the cluster's three hosts; admin goes to a host directly.
  STACK_DIR=$(mktemp -d /tmp/snatch-demo-cluster.XXXXXX)
  echo "demo: starting the cluster (6 redis, 3 nats, subscriber, 3 hosts, nginx) in $STACK_DIR"
  scripts/cluster.sh up --dir "$STACK_DIR" --threads "$threads" >/dev/null
  eval "$(scripts/cluster.sh env --dir "$STACK_DIR")"
  curl -fsS -X PUT -H "Authorization: Bearer $(cat "$CLUSTER_TOKEN_FILE")" \
    -d "{\"stock\":$stock,\"per_user_limit\":1}" "$CLUSTER_ADMIN_URL/admin/events/$event" >/dev/null
  hosts=1 STACK_URL=$CLUSTER_URL STACK_DB=$CLUSTER_DB STACK_REDIS_PORT=$CLUSTER_REDIS_PORT
  STACK_BUILD="${SNATCH_BUILD_DIR:-$ROOT/build}"
  STACK_HOST_PORTS=("${CLUSTER_URL##*:}")
else
  echo "demo: starting redis, nats (JetStream), subscriber and $hosts host(s) on loopback"
  [ "$keep" -eq 1 ] && export STACK_KEEP_DIR=1
  stack_start --hosts "$hosts" --threads "$threads"
  stack_create_event "$event" "$stock" 1 >/dev/null
fi
echo "demo: event '$event' with $stock tickets, one per buyer; $buyers buyers over $conns connections"

# Buyers are spread over the hosts the way a load balancer would: each host gets its share.
per_host=$(( (buyers + hosts - 1) / hosts ))
pids=() jsons=()
for ((i = 0; i < hosts; i++)); do
  n=$per_host
  [ $(( (i + 1) * per_host )) -gt "$buyers" ] && n=$(( buyers - i * per_host ))
  [ "$n" -gt 0 ] || continue
  j="$STACK_DIR/bench-$i.json"
  jsons+=("$j")
  oracle=(--check)
  # With one host the bench's oracle also checks Redis and SQLite against its own 200s.
  [ "$hosts" -eq 1 ] && oracle+=(--event-url "$STACK_URL/v1/events/$event" --db "$STACK_DB" --wait-db 60)
  "$STACK_BUILD/snatch-bench" -m POST -c $(( conns / hosts > 0 ? conns / hosts : 1 )) \
    -t "$bthreads" -n "$n" --user-offset $(( i * per_host )) "${oracle[@]}" --quiet --json "$j" \
    "http://127.0.0.1:${STACK_HOST_PORTS[$i]}/v1/events/$event/snatch" \
    >"$STACK_DIR/bench-$i.out" 2>&1 &
  pids+=($!)
done
bench_status=0
for p in "${pids[@]}"; do wait "$p" || bench_status=1; done

# Wait for the subscriber to persist what was sold (bounded).
sold=$(redis-cli -c -p "$STACK_REDIS_PORT" HGET "{$event}:meta" sold)
for _ in $(seq 1 600); do
  rows=$(sqlite3 "file:$STACK_DB?mode=ro" "SELECT count(*) FROM orders WHERE event='$event'" 2>/dev/null || echo 0)
  [ "$rows" -ge "$sold" ] && break
  sleep 0.1
done

python3 - "$event" "$stock" "$buyers" "$STACK_DB" "$STACK_REDIS_PORT" "$bench_status" "${jsons[@]}" <<'PY'
import json, sqlite3, subprocess, sys
event, stock, buyers, db, redis_port, bench_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
runs = [json.load(open(p)) for p in sys.argv[7:]]
status, errors = {}, {}
for r in runs:
    for k, v in r.get("status", {}).items():
        status[k] = status.get(k, 0) + v
    for k, v in r.get("errors", {}).items():
        errors[k] = errors.get(k, 0) + v
requests = sum(r.get("requests", 0) for r in runs)
duration = max(r.get("duration_s", 0) for r in runs)
p99 = max(r.get("latency_us", {}).get("p99", 0) for r in runs)
p999 = max(r.get("latency_us", {}).get("p999", 0) for r in runs)
conn_errors = sum(r.get("conn_errors", 0) for r in runs)
ok200 = status.get("200", 0)
def rcli(*a):
    return subprocess.run(["redis-cli", "-c", "-p", redis_port] + list(a), capture_output=True, text=True).stdout.strip()
sold = int(rcli("HGET", "{%s}:meta" % event, "sold") or 0)
con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
rows = con.execute("SELECT count(*) FROM orders WHERE event=?", (event,)).fetchone()[0]
dup_buyers = con.execute("SELECT count(*) FROM (SELECT user FROM orders WHERE event=? GROUP BY user HAVING sum(qty) > 1)", (event,)).fetchone()[0]
dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
oracle_ok = all(r.get("oracle", {}).get("passed", False) for r in runs)
print()
print("snatch demo: %d buyers, %d tickets" % (buyers, stock))
print("  requests      %d in %.2f s  (%.0f req/s incl. the load generator on the same cores)" % (requests, duration, requests / duration if duration else 0))
print("  answers       " + ", ".join("%s: %d" % (k, v) for k, v in sorted(status.items())))
if errors:
    print("  error codes   " + ", ".join("%s: %d" % (k, v) for k, v in sorted(errors.items())))
print("  latency       p99 %.2f ms, p99.9 %.2f ms" % (p99 / 1000.0, p999 / 1000.0))
print("  connection errors %d" % conn_errors)
print("  Redis sold    %d" % sold)
print("  SQLite orders %d for event %s (dead letters: %d)" % (rows, event, dead))
checks = [
    ("no oversell (sold <= stock, rows <= stock)", sold <= stock and rows <= stock),
    ("no undersell (demand >= stock => all sold)", buyers < stock or sold == stock),
    ("no duplicate buyer (one ticket per buyer)", dup_buyers == 0 and oracle_ok),
    ("every 200 persisted (200s == rows == sold)", ok200 == rows == sold),
    ("every buyer answered (no connection errors)", conn_errors == 0 and requests == buyers),
]
failed = 0
for name, ok in checks:
    print("  [%s] %s" % ("PASS" if ok else "FAIL", name))
    failed += not ok
if bench_status:
    print("  snatch-bench reported a failure (see its output in the stack dir)")
sys.exit(1 if failed or bench_status else 0)
PY
result=$?
if [ "$keep" -eq 1 ] && [ "$cluster" -eq 1 ]; then
  echo
  echo "demo: cluster left running (--keep): scripts/cluster.sh status --dir $STACK_DIR;"
  echo "  buyers at $STACK_URL/v1/events/$event/snatch; stop: scripts/cluster.sh down --dir $STACK_DIR"
elif [ "$keep" -eq 1 ]; then
  echo
  echo "demo: stack left running (--keep). Try:"
  echo "  curl -s $STACK_URL/v1/events/$event"
  echo "  curl -s -X POST '$STACK_URL/v1/events/$event/snatch?user=me'"
  echo "  curl -s $STACK_URL/metrics | head"
  echo "  sqlite3 $STACK_DB 'select * from orders limit 5'"
  echo "stop it with: kill ${STACK_HOST_PIDS[*]}; sleep 1; kill $STACK_SUB_PID $STACK_NATS_PID $STACK_REDIS_PID   (then rm -rf $STACK_DIR)"
fi
exit $result
