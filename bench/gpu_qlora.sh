#!/usr/bin/env bash
# QLoRA on one real GPU: the internlm2-chat-7b-qlora profile for a few iterations on a model of the real
# 7B shape with random weights (nothing is downloaded). Prints tokens/s and peak GPU memory.
#
#   bench/gpu_qlora.sh [--iters 32] [--workdir DIR]      (needs .venv: `make venv`; about 40 GB of disk)
#
# It needs one CUDA GPU and about 16 GB of free disk for the random 7B model (written to --workdir).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
  echo "gpu_qlora: nvidia-smi failed: no GPU visible (the preflight below says what that means)" >&2
# Preflight: do torch, bitsandbytes, transformers and peft match, and does one nf4 forward run? One call
# answers it, before minutes are spent building a 7B model.
echo "== preflight: tools/check_stack.py --gpu"
"$PY" tools/check_stack.py --gpu || { echo "gpu_qlora: preflight failed (above)" >&2; exit 3; }
exec "$PY" bench/gpu_qlora.py "$@"
