#!/usr/bin/env bash
# The README's by-hand recipe, runnable as it stands: Redis (AOF on), NATS JetStream, the
# subscriber and one host on loopback, one event, one sale, its SQLite row, a policy reload, then
# a stop that signals only the processes started here. Everything it writes (AOF, JetStream
# store, orders.db, admin.token, logs, PID files) goes to one temp dir; the checkout is only read.
#   scripts/quickstart.sh          run it all and stop
#   scripts/quickstart.sh --keep   leave everything running and print how to stop it
# Ports: REDIS_PORT (6379), NATS_PORT (4222), HTTP_PORT (8080). Build first: scripts/setup.sh.
set -euo pipefail
SNATCH=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$SNATCH/build}
REDIS_PORT=${REDIS_PORT:-6379} NATS_PORT=${NATS_PORT:-4222} HTTP_PORT=${HTTP_PORT:-8080}
keep=0
[ "${1:-}" = --keep ] && keep=1

dir=$(mktemp -d /tmp/snatch-quickstart.XXXXXX)
cd "$dir"
echo "quickstart: working in $dir"

# Stops what this script started, by the PIDs it recorded: the host first (it finishes its sales),
# then the subscriber (it commits what it fetched), then NATS and Redis.
stop() {
    for name in host subscriber nats redis; do
        [ -f "$name.pid" ] || continue
        pid=$(cat "$name.pid")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
}
[ "$keep" = 1 ] || trap stop EXIT

wait_port() { # port: until something listens there (10 s at most)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
    echo "quickstart: nothing listens on port $1 (see $dir/*.log)" >&2
    return 1
}

# 1. Redis with the append-only file fsynced at every write: a sale answered is on disk.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync always --save '' > redis.log 2>&1 &
echo $! > redis.pid
# 2. NATS with JetStream, its store in the temp dir.
nats-server -js -sd "$dir/nats" -a 127.0.0.1 -p "$NATS_PORT" > nats.log 2>&1 &
echo $! > nats.pid
wait_port "$REDIS_PORT"
wait_port "$NATS_PORT"
# 3. The subscriber: JetStream -> SQLite.
"$BUILD/snatch-subscriber" --nats "nats://127.0.0.1:$NATS_PORT" --db "$dir/orders.db" \
    2> subscriber.log &
echo $! > subscriber.pid
# 4. The host, with a random admin token readable by this user only.
(umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > admin.token)
"$BUILD/snatch-host" --listen "127.0.0.1:$HTTP_PORT" --redis "127.0.0.1:$REDIS_PORT" \
    --nats "nats://127.0.0.1:$NATS_PORT" --admin-token-file admin.token \
    "$SNATCH/lua/policy.lua" 2> host.log &
echo $! > host.pid
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$HTTP_PORT/healthz" && break; sleep 0.1; done
echo
# 5. An event with 10 000 tickets, one per buyer; then a purchase.
curl -fsS -X PUT -H "Authorization: Bearer $(cat admin.token)" \
    -d '{"stock":10000,"per_user_limit":1}' "http://127.0.0.1:$HTTP_PORT/admin/events/concert"
echo
curl -sS -X POST -H 'X-User-Id: alice' "http://127.0.0.1:$HTTP_PORT/v1/events/concert/snatch"
echo
# 6. The order as the subscriber persisted it.
for _ in $(seq 100); do
    row=$(sqlite3 orders.db "SELECT order_id, user, qty FROM orders" 2>/dev/null || true)
    [ -n "$row" ] && break
    sleep 0.1
done
echo "orders.db: ${row:-nothing yet}"
# 7. After editing a policy: validate it, then reload the running host (HUP, by its PID).
"$BUILD/snatch-host" --test "$SNATCH/lua/policy.lua" && kill -HUP "$(cat host.pid)"
# 8. Stop (only these PIDs), or leave running.
if [ "$keep" = 1 ]; then
    echo "running; stop with: cd $dir && kill \$(cat host.pid) && sleep 1 &&" \
        "kill \$(cat subscriber.pid nats.pid redis.pid)"
else
    trap - EXIT
    stop
    echo "quickstart: stopped; files kept in $dir"
fi
