#!/usr/bin/env bash
# Runs fuzz targets for a number of executions each and prints what each did; the counts in
# docs/reliability.md come from here. Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly; cargo install cargo-fuzz`). Not part of CI.
#
#   bash fuzz/run.sh                          # every target, 10 million executions each
#   RUNS=100000 bash fuzz/run.sh rtp stun     # a quick pass of two
#   MAX_SECONDS=1800 bash fuzz/run.sh         # each target until 10 million runs or 30 minutes
#
# Corpora grow in fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); a crash is written to
# fuzz/artifacts/TARGET and stops that target's run. Logs: /tmp/sfu-fuzz-TARGET.log.
set -uo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-10000000}
max_seconds=${MAX_SECONDS:-0}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(signaling sdp_offer rtp rtcp stun)
cargo +nightly fuzz build || exit 1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  started=$(date +%s)
  cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- -runs="$runs" -max_total_time="$max_seconds" \
    >"/tmp/sfu-fuzz-$target.log" 2>&1
  status=$?
  took=$(($(date +%s) - started))
  done_line=$(grep -E '^Done [0-9]+ runs' "/tmp/sfu-fuzz-$target.log" | tail -1)
  cov=$(grep -E 'DONE|pulse' "/tmp/sfu-fuzz-$target.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+')
  if [ $status -eq 0 ]; then
    echo "$target: ${done_line:-no summary} ($took s; $cov)"
  else
    echo "$target: FAILED after $took s (exit $status): $(grep -m1 -E 'panicked|ERROR' "/tmp/sfu-fuzz-$target.log")"
  fi
done
