# shellcheck shell=bash
# Starts and stops a whole snatch stack on free loopback ports in a temp dir: redis-server,
# nats-server (JetStream), snatch-subscriber and N snatch-host processes. Sourced by demo.sh and
# the benchmark scripts. Stops only the processes it started, by PID.
#
#   stack_start [--hosts N] [--threads N] [--policy PATH] [--aof]   sets STACK_* variables
#   stack_create_event NAME STOCK [PER_USER_LIMIT]
#   stack_stop
# After stack_start: STACK_DIR, STACK_REDIS_PORT, STACK_NATS_URL, STACK_DB, STACK_HOST_PORTS
# (array), STACK_URL (first host), STACK_TOKEN, STACK_PIDS (array), STACK_HOST_PIDS,
# STACK_SUB_PID, STACK_BUILD.

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STACK_BUILD="${SNATCH_BUILD_DIR:-$STACK_ROOT/build}"
STACK_PIDS=()
STACK_HOST_PIDS=()
STACK_HOST_PORTS=()

stack_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stack_wait_port() { # port [seconds] [pid]
  local port=$1 secs=${2:-10} pid=${3:-} i
  for ((i = 0; i < secs * 20; i++)); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

stack_start() {
  local hosts=1 threads=2 policy="$STACK_ROOT/lua/policy.lua" aof=0 i extra_redis=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --hosts) hosts=$2; shift ;;
      --redis-arg) extra_redis+=("$2"); shift ;;
      --threads) threads=$2; shift ;;
      --policy) policy=$2; shift ;;
      --aof) aof=1 ;;
      *) echo "stack_start: unknown option $1" >&2; return 2 ;;
    esac
    shift
  done
  STACK_DIR=$(mktemp -d /tmp/snatch-stack.XXXXXX)
  STACK_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$STACK_TOKEN" >"$STACK_DIR/admin.token"

  STACK_REDIS_PORT=$(stack_free_port)
  local redis_args=(--port "$STACK_REDIS_PORT" --bind 127.0.0.1 --dir "$STACK_DIR" --save ''
                    --daemonize no --protected-mode no)
  if [ "$aof" -eq 1 ]; then redis_args+=(--appendonly yes --appendfsync always)
  else redis_args+=(--appendonly no); fi
  redis_args+=("${extra_redis[@]}")
  redis-server "${redis_args[@]}" >"$STACK_DIR/redis.log" 2>&1 &
  STACK_REDIS_PID=$!
  STACK_PIDS+=("$STACK_REDIS_PID")
  stack_wait_port "$STACK_REDIS_PORT" 10 "$STACK_REDIS_PID" || { echo "redis did not start" >&2; return 1; }

  local nats_port
  nats_port=$(stack_free_port)
  STACK_NATS_URL="nats://127.0.0.1:$nats_port"
  nats-server -js -sd "$STACK_DIR/nats" -a 127.0.0.1 -p "$nats_port" >"$STACK_DIR/nats.log" 2>&1 &
  STACK_NATS_PID=$!
  STACK_PIDS+=("$STACK_NATS_PID")
  stack_wait_port "$nats_port" 10 "$STACK_NATS_PID" || { echo "nats did not start" >&2; return 1; }

  STACK_DB="$STACK_DIR/orders.db"
  "$STACK_BUILD/snatch-subscriber" --nats "$STACK_NATS_URL" --db "$STACK_DB" \
    >"$STACK_DIR/subscriber.log" 2>&1 &
  STACK_SUB_PID=$!
  STACK_PIDS+=("$STACK_SUB_PID")

  for ((i = 1; i <= hosts; i++)); do
    local port
    port=$(stack_free_port)
    "$STACK_BUILD/snatch-host" --listen "127.0.0.1:$port" --threads "$threads" \
      --redis "127.0.0.1:$STACK_REDIS_PORT" --nats "$STACK_NATS_URL" --host-id "h$i" \
      --hosts "$hosts" --admin-token-file "$STACK_DIR/admin.token" --allow-query-user "$policy" \
      >"$STACK_DIR/host-h$i.log" 2>&1 &
    local pid=$!
    STACK_PIDS+=("$pid")
    STACK_HOST_PIDS+=("$pid")
    STACK_HOST_PORTS+=("$port")
    stack_wait_port "$port" 15 "$pid" || { echo "snatch-host h$i did not start:" >&2;
                                          cat "$STACK_DIR/host-h$i.log" >&2; return 1; }
    local ok=0
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" -eq 1 ] || { echo "snatch-host h$i not healthy" >&2; return 1; }
  done
  STACK_URL="http://127.0.0.1:${STACK_HOST_PORTS[0]}"
}

stack_create_event() { # name stock [per_user_limit]
  curl -fsS -X PUT -H "Authorization: Bearer $STACK_TOKEN" \
    -d "{\"stock\":$2,\"per_user_limit\":${3:-1}}" "$STACK_URL/admin/events/$1"
}

stack_stop() {
  local pid i
  # Hosts first (they finish in-flight orders), then subscriber, NATS, Redis.
  for ((i = ${#STACK_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${STACK_PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STACK_PIDS=()
  STACK_HOST_PIDS=()
  STACK_HOST_PORTS=()
  if [ -n "${STACK_DIR:-}" ] && [ -z "${STACK_KEEP_DIR:-}" ]; then rm -rf "$STACK_DIR"; fi
}
