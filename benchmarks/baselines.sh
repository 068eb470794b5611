#!/usr/bin/env bash
# Baselines under the contract, on held-out phantoms (64x64), written with `invdiff bench`:
#   1. classical: every 2D task x {adjoint, fbp, cg, tv, l1-wavelet} (inapplicable pairs are skipped with a reason)
#      -> benchmarks/results/baselines/   (each baseline must beat `adjoint` on its natural task)
#   2. priors: MRI 4x multi-coil and CT 8-view x {best classical, DPS@1000, DiffPIR@100, DDS@50} with the shipped
#      priors, each diffusion solver as one chain (a posterior sample) and as the mean of K batched chains (a
#      posterior-mean estimate: DPS K=4, DiffPIR and DDS K=8), DPS/DiffPIR with the per-task options tuned on other
#      held-out images (invdiff.bench.tasks._TUNED) -> benchmarks/results/priors/
# Usage: benchmarks/baselines.sh [classical|priors|all]   (N_IMAGES=4 classical, N_PRIOR_IMAGES=6 priors;
#        NPROC=2 splits the rows over 2 processes with torchrun; torch threads fixed to 1 per process)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}
export OMP_NUM_THREADS=1
if [ "$NPROC" -gt 1 ]; then INVDIFF="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC -m invdiff.cli"
else INVDIFF=${INVDIFF:-"$PY -m invdiff.cli"}; fi
N=${N_IMAGES:-4}
what=${1:-all}
if [ "$what" = classical ] || [ "$what" = all ]; then
  $INVDIFF bench --no-progress --tasks inpainting-box,inpainting-random,deblur-gaussian,deblur-motion,mri-4x-singlecoil,mri-4x-multicoil,mri-8x-multicoil,ct-8view,ct-32view,ct-limited90 \
    --solvers adjoint,fbp,cg,tv,l1-wavelet --n-images "$N" --set threads=1 --out benchmarks/results/baselines
fi
if [ "$what" = priors ] || [ "$what" = all ]; then
  $INVDIFF bench --no-progress --tasks mri-4x-multicoil,ct-8view --solvers baseline,dps,diffpir,dds \
    --set dps.num_steps=1000 --set diffpir.num_steps=100 --set dds.num_steps=50 \
    --sweep dps.n_samples=1,4 --sweep diffpir.n_samples=1,8 --sweep dds.n_samples=1,8 \
    --n-images "${N_PRIOR_IMAGES:-6}" --set threads=1 --out benchmarks/results/priors
fi
