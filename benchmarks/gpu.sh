#!/usr/bin/env bash
# GPU measurements of issue 14 (run on a machine with an NVIDIA GPU; nothing here runs on the CPU-only CI):
#   1. the sampler overhead table (benchmarks/overhead.py) at 64x64 on the GPU, fp32 and bf16;
#   2. realistic sizes: 320x320 MRI with 15 coils and 512x512 CT (2D, parallel beam), each sampler's time per step
#      and time inside the network (random-weight network of the shipped architecture: the shipped priors were
#      trained at 64x64, so quality at these sizes is not measured here, only speed and memory).
# Results name the card (nvidia-smi): benchmarks/results/gpu/{overhead_fp32,overhead_bf16,sizes}.{json,md}.
# Usage: bash benchmarks/gpu.sh [python]       (default python: python3; PYTHONPATH is set to the checkout)
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/benchmarks/results/gpu"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
"$PY" "$ROOT/benchmarks/overhead.py" --device cuda --out "$OUT/overhead_fp32"
"$PY" "$ROOT/benchmarks/overhead.py" --device cuda --precision bf16 --out "$OUT/overhead_bf16"
"$PY" "$ROOT/benchmarks/overhead.py" --device cuda --realistic --out "$OUT/sizes"
echo "wrote $OUT"
