#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
# This is the README's test command; .ci/run calls it. Needs root on Debian (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== building tests"
cargo test --locked --no-run

# Tests run in a network namespace with only loopback: test traffic cannot leave the machine,
# and the server advertises 127.0.0.1 as its media address.
echo "== cargo test (in a loopback-only network namespace)"
exec unshare -n sh -c 'ip link set lo up && cargo test --locked --offline'
