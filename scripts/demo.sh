#!/usr/bin/env bash
# The README's first command: train a small diffusion model on the 8x8 digits that ship
# with scikit-learn (no download), then draw samples and the denoising animation.
#
#   bash scripts/demo.sh                      # ~3-5 minutes on 2 CPU cores
#   bash scripts/demo.sh --device cuda        # extra arguments go to `difflab train`
#   OUT=runs/other bash scripts/demo.sh       # another run folder
#
# Running it again resumes (or reuses) the run in $OUT instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
PY=.venv/bin/python
OUT=${OUT:-runs/digits-demo}
start=$(date +%s)

resume=()
if [ -f "$OUT/checkpoints/latest" ]; then
  echo "[demo] $OUT already has a checkpoint: resuming it" >&2
  resume=(--resume)
  preset=()
else
  preset=(--preset digits)
fi
"$PY" -m difflab train "${preset[@]}" --out "$OUT" "${resume[@]}" "$@"
"$PY" -m difflab sample --checkpoint "$OUT" --gif --out "$OUT/samples-final.png"

took=$(( $(date +%s) - start ))
cat <<MSG

[demo] finished in $((took / 60))m$((took % 60))s. Outputs in $OUT:
  $OUT/samples-final.png   100 generated digits, one column per class (DDIM, 50 steps, EMA weights)
  $OUT/samples-final.gif   the denoising trajectory: x_t (left) and the predicted x_0 (right)
  $OUT/loss.png            the training loss curve
  $OUT/samples/            grids written during training
  $OUT/checkpoints/        resumable checkpoints (difflab train --out $OUT --resume)
Try: $PY -m difflab sample --checkpoint $OUT --sampler ddpm --steps 250 --seed 1
MSG
