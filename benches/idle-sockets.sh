#!/usr/bin/env bash
# Memory held by unauthenticated WebSockets (issue 13): a release `sfu serve --dev` in a
# loopback-only namespace, N WebSockets that upgrade and never send `join` (from 127.0.0.2 on,
# 500 per source address, the default per-address cap), the server's RSS before, while they
# are open, and after `signal.join_timeout` closed them all. Run as root; not part of CI.
#
#   bash benches/idle-sockets.sh 5000
#   SOAK_BIN=/tmp/sfu-before bash benches/idle-sockets.sh 5000    # another build's server
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
[ -x target/release/sfu ] || cargo build --release --locked
bin=${SOAK_BIN:-target/release/sfu}

if [ "${IN_NAMESPACE:-}" != 1 ]; then
  exec env IN_NAMESPACE=1 unshare -n bash "$0" "$@"
fi
ip link set lo up

SFU_HTTP_BIND=127.0.0.1 SFU_RTC_BIND=127.0.0.1 SFU_LOG_LEVEL=warn "$bin" serve --dev \
  >/tmp/sfu-idle-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:7880/healthz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' /proc/$server/status; }
fds() { ls /proc/$server/fd | wc -l; }
echo "idle server: RSS $(rss) MiB, $(fds) fds"

node - "$n" <<'JS' | while read -r event; do
const net = require('net');
const n = Number(process.argv[2]);
let upgraded = 0, closed = 0;
const request = 'GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
for (let i = 0; i < n; i++) {
  const localAddress = `127.0.0.${2 + Math.floor(i / 500)}`;
  const socket = net.connect({ host: '127.0.0.1', port: 7880, localAddress }, () => socket.write(request));
  let seen = false;
  socket.on('data', (d) => {
    if (!seen && d.toString().startsWith('HTTP/1.1 101')) {
      seen = true;
      if (++upgraded === n) console.log(`open ${upgraded}`);
    }
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    if (++closed === n) { console.log(`closed ${closed} (upgraded ${upgraded})`); process.exit(0); }
  });
}
setTimeout(() => { console.log(`timeout: upgraded ${upgraded}, closed ${closed}`); process.exit(1); }, 120000);
JS
  case $event in
    open*) echo "$event sockets: RSS $(rss) MiB, $(fds) fds" ;;
    *) echo "$event: RSS $(rss) MiB, $(fds) fds" ;;
  esac
done
sleep 5
echo "5 s later: RSS $(rss) MiB, $(fds) fds"
