#!/usr/bin/env bash
# Train invdiff's shipped priors in the background (resumable), then export the artefacts into
# invdiff/priors/weights/ (weights, model card, sample grid, loss CSV).
#
#   scripts/train_priors.sh            # start or resume both runs (ct-phantom-64, mri-brainphantom-64)
#   scripts/train_priors.sh ct         # only one of them (ct | mri)
#   STEPS=20000 scripts/train_priors.sh  # change the planned number of steps (resume continues to it)
#   WARM=1 STEPS=20000 scripts/train_priors.sh ct  # continue the *shipped* weights (a fresh run dir with
#                                                  # --init-from <name>: steps count on from the shipped step)
#
# Re-running the same command continues from runs/<name>/ckpt/latest.safetensors. Each run uses one
# torch thread and nice 10 (the machine is shared). Logs: runs/<name>/train.log.
# Export any checkpoint (also an intermediate one) at any time:
#   python -m invdiff.training --name ct-phantom-64 --data ct --export only [--checkpoint FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-8000}   # ~2.5 h at the 1.2-1.5 s/step measured with the CPU shared (0.43 s/step idle)
OUT=${OUT:-runs}
COMMON=(--steps "$STEPS" --batch-size 16 --lr 3e-4 --warmup 500 --ema-decay 0.999 --threads 1
        --base-channels 16 --channel-mult 1,2,4,8 --num-blocks 1 --ckpt-every 250 --keep-every 2000 --out "$OUT")

launch() {  # name data [extra flags]
  local name=$1 data=$2; shift 2; local extra="$*"
  if [ -n "${WARM:-}" ]; then extra="$extra --init-from $name --warmup 200"; fi
  mkdir -p "$OUT/$name"
  # training and export are separate processes, so the export uses the code present when training ends
  setsid nohup nice -n 10 bash -c "OMP_NUM_THREADS=1 $PY -m invdiff.training --name $name --data $data ${COMMON[*]} $extra --export never \
    && OMP_NUM_THREADS=1 $PY -m invdiff.training --name $name --data $data ${COMMON[*]} $extra --export only" \
    >> "$OUT/$name/train.log" 2>&1 &
  echo "launched $name (pid $!), log: $OUT/$name/train.log"
}

case "${1:-all}" in
  ct)  launch ct-phantom-64 ct ;;
  mri) launch mri-brainphantom-64 mri --data-shift 0 ;;   # complex data: zero mean by symmetry
  all) launch ct-phantom-64 ct; launch mri-brainphantom-64 mri --data-shift 0 ;;
  *)   echo "usage: $0 [all|ct|mri]" >&2; exit 2 ;;
esac
