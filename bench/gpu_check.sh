#!/usr/bin/env bash
# The GPU path, checked in at most 5 minutes on one GPU (offline Lite weights, random weights
# for the backbones whose ImageNet weights are not offline): throughput per backbone against
# the CPU runtime, and GPU-vs-CPU descriptor agreement per pooling. Prints JSON to stdout.
#   bash bench/gpu_check.sh [--images 8] [--size 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
exec timeout 300 python -m bench.gpu_check "$@"
