#!/usr/bin/env bash
# Runs the patched str0m's own unit tests (the patches' tests among them). The vendored copy is
# the published crate, whose Cargo.toml drops str0m's dev-dependencies, so `cargo test -p str0m`
# cannot build them; this builds a scratch copy with them added (from crates.io) and without the
# optional crypto back ends we do not use.
#
#   bash vendor/test-str0m.sh              # all of str0m's unit tests
#   bash vendor/test-str0m.sh twcc rtx     # those whose names contain a filter
#
# Two tests read docs/chrome-sdp.json, which the published crate does not ship: they fail here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-/tmp/sfu-str0m-tests}
rm -rf "$scratch/crate"
mkdir -p "$scratch/crate/docs"
cp -r "$root/vendor/str0m/src" "$root/vendor/str0m/Cargo.toml" "$scratch/crate/"
echo '{}' > "$scratch/crate/docs/chrome-sdp.json"
python3 - "$scratch/crate/Cargo.toml" "$root" <<'PY'
import re, sys
path, root = sys.argv[1], sys.argv[2]
s = open(path).read()
for dep in ["str0m-openssl", "str0m-rust-crypto", "drv"]:
    s = re.sub(r"\n\[dependencies\." + dep + r"\][^\[]*", "\n", s)
while re.search(r"\n\[target\.", s):
    s = re.sub(r"\n\[target\.[^\]]*\][^\[]*", "\n", s, count=1)
feat = re.search(r"\[features\]\n(.*?)\n\[", s, re.S).group(1)
kept = [b for b in re.split(r"\n(?=[A-Za-z_-]+ = )", feat)
        if not re.search(r"openssl|rust-crypto|drv|apple|wincrypto", b)]
s = s.replace(feat, "\n".join(kept))
s += f"""
[dev-dependencies]
serde_json = "1"
tracing-subscriber = {{ version = "0.3", features = ["env-filter"] }}
systemstat = "0.2"

[patch.crates-io]
dimpl = {{ path = "{root}/vendor/dimpl" }}
is = {{ path = "{root}/vendor/is" }}

[workspace]
"""
open(path, "w").write(s)
PY
cp "$root/Cargo.lock" "$scratch/crate/"
cd "$scratch/crate"
CARGO_TARGET_DIR="$scratch/target" cargo test --lib -- "$@"
