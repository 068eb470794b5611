#!/usr/bin/env bash
# Export the shipped artefacts (weights, model card, samples, loss CSV) of both priors into
# invdiff/priors/weights/ from the latest training checkpoints (or from CKPT_CT / CKPT_MRI if set).
# Safe to run while training is still going (it reads the last atomically written checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs}
export OMP_NUM_THREADS=1
exp() {  # name data ckpt
  local ck=${3:-$OUT/$1/ckpt/latest.safetensors}
  # the regenerate command in the model card is rebuilt from the run's saved flags (runs/<name>/config.json)
  $PY -m invdiff.training --config "$OUT/$1/config.json" --export only --checkpoint "$ck"
}
case "${1:-all}" in
  ct)  exp ct-phantom-64 ct "${CKPT_CT:-}" ;;
  mri) exp mri-brainphantom-64 mri "${CKPT_MRI:-}" ;;
  all) exp ct-phantom-64 ct "${CKPT_CT:-}"; exp mri-brainphantom-64 mri "${CKPT_MRI:-}" ;;
  *)   echo "usage: $0 [all|ct|mri]" >&2; exit 2 ;;
esac
