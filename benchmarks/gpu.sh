#!/usr/bin/env bash
# The GPU figure (issue 20): siglip-base from WebP on one NVIDIA GPU, bf16/fp16, a few batch sizes, preparation
# on every core, CPU and on-device resize/normalise. Installs nothing beyond the project; bounded to 8 minutes.
#   benchmarks/gpu.sh [--dry-run] [extra benchmarks/gpu.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  make install TORCH_SPEC=torch
fi
if [ "${1:-}" != "--dry-run" ] && ! command -v nvidia-smi >/dev/null; then
  echo "no NVIDIA GPU here (nvidia-smi missing): run with --dry-run for the CPU smoke run" >&2
  exit 2
fi
exec timeout 480 .venv/bin/python benchmarks/gpu.py "$@"
