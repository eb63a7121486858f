#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the GPU tests for real, then the GPU
# benchmark against PyTorch and a copy probe; write benchmarks/RESULTS-gpu.md.
# About 8 minutes at most (tests 4, benchmark 4). The report's "What it means"
# section is written by hand: rewrite it for the new figures after a run.
#
#   bash benchmarks/gpu_check.sh [OUTPUT]
#
# Needs numba-cuda (pip install -e '.[cuda]'), and torch built with CUDA for
# the PyTorch columns (without it they read n/a). Exit status: 0 when tests
# and benchmark passed, 3 when no GPU is usable, else the first failure's.
set -u
cd "$(dirname "$0")/.."
OUTPUT="${1:-benchmarks/RESULTS-gpu.md}"
LOGS="$(mktemp -d)"
export BNSGD_NUMBA_REAL_GPU=1
unset NUMBA_ENABLE_CUDASIM
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "(no nvidia-smi)"
if ! python - <<'PY'
import sys

import bnsgd_numba as bn
from bnsgd_numba import _cuda_backend as backend

print("cuda_available:", bn.cuda_available(), "| simulator:", backend.SIMULATOR)
if not bn.cuda_available() or backend.SIMULATOR:
    print("no usable GPU:", backend.unavailable_reason() or "the simulator is on")
    sys.exit(3)
print("device:", backend.device_name())
PY
then
    exit 3
fi

echo "== GPU tests (tests/gpu on the real GPU)"
timeout 240 python -m pytest tests/gpu -q -p no:cacheprovider -rs 2>&1 | tee "$LOGS/tests.log"
tests_rc=${PIPESTATUS[0]}
summary="$(grep -E '(passed|failed|error)' "$LOGS/tests.log" | tail -n 1)"

echo "== GPU benchmark"
timeout 300 python -m bnsgd_numba.bench.gpu --output "$OUTPUT" \
    --note "GPU tests on this device (\`pytest tests/gpu\`, BNSGD_NUMBA_REAL_GPU=1): ${summary:-no summary} (exit ${tests_rc})."
bench_rc=$?

echo "tests exit ${tests_rc}, benchmark exit ${bench_rc}; report: ${OUTPUT}"
if [ "$tests_rc" -ne 0 ]; then exit "$tests_rc"; fi
exit "$bench_rc"
