#!/usr/bin/env bash
# The Chromium quality scenario (tests/browser/quality.mjs): N headless Chromium people in one
# meeting, every one publishing a simulcast camera and receiving everyone else at `high`; prints
# per-subscription and per-publisher quality, the server's /metrics deltas and CPU, optionally
# through a relay that limits each client's downstream (tests/browser/relay.mjs). Runs in a
# loopback-only network namespace (run as root), with the release server and the web client
# from the working tree.
#
#   bash benches/quality-scenario.sh 4 60                        # 4 people, 60 s, loopback
#   bash benches/quality-scenario.sh 4 60 2000kbit,50ms,1%       # each client's downstream at
#                                                                # 2 Mbit/s, 50 ms each way, 1% loss
#   CAMERA=640x360@15 bash benches/quality-scenario.sh 2 60      # a smaller camera
#   SERVER_BIN=/tmp/sfu-before JSON=/tmp/before.json bash benches/quality-scenario.sh 4 60
#
# The JSON report goes to $JSON (default target/quality-scenario.json); the server's log to
# target/browser-tests/quality-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
people=${1:?people: 2 | 4}
seconds=${2:-60}
relay=${3:-}
[ -n "${SERVER_BIN:-}" ] || [ -x target/release/sfu ] || cargo build --release --locked
server_bin=${SERVER_BIN:-target/release/sfu}

if [ "${IN_NAMESPACE:-}" != 1 ]; then
  exec env IN_NAMESPACE=1 unshare -n bash "$0" "$@"
fi
ip link set lo up

args=(--people "$people" --seconds "$seconds" --json "${JSON:-target/quality-scenario.json}")
[ -z "$relay" ] || args+=(--relay "$relay")
[ -z "${CAMERA:-}" ] || args+=(--camera "$CAMERA")
# The embedded web client is as old as the binary; the pages get web/ from the tree instead.
SFU_BIN="$server_bin" SFU_WEB="${SFU_WEB:-disk}" node tests/browser/quality.mjs "${args[@]}"
