#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
# This is the README's test command; .ci/run calls it. Needs root on Debian (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
# The ICE-TCP browser test drops UDP in its namespace with an nftables rule.
command -v nft >/dev/null || need_pkgs+=(nftables)
# The TURN interop test runs coturn's test client, turnutils_uclient.
command -v turnutils_uclient >/dev/null || need_pkgs+=(coturn)
# The cluster tests (tests/cluster.rs) start their own Redis servers.
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
# Browser tests: Debian's Chromium, driven by playwright-core from Node.
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# ... and Debian's Firefox ESR, driven through Marionette by our own client (tests/browser/marionette.mjs).
[ -x /usr/bin/firefox-esr ] || need_pkgs+=(firefox-esr)
command -v node >/dev/null || need_pkgs+=(nodejs)
command -v npm >/dev/null || need_pkgs+=(npm)
# The dashboard test runs a real Prometheus; promtool comes in the same package.
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need_pkgs+=(prometheus)
# The interop test runs GStreamer's webrtcbin from Debian's python3 (tests/gstreamer/client.py).
/usr/bin/python3 tests/gstreamer/client.py --check 2>/dev/null || need_pkgs+=(
  python3-gi python3-websockets gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== building tests"
# This also builds target/debug/sfu, the binary the browser tests start (the integration tests
# need it too). A separate `cargo build` would compile every dependency again without the
# dev-dependencies' features: 7 of CI's 30 minutes, for the same code.
cargo test --workspace --locked --no-run

echo "== browser test dependencies"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# Tests run in a network namespace with only loopback: test traffic cannot leave the machine,
# and the server advertises 127.0.0.1 as its media address. Both suites run; either failing
# fails the script.
echo "== cargo test, then the browser tests (in a loopback-only network namespace)"
exec unshare -n sh -c '
  ip link set lo up
  status=0
  cargo test --workspace --locked --offline || status=1
  echo "== the browser SDK: types, docs and exports in step (no browser)"
  (cd tests/browser && node --test sdk.test.mjs) || status=1
  echo "== browser tests (headless Chromium)"
  (cd tests/browser && node --test meeting.test.mjs) || status=1
  (cd tests/browser && node --test page.test.mjs) || status=1
  (cd tests/browser && node --test turn.test.mjs) || status=1
  echo "== browser tests: a cluster of three nodes on Redis (headless Chromium)"
  (cd tests/browser && node --test cluster.test.mjs) || status=1
  echo "== browser tests (headless Firefox ESR, with Chromium)"
  (cd tests/browser && node --test firefox.test.mjs) || status=1
  echo "== browser tests without UDP: ICE-TCP, TURN over TLS (in a namespace of its own: it drops UDP there)"
  unshare -n sh -c "ip link set lo up; cd tests/browser && node --test ice-tcp.test.mjs" || status=1
  exit $status
'
