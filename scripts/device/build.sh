#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain, what `scripts/device/parity.sh` and
# `scripts/device/peers.sh` run on a GPU machine that has neither a toolchain nor a network:
# the `bidora` binary, the prebuilt backend-parity test (crates/bidora-cli/tests/backends.rs)
# and the CLI tests (crates/bidora-cli/tests/cli.rs, for the data-parallel check), all with
# BACKEND compiled in.
#
#   scripts/device/build.sh [cuda|wgpu] [OUT_DIR]        (default: cuda, .device-bin)
#
# OUT_DIR (ignored by git) then holds `bidora`, `backends` and `cli`; carry it to the GPU
# machine with the checkout and run `scripts/device/parity.sh OUT_DIR BACKEND` and
# `scripts/device/peers.sh OUT_DIR DEVICE` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
backend=${1:-cuda}
out=${2:-.device-bin}
case "$backend" in cuda|wgpu) ;; *) echo "backend must be cuda or wgpu, not '$backend'" >&2; exit 2;; esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/bidora-target}"
features="bidora-backend/$backend"

cargo build --release -p bidora-cli --features "$features"
# A test's executable: the path cargo reports for the test target named $1.
test_bin() {
    cargo test --release -p bidora-cli --features "$features" --test "$1" --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        print(m["executable"])' "$1"
}
mkdir -p "$out"
cp "$CARGO_TARGET_DIR/release/bidora" "$out/bidora"
for t in backends cli; do
    cp "$(test_bin "$t")" "$out/$t"
done
strip "$out/bidora" "$out/backends" "$out/cli" 2>/dev/null || true
echo "$backend" >"$out/BACKEND"
git rev-parse HEAD >"$out/COMMIT"
ls -la "$out"
