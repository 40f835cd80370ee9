#!/usr/bin/env bash
# The speed peer of `cargo xtask bench --peer`: current PyTorch, transformers and PEFT (and gguf,
# with which transformers reads SmolLM2's GGUF file) from the package registry, in a venv of
# their own (what a user would install today).
#   scripts/bench/setup-peer.sh [VENV_DIR]      (default: /opt/bidora-peer)
# torch's x86_64 wheel brings its CUDA libraries (about 7 GB on disk); it runs on the CPU with
# MKL and oneDNN. The golden-fixture generators keep Debian's torch 1.13
# (scripts/golden/setup.sh): they need nothing newer.
set -euo pipefail
venv=${1:-/opt/bidora-peer}
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.9.0 transformers==5.24.0 peft==0.21.2 accelerate==1.12.0 gguf==0.19.0
"$venv/bin/python" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "MKL", torch.backends.mkl.is_available())'
