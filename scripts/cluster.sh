#!/usr/bin/env bash
# A snatch cluster on this machine, loopback only: 6 redis-servers (3 masters + 3 replicas,
# redis-cli --cluster create, min-replicas-to-write 1; 9 with --redis-replicas-per-master 2),
# 3 nats-servers (one JetStream cluster, stream ORDERS with 3 replicas), 3 snatch-hosts, nginx
# in front (examples/nginx/snatch.conf), the subscriber. Each process in its own directory
# under DIR; their PIDs in DIR/state.json.
#
#   scripts/cluster.sh up     [--dir DIR] [--port N] [--threads N] [--redis-replicas-per-master N]
#   scripts/cluster.sh status [--dir DIR]     each process, cluster state, stream leader, health
#   scripts/cluster.sh down   [--dir DIR]     stops exactly the recorded PIDs (files are kept)
#     --dir DIR      state dir (default $SNATCH_CLUSTER_DIR or /tmp/snatch-cluster)
#     --port N       nginx's port for buyers (default: a free one, printed)
#     --threads N    loop threads per host (default 1: twelve servers share this machine)
#     --redis-replicas-per-master N   1..5 (default 1). With 2, a master that dies and stays dead
#                    leaves its shard selling (the promoted replica keeps the other as its own)
# Build first (scripts/setup.sh: it installs what is needed, nginx included). The start-up code
# is the test harness's (scripts/lib/cluster.py drives tests/integration/harness.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  up) exec setsid python3 "$ROOT/scripts/lib/cluster.py" "$@" ;;  # servers in their own session
  down|status|env|events) exec python3 "$ROOT/scripts/lib/cluster.py" "$@" ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "cluster.sh: up|down|status (see --help)" >&2; exit 2 ;;
esac
