#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain, what `scripts/device/parity.sh` runs on a GPU
# machine that has neither a toolchain nor a network: the `bidora` binary and the prebuilt
# backend-parity test (crates/bidora-cli/tests/backends.rs), both with BACKEND compiled in.
#
#   scripts/device/build.sh [cuda|wgpu] [OUT_DIR]        (default: cuda, .device-bin)
#
# OUT_DIR (ignored by git) then holds `bidora` and `backends`; carry it to the GPU machine
# with the checkout and run `scripts/device/parity.sh OUT_DIR BACKEND` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
backend=${1:-cuda}
out=${2:-.device-bin}
case "$backend" in cuda|wgpu) ;; *) echo "backend must be cuda or wgpu, not '$backend'" >&2; exit 2;; esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/bidora-target}"
features="bidora-backend/$backend"

cargo build --release -p bidora-cli --features "$features"
# The test's executable: the path cargo reports for the `backends` test target.
test_bin=$(cargo test --release -p bidora-cli --features "$features" --test backends --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "backends" and m.get("executable"):
        print(m["executable"])')
mkdir -p "$out"
cp "$CARGO_TARGET_DIR/release/bidora" "$out/bidora"
cp "$test_bin" "$out/backends"
strip "$out/bidora" "$out/backends" 2>/dev/null || true
echo "$backend" >"$out/BACKEND"
git rev-parse HEAD >"$out/COMMIT"
ls -la "$out"
