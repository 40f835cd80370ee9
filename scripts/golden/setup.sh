#!/usr/bin/env bash
# Installs what the golden-fixture generators need, CPU only, without pulling a CUDA torch.
#   scripts/golden/setup.sh [TARGET_DIR]      (default: /opt/bidora-py)
# Then run a generator with:  PYTHONPATH=TARGET_DIR /usr/bin/python3 scripts/golden/<gen>.py
set -euo pipefail
target=${1:-/opt/bidora-py}
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Debian's CPU torch (1.13) for /usr/bin/python3, and OpenBLAS so it does not fall back to the
# reference BLAS.
apt-get install -y -q python3-torch python3-numpy python3-pip libopenblas0-pthread
mkdir -p "$target"
/usr/bin/python3 -m pip install --no-deps --target "$target" -r "$here/requirements.txt"
PYTHONPATH="$target" /usr/bin/python3 -c 'import torch, peft, transformers; print("torch", torch.__version__, "peft", peft.__version__, "transformers", transformers.__version__)'
