#!/usr/bin/env bash
# Baselines under the contract, on held-out phantoms (64x64), written with `invdiff bench`:
#   1. classical: every 2D task x {adjoint, fbp, cg, tv, l1-wavelet} (inapplicable pairs are skipped with a reason)
#      -> benchmarks/results/baselines/   (each baseline must beat `adjoint` on its natural task)
#   2. priors: MRI 4x multi-coil and CT 8-view x {best classical, DPS@1000, DiffPIR@100, DDRM (where it applies),
#      DDS@50} with the shipped priors -> benchmarks/results/priors/
# Usage: benchmarks/baselines.sh [classical|priors|all]   (N_IMAGES=4 by default; torch threads fixed to 1)
set -euo pipefail
cd "$(dirname "$0")/.."
INVDIFF=${INVDIFF:-.venv/bin/invdiff}
N=${N_IMAGES:-4}
what=${1:-all}
if [ "$what" = classical ] || [ "$what" = all ]; then
  $INVDIFF bench --no-progress --tasks inpainting-box,inpainting-random,deblur-gaussian,deblur-motion,mri-4x-singlecoil,mri-4x-multicoil,mri-8x-multicoil,ct-8view,ct-32view,ct-limited90 \
    --solvers adjoint,fbp,cg,tv,l1-wavelet --n-images "$N" --set threads=1 --out benchmarks/results/baselines
fi
if [ "$what" = priors ] || [ "$what" = all ]; then
  $INVDIFF bench --no-progress --tasks mri-4x-multicoil,ct-8view --solvers baseline,dps,diffpir,dds \
    --set dps.num_steps=1000 --set diffpir.num_steps=100 --set dds.num_steps=50 --set dds.dc=ls \
    --n-images "${N_PRIOR_IMAGES:-2}" --set threads=1 --out benchmarks/results/priors
fi
