#!/usr/bin/env bash
# The soak behind docs/reliability.md: a release `sfu serve --dev` under three loads at once for
# an hour, inside a loopback-only network namespace (run as root; not part of CI).
#
#   bash benches/soak.sh                 # 60 minutes
#   MINUTES=5 bash benches/soak.sh       # a short rehearsal
#   SOAK_BIN=/tmp/sfu-before bash benches/soak.sh   # another build's server and load generator
#
# 1. A meeting that lasts the whole run: MEETING people (default 4), everyone sends simulcast
#    video and audio and receives everyone else (`sfu load --publishers-subscribe`).
# 2. Churn in another room: back to back, 1 publisher and 3 subscribers join, exchange media for
#    20 s and leave; each run's loss is recorded.
# 3. Garbage UDP at the media ports: random bytes, STUN-looking headers with bad lengths and
#    RTP-looking packets with unknown SSRCs, GARBAGE_PPS datagrams/s (default 500).
#
# Every minute it prints one row: RSS, open FDs, threads, server CPU seconds, participants,
# garbage datagrams sent, churn runs and their loss that minute. The meeting's loss comes at
# the end from its report. Rows go to stdout and /tmp/sfu-soak.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${MINUTES:-60}
meeting=${MEETING:-4}
garbage_pps=${GARBAGE_PPS:-500}
[ -x target/release/sfu ] || cargo build --release --locked
bin=${SOAK_BIN:-target/release/sfu}

if [ "${IN_NAMESPACE:-}" != 1 ]; then
  exec env IN_NAMESPACE=1 unshare -n bash "$0" "$@"
fi
ip link set lo up

SFU_RTC_PUBLIC_IPS='["127.0.0.1"]' SFU_HTTP_BIND=127.0.0.1 SFU_RTC_BIND=127.0.0.1 \
  SFU_LOG_LEVEL=warn "$bin" serve --dev >/tmp/sfu-soak-server.log 2>&1 &
server=$!
pids=()
trap 'kill "${pids[@]}" $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:7880/healthz >/dev/null && break; sleep 0.1; done
workers=$(nproc)

# 1. The meeting, for the whole run plus a little.
"$bin" load --json --room soak-meeting --publishers "$meeting" --subscribers 0 \
  --publishers-subscribe --simulcast --duration "$((minutes * 60 + 30))s" \
  >/tmp/sfu-soak-meeting.json 2>/tmp/sfu-soak-meeting.log &
pids+=($!)

# 2. Churn: each run appends "end_time packets lost" to the churn log.
: >/tmp/sfu-soak-churn.log
(
  while true; do
    if "$bin" load --json --room soak-churn --publishers 1 --subscribers 3 --duration 20s \
      >/tmp/sfu-soak-churn.json 2>/dev/null; then
      echo "$(date +%s) $(node -e 'const r = JSON.parse(require("fs").readFileSync("/tmp/sfu-soak-churn.json"));
        process.stdout.write(`${r.packets_received ?? 0} ${r.packets_lost ?? 0} ${r.joins_failed ?? 0}`)')" \
        >>/tmp/sfu-soak-churn.log
    else
      echo "$(date +%s) 0 0 failed" >>/tmp/sfu-soak-churn.log
    fi
  done
) &
pids+=($!)

# 3. Garbage UDP; the count sent so far goes to /tmp/sfu-soak-garbage.count.
node -e '
const dgram = require("dgram");
const crypto = require("crypto");
const fs = require("fs");
const [pps, workers] = [Number(process.argv[1]), Number(process.argv[2])];
const sock = dgram.createSocket("udp4");
let sent = 0;
function datagram() {
  const kind = sent % 3;
  const b = crypto.randomBytes(20 + Math.floor(Math.random() * 1200));
  if (kind === 1) { b[0] = 0x00; b[1] = 0x01; b.writeUInt32BE(0x2112a442, 4); }  // STUN, any length
  if (kind === 2) { b[0] = 0x80; b[1] = 96; }                                     // RTP, unknown SSRC
  return b;
}
setInterval(() => {
  for (let i = 0; i < pps / 10; i++) {
    sock.send(datagram(), 7882 + (sent % workers), "127.0.0.1");
    sent++;
  }
}, 100);
setInterval(() => fs.writeFileSync("/tmp/sfu-soak-garbage.count", String(sent)), 1000);
' "$garbage_pps" "$workers" &
pids+=($!)

metric() { curl -s http://127.0.0.1:7880/metrics | awk -v m="$1" '$1 == m {print $2}'; }
printf 'minute\trss_mib\tfds\tthreads\tcpu_s\tparticipants\tgarbage_sent\tchurn_runs\tchurn_lost_pct\n' |
  tee /tmp/sfu-soak.tsv
churn_seen=0
for minute in $(seq 1 "$minutes"); do
  sleep 60
  rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' /proc/$server/status)
  fds=$(ls /proc/$server/fd | wc -l)
  threads=$(awk '/Threads/ {print $2}' /proc/$server/status)
  cpu=$(metric sfu_process_cpu_seconds_total)
  participants=$(metric sfu_participants)
  garbage=$(cat /tmp/sfu-soak-garbage.count 2>/dev/null || echo 0)
  churn=$(tail -n +"$((churn_seen + 1))" /tmp/sfu-soak-churn.log)
  churn_seen=$(wc -l </tmp/sfu-soak-churn.log)
  read -r runs lost_pct < <(echo "$churn" | awk '
    NF {runs++; recv += $2; lost += $3}
    END {printf "%d %.3f\n", runs, (recv + lost) ? 100 * lost / (recv + lost) : 0}')
  printf '%d\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%s\n' "$minute" "$rss" "$fds" "$threads" "$cpu" \
    "$participants" "$garbage" "$runs" "$lost_pct" | tee -a /tmp/sfu-soak.tsv
done

wait "${pids[0]}" || true
echo "meeting report (/tmp/sfu-soak-meeting.json):"
cat /tmp/sfu-soak-meeting.json
grep -c . /tmp/sfu-soak-churn.log | xargs echo "churn runs:"
grep -c failed /tmp/sfu-soak-churn.log | xargs echo "churn runs that failed:" || true
