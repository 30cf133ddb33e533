#!/usr/bin/env bash
# What cluster mode costs a join, measured by `sfu load` in one run (docs/performance.md,
# "Cluster"): three release servers on this machine in a loopback-only namespace (run as root),
# one single node and two cluster nodes on a Redis of their own, and the same load against each,
# interleaved:
#   single     the single node
#   placed     a cluster node, for a room new to it (one Redis script per join)
#   sent on    the other cluster node, for that room (each join is refused with
#              room_on_other_node and the client joins again at the node that hosts it)
#
#   bash benches/cluster-join.sh 100        # 1 publisher and 100 subscribers per run
#   ROUNDS=3 bash benches/cluster-join.sh 50
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
rounds=${ROUNDS:-2}
[ -x target/release/sfu ] || cargo build --release --locked
bin=target/release/sfu

if [ "${IN_NAMESPACE:-}" != 1 ]; then
  exec env IN_NAMESPACE=1 unshare -n bash "$0" "$@"
fi
ip link set lo up

redis-server --port 6399 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# start PORT [VAR=VALUE...]: a dev server on PORT with the given settings.
start() {
  local port=$1
  shift
  env SFU_HTTP_PORT="$port" SFU_HTTP_BIND=127.0.0.1 SFU_RTC_BIND=127.0.0.1 SFU_RTC_UDP_PORT=0 \
    SFU_RTC_TCP_PORT=0 SFU_TURN_ENABLED=false SFU_RTC_PUBLIC_IPS='["127.0.0.1"]' \
    SFU_HTTP_MAX_CONNECTIONS_PER_IP=100000 SFU_ROOM_MAX_PARTICIPANTS=5000 SFU_RTC_MAX_WORKER_LOAD=1 \
    SFU_LOG_LEVEL=warn \
    "$@" "$bin" serve --dev >"/tmp/sfu-cluster-join-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "the server on port $port did not start" >&2
  exit 1
}
redis=SFU_CLUSTER_REDIS_URL=redis://127.0.0.1:6399/
start 7881
start 7882 "$redis" SFU_CLUSTER_NODE_ID=a SFU_CLUSTER_REFRESH=500ms SFU_CLUSTER_NODE_TTL=2s
start 7883 "$redis" SFU_CLUSTER_NODE_ID=b SFU_CLUSTER_REFRESH=500ms SFU_CLUSTER_NODE_TTL=2s
for _ in $(seq 100); do
  curl -s http://127.0.0.1:7883/metrics | grep -q '^sfu_cluster_nodes 2' && break
  sleep 0.1
done

# run LABEL URL ROOM: one load run; prints its join times, failures and loss.
run() {
  "$bin" load --url "$2" --room "$3" --publishers 1 --subscribers "$n" --duration 3s \
    --join-interval 5ms --json >/tmp/sfu-cluster-join.json 2>/tmp/sfu-cluster-join.err || {
    echo "sfu load failed:" >&2
    tail -5 /tmp/sfu-cluster-join.err >&2
    exit 1
  }
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open('/tmp/sfu-cluster-join.json'))
print(f"{sys.argv[1]:<10} joins ok {r['joins_ok']:>4}  failed {r['joins_failed']}  "
      f"join p50 {r['join_p50_ms']:.1f} ms  p99 {r['join_p99_ms']:.1f} ms  loss {r['loss_percent']:.2f}%")
EOF
}

for round in $(seq "$rounds"); do
  run single ws://127.0.0.1:7881 "single-$round"
  # The room opens on a with this run and stays there (room.empty_timeout) for the next.
  run placed ws://127.0.0.1:7882 "cluster-$round"
  run "sent on" ws://127.0.0.1:7883 "cluster-$round"
done
