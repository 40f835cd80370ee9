#!/usr/bin/env bash
# The data-parallel smoke check on a GPU machine without a toolchain or a network, from the
# binaries of scripts/device/build.sh: `bidora train --devices DEVICE,DEVICE` (two peers on one
# device, over burn-collective with that backend's tensors) against DEVICE alone, 5 steps of
# LoRA, DoRA and BiDoRA (DARTS, with retraining) on the tiny random BERT; the adapters must
# agree to the tolerance of crates/bidora-cli/tests/cli.rs
# (`two_cpu_peers_train_the_adapter_one_device_trains`, which this runs with
# BIDORA_PEER_DEVICE=DEVICE). With two GPUs, also run it by hand as
# `bidora train ... --devices cuda:0,cuda:1`.
#
#   scripts/device/peers.sh [BIN_DIR] [DEVICE]      (default: .device-bin, cuda:0)
#
# Run from the repository root of a checkout of the commit in BIN_DIR/COMMIT.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-.device-bin}
device=${2:-cuda:0}
[ -x "$bin/bidora" ] && [ -x "$bin/cli" ] || {
    echo "no prebuilt binaries in '$bin': run scripts/device/build.sh first" >&2
    exit 2
}
bin=$(cd "$bin" && pwd)
export CARGO_BIN_EXE_bidora="$bin/bidora"
export CARGO_MANIFEST_DIR="$PWD/crates/bidora-cli"
export BIDORA_PEER_DEVICE="$device"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
exec "$bin/cli" --exact two_cpu_peers_train_the_adapter_one_device_trains --nocapture
