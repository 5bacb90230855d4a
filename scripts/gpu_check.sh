#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (CI has none; there they skip):
#   1. every test marked `cuda` (CUDA vs CPU paths of the env, the QP, the actors, the CBF rows,
#      CBF-Beta's box; training of every algorithm hybrid and all-GPU) and the GPU benchmark's smoke test;
#   2. benchmarks/gpu_throughput.py: hybrid vs all-GPU vs all-CPU env-steps/s, qpth vs exact on CUDA.
# Usage: bash scripts/gpu_check.sh [LOG_DIR]   (logs: LOG_DIR/cuda_tests.log, LOG_DIR/gpu_throughput.log)
# Each part has its own time limit, so one hang still leaves the other's log.
set -u
cd "$(dirname "$0")/.."
logs="${1:-.cache/gpu-check}"
mkdir -p "$logs"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$logs/cuda_tests.log"
"$python" -c "import torch, numpy, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'numba', numba.__version__, 'available', torch.cuda.is_available())" 2>&1 | tee -a "$logs/cuda_tests.log"
timeout "${CUDA_TESTS_TIMEOUT:-300}" "$python" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/ \
    -m cuda 2>&1 | tee -a "$logs/cuda_tests.log"
timeout 120 "$python" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_benchmarks_smoke.py \
    -k gpu_benchmark 2>&1 | tee -a "$logs/cuda_tests.log"
timeout "${GPU_BENCH_TIMEOUT:-240}" "$python" benchmarks/gpu_throughput.py --num-envs 256 1024 --iterations 3 \
    2>&1 | tee "$logs/gpu_throughput.log"
