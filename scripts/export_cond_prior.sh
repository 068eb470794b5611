#!/usr/bin/env bash
# Export the conditional MRI prior (issue 13) into invdiff/priors/weights/mri-brainphantom-64-cond.{safetensors,md}
# (+ _samples.png, _loss.csv) from its training run; safe while training still runs (checkpoints are atomic).
#
#   OUT=/path/runs scripts/export_cond_prior.sh [CHECKPOINT]     # default: $OUT/mri-brainphantom-64-cond/ckpt/latest.safetensors
#   WEIGHTS_DIR=../cond-export scripts/export_cond_prior.sh             # an intermediate export outside the repository
#   EVAL_IMAGES=16 scripts/export_cond_prior.sh                 # fewer held-out phantoms in the model card (default 64)
#
# The model card's regenerate command is rebuilt from the checkpoint's config with --out runs (the run folder is
# a local choice, not part of the recipe): it is scripts/train_cond_prior.sh's command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs}
CKPT=${1:-$OUT/mri-brainphantom-64-cond/ckpt/latest.safetensors}
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $PY - "$CKPT" "${WEIGHTS_DIR:-}" "${EVAL_IMAGES:-64}" <<'PYEOF'
import json, sys
from pathlib import Path
from invdiff.training import export, read_train_checkpoint, regenerate_command
from invdiff.priors.registry import WEIGHTS_DIR
ckpt, wdir = sys.argv[1], sys.argv[2] or None
meta, _ = read_train_checkpoint(ckpt)
command = regenerate_command(dict(meta["config"], out="runs"), meta["step"])
# default: the shipped prior in the package (replacing it is the point of this script)
res = export(ckpt, weights_dir=wdir or WEIGHTS_DIR, eval_images=int(sys.argv[3]), command=command, threads=1,
             loss_csv=Path(ckpt).resolve().parents[1] / "loss.csv", overwrite_shipped=wdir is None)
# the run folder is a local choice: the shipped metadata says "runs", as the regenerate command does
import torch
from invdiff.priors.neural import NeuralPrior
prior = NeuralPrior.load(res["weights"])
prior.info["training_config"]["out"] = "runs"
prior.save(res["weights"], dtype=torch.float16)
print(json.dumps(res, indent=1))
PYEOF
