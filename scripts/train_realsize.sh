#!/usr/bin/env bash
# Train the real-size (patch) priors of issue 11 on a GPU-less or GPU machine with many cores.
#
# What: an MRI prior and a CT prior, each trained on random 64x64 patches (with coordinate channels, PaDIS) of
# anatomy-like synthetic images at the pixel scale users have: 320x320 complex MRI (fastMRI knee/brain size) and
# 256x256 CT (invdiff.datasets.anatomy). Training cost depends on the patch size only.
# Both warm-start from the shipped 64x64 priors (same CompactUNet; the coordinate inputs start at zero weight).
#
# Cost (measured in the pilot, benchmarks/results/realsize_pilot.md): ~1 s/step at batch 8, 1 CPU thread, on a
# shared 2-core machine; with 8 data-parallel processes x 2 threads and 4 data workers each, batch 32, expect
# ~0.5-1 s/step -> 40k steps in 6-11 h per prior. Training runs on CPU (invdiff.training uses gloo); on a GPU
# machine use its CPU cores the same way. Each command is resumable: re-running continues from the last checkpoint.
#
# Artefacts go to runs/<name>/ (never into the package). After checking the model card numbers (and
# benchmarks/patch_inference.py, benchmarks/realsize_pilot.py with --prior runs/<name>/<name>.safetensors), ship
# with: cp runs/<name>/<name>{.safetensors,.md,_loss.csv,_samples.png} invdiff/priors/weights/ and add the name to
# invdiff/priors/registry.py SHIPPED.
set -euo pipefail
NPROC=${NPROC:-8}          # data-parallel processes
THREADS=${THREADS:-2}      # torch threads per process
WORKERS=${WORKERS:-4}      # DataLoader workers per process (phantom generation: ~0.1 s per 256x256 image)
STEPS_MRI=${STEPS_MRI:-50750}   # mri-brainphantom-64 was exported at step 10750: +40000
STEPS_CT=${STEPS_CT:-55500}     # ct-phantom-64 was exported at step 15500: +40000
OUT=${OUT:-runs}

# MRI: complex 320x320 anatomy-like brain / knee slices, 64x64 patches with coordinates; tiled inference by default
# is decided after benchmarks/patch_inference.py (conv below; change with prior.set_inference).
invdiff train-prior --name mri-anatomy-patch64 --data mri-anatomy --size 320 --patch-size 64 --positional \
    --init-from mri-brainphantom-64 --steps "$STEPS_MRI" --batch-size 32 --lr 2e-4 --warmup 500 --ema-decay 0.999 \
    --nproc "$NPROC" --threads "$THREADS" --workers "$WORKERS" --ckpt-every 250 --keep-every 5000 \
    --eval-images 16 --n-samples 8 --sample-steps 32 --out "$OUT"

# CT: 256x256 anatomy-like abdomen / chest / head slices (HU window -1000..3000 -> [0, 1]), 64x64 patches.
invdiff train-prior --name ct-anatomy-patch64 --data ct-anatomy --size 256 --patch-size 64 --positional \
    --init-from ct-phantom-64 --steps "$STEPS_CT" --batch-size 32 --lr 2e-4 --warmup 500 --ema-decay 0.999 \
    --nproc "$NPROC" --threads "$THREADS" --workers "$WORKERS" --ckpt-every 250 --keep-every 5000 \
    --eval-images 16 --n-samples 8 --sample-steps 32 --out "$OUT"

# Measure both inference modes and DDS vs TV at real sizes with the new priors:
python benchmarks/patch_inference.py --prior "$OUT/ct-anatomy-patch64/ct-anatomy-patch64.safetensors" --images 8 \
    --name patch_inference_ct-anatomy-patch64
python benchmarks/realsize_pilot.py --prior "$OUT/ct-anatomy-patch64/ct-anatomy-patch64.safetensors" \
    --name realsize_ct-anatomy-patch64
