#!/usr/bin/env bash
# Runs the backend-parity check from prebuilt binaries (scripts/device/build.sh), on a machine
# without a Rust toolchain or a network: the same `bidora train` commands as the CI test
# (tiny random BERT; LoRA, DoRA, BiDoRA with dropout; classification and regression) on the
# CPU and on BACKEND, each compared step by step with the CPU reference committed under
# crates/bidora-cli/tests/fixtures/parity/. Prints every difference; exits non-zero past the
# tolerance (stated in crates/bidora-cli/tests/backends.rs).
#
#   scripts/device/parity.sh [BIN_DIR] [BACKEND]      (default: .device-bin, the one it was built for)
#
# Run from the repository root of a checkout of the commit in BIN_DIR/COMMIT.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-.device-bin}
backend=${2:-$(cat "$bin/BACKEND")}
[ -x "$bin/bidora" ] && [ -x "$bin/backends" ] || {
    echo "no prebuilt binaries in '$bin': run scripts/device/build.sh first" >&2
    exit 2
}
if [ -f "$bin/COMMIT" ] && command -v git >/dev/null && [ -d .git ] &&
    [ "$(git rev-parse HEAD 2>/dev/null)" != "$(cat "$bin/COMMIT")" ]; then
    echo "warning: binaries built at $(cat "$bin/COMMIT"), checkout at $(git rev-parse HEAD)" >&2
fi
bin=$(cd "$bin" && pwd)
export CARGO_BIN_EXE_bidora="$bin/bidora"
export CARGO_MANIFEST_DIR="$PWD/crates/bidora-cli"
export BIDORA_PARITY_BACKENDS="cpu,$backend"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
exec "$bin/backends" --test-threads 1 --nocapture
