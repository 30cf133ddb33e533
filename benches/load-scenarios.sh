#!/usr/bin/env bash
# End-to-end load scenarios behind docs/performance.md: a release `sfu serve --dev` and
# `sfu load` on this machine, inside a loopback-only network namespace (run as root).
#
#   bash benches/load-scenarios.sh simulcast 500     # one 3-layer publisher, 500 subscribers
#   bash benches/load-scenarios.sh audio 300         # 10 audio publishers, 300 subscribers
#   bash benches/load-scenarios.sh meeting 20        # 20 people, everyone sends and receives
#   bash benches/load-scenarios.sh single 20         # one 800 kbit/s VP8 publisher, 20 subscribers
#   bash benches/load-scenarios.sh idle 100          # 100 subscribers of tracks that send nothing
#   EXTRA=--no-feedback bash benches/load-scenarios.sh simulcast 300   # subscribers that count
#                                    # clear headers and send no feedback (cheaper, unrealistic)
#   SERVER_BIN=/tmp/sfu-before bash benches/load-scenarios.sh simulcast 500   # another build's
#                                    # server, measured by this build's load generator
#
# Prints sfu load's summary, then the server's forwarding rate measured from its own /metrics
# over a 10 s window in the middle of the run: packet-sends per second, CPU, and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?scenario: simulcast | single | idle | audio | meeting}
n=${2:?count}
duration=${DURATION:-25s}
[ -x target/release/sfu ] || cargo build --release --locked
server_bin=${SERVER_BIN:-target/release/sfu}

if [ "${IN_NAMESPACE:-}" != 1 ]; then
  exec env IN_NAMESPACE=1 unshare -n bash "$0" "$@"
fi
ip link set lo up

# Capacity is what these runs measure: the CPU budget (rtc.max_worker_load) would refuse the
# joins that find it.
SFU_HTTP_MAX_CONNECTIONS_PER_IP=100000 SFU_ROOM_MAX_PARTICIPANTS=5000 SFU_RTC_MAX_WORKER_LOAD=1 SFU_RTC_PUBLIC_IPS='["127.0.0.1"]' SFU_HTTP_BIND=127.0.0.1 \
  SFU_RTC_BIND=127.0.0.1 SFU_LOG_LEVEL=warn "$server_bin" serve --dev >/tmp/sfu-load-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:7880/healthz >/dev/null && break; sleep 0.1; done
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$server/status)

case $scenario in
  simulcast) args=(--publishers 1 --subscribers "$n" --simulcast) ;;
  single) args=(--publishers 1 --subscribers "$n" --video-bitrate 800k) ;;
  idle) args=(--publishers 1 --subscribers "$n" --simulcast --idle) ;;
  audio) args=(--publishers 10 --subscribers "$n" --audio-only) ;;
  meeting) args=(--publishers "$n" --subscribers 0 --publishers-subscribe --simulcast) ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

scrape() {
  curl -s http://127.0.0.1:7880/metrics | awk '
    /^sfu_rtp_packets_sent_total/ {sent += $2}
    /^sfu_rtp_packets_received_total/ {recv += $2}
    /^sfu_process_cpu_seconds_total/ {cpu = $2}
    /^sfu_worker_wakeups_total/ {wake += $2}
    /^sfu_peer_timeouts_total/ {timers += $2}
    /^sfu_peers / {peers = $2}
    END {printf "%d %d %s %d %d %d\n", sent, recv, cpu, wake, timers, peers}'
}

target/release/sfu load --json --server-pid "$server" --duration "$duration" --join-interval 5ms \
  "${args[@]}" ${EXTRA:-} >/tmp/sfu-load-report.json 2>/tmp/sfu-load-progress.log &
load=$!
# Joins take n × 5 ms plus 2 s; then measure 10 s of steady forwarding.
sleep "$(awk -v n="$n" 'BEGIN {print n * 0.005 + 6}')"
# The load generator's CPU (utime + stime, in clock ticks) tells whether it, not the server,
# was the limit.
load_ticks() { awk '{print $14 + $15}' "/proc/$load/stat"; }
read -r s1 r1 c1 w1 k1 _ < <(scrape)
l1=$(load_ticks)
t1=$(date +%s.%N)
sleep 10
read -r s2 r2 c2 w2 k2 peers < <(scrape)
l2=$(load_ticks)
t2=$(date +%s.%N)
rss_loaded=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
wait $load || true
cat /tmp/sfu-load-report.json
awk -v s1="$s1" -v s2="$s2" -v r1="$r1" -v r2="$r2" -v c1="$c1" -v c2="$c2" -v t1="$t1" -v t2="$t2" \
    -v idle="$rss_idle" -v loaded="$rss_loaded" -v n="$n" -v sc="$scenario" \
    -v l1="$l1" -v l2="$l2" -v hz="$(getconf CLK_TCK)" \
    -v w1="$w1" -v w2="$w2" -v k1="$k1" -v k2="$k2" -v peers="$peers" 'BEGIN {
  dt = t2 - t1; sends = (s2 - s1) / dt; recv = (r2 - r1) / dt; cpu = (c2 - c1) / dt
  printf "server window: %.0f packets/s in, %.0f packet-sends/s out, CPU %.1f%% of a core\n", recv, sends, cpu * 100
  printf "load generator CPU: %.1f%% of a core\n", (l2 - l1) / hz / dt * 100
  if (peers > 0) printf "%d peers: %.1f worker wake-ups/s, %.1f timers/s per peer, %.3f%% of a core per peer\n", peers, (w2 - w1) / dt, (k2 - k1) / dt / peers, cpu * 100 / peers
  if (cpu > 0) printf "packet-sends per second per core: %.0f; CPU per forwarded packet: %.2f us\n", sends / cpu, cpu / sends * 1e6
  people = (sc == "audio") ? n + 10 : (sc == "meeting" ? n : n + 1)
  printf "server RSS: %.1f MiB idle, %.1f MiB loaded: %.1f KiB per participant (%d participants)\n", idle / 1024, loaded / 1024, (loaded - idle) / people, people
}'
