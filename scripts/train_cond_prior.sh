#!/usr/bin/env bash
# Train the conditional MRI prior mri-brainphantom-64-cond (issue 13) in the background, resumable.
#
#   scripts/train_cond_prior.sh                # start or resume (re-running continues from the last checkpoint)
#   STEPS=20000 OUT=/path/runs scripts/train_cond_prior.sh
#
# Same architecture as the shipped mri-brainphantom-64 (CompactUNet base 16, levels 1,2,4,8, 2 complex channels) plus
# 3 conditioning channels [zero-filled A^H y / s, mask]; warm start from the shipped unconditional prior (its weights,
# zero weights on the conditioning inputs; steps count on from its 10750). One torch thread, one process.
# Export afterwards with scripts/export_cond_prior.sh (same OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-16750}
OUT=${OUT:-runs}
NAME=mri-brainphantom-64-cond
mkdir -p "$OUT/$NAME"
setsid nohup env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $PY -m invdiff.training --name $NAME --data mri --conditional mri \
  --steps "$STEPS" --batch-size 16 --lr 3e-4 --warmup 200 --ema-decay 0.999 --threads 1 \
  --base-channels 16 --channel-mult 1,2,4,8 --num-blocks 1 --ckpt-every 100 --keep-every 1000 --log-every 50 \
  --init-from mri-brainphantom-64 --out "$OUT" --export never >> "$OUT/$NAME/train.log" 2>&1 < /dev/null &
echo "launched $NAME (pid $!), log: $OUT/$NAME/train.log"
