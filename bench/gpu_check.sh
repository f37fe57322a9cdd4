#!/usr/bin/env bash
# GPU check (issue 11): train the 128 px X-ray built-in (C -> X -> N; C <-> N) on one GPU and
# print the causal error (TVD to the exact P(N | do(C))), the image-feature error next to real
# images' own, the fidelity figures with their real-vs-real floors, steps/s and peak GPU memory.
# Sized to finish in under 8 minutes on one GPU: 8,000 rows, default model, at most 120 s per
# stage (TrainConfig.time_limit_s), bf16 autocast where the trainer uses it on CUDA.
#
#   bash bench/gpu_check.sh                 # the GPU run (falls back to a CPU smoke run)
#   MDCM_GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh   # force the CPU smoke run
#
# Without a CUDA GPU it runs the same pipeline as a small CPU smoke run (600 rows, 20 steps per
# stage) so that the script itself is tested (tests/test_images_slow.py); its numbers then mean
# nothing about quality.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEVICE="${MDCM_GPU_CHECK_DEVICE:-}"
if [ -z "$DEVICE" ]; then
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
START=$(date +%s)
if [ "$DEVICE" = "cpu" ]; then
  echo "gpu_check: no CUDA GPU (or MDCM_GPU_CHECK_DEVICE=cpu): CPU smoke run of the same pipeline"
  "$PY" bench/image_sizes.py --examples xray --sizes 128 --seeds 0 --device cpu --n 600 \
    --set steps=20 --set coder_steps=20 --set check_samples=256 --set check_every=10 \
    --set time_limit_s=120
else
  "$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0))'
  "$PY" bench/image_sizes.py --examples xray --sizes 128 --seeds 0 --device "$DEVICE" \
    --set time_limit_s=120
fi
echo "gpu_check: finished in $(( $(date +%s) - START )) s on $DEVICE"
