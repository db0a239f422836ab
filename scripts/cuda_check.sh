#!/usr/bin/env bash
# The CUDA checks of issue 13, for a machine whose python3 has a CUDA build of torch and Lightning
# (nothing is installed: the checkout is used in place, through PYTHONPATH):
#   1. every test that runs on a device, on cuda, and the test that a step which is not measured
#      makes no host synchronization (torch.cuda.set_sync_debug_mode("error"));
#   2. the overhead benchmark's step-time rows on the GPU (benchmarks/results/overhead_cuda.md).
# Usage: bash scripts/cuda_check.sh [--quick]   (the step-time rows took ~8 minutes on the CPU; --quick: smaller);
# PYTHON=... picks another interpreter than python3.
# With $OUT set (the device tool), the logs and the result table are copied there.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: these checks need one')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
logs="${OUT:-benchmarks/results}"
mkdir -p "$logs"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" | tee "$logs/cuda_check.log"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_diagnostics.py tests/test_reduce.py tests/test_init.py tests/test_callbacks.py \
    2>&1 | tee -a "$logs/cuda_check.log" || status=1
"$PYTHON" -m benchmarks overhead --device cuda "$@" 2>&1 | tee -a "$logs/cuda_check.log" || status=1
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/overhead_cuda.* "$OUT"/ 2>/dev/null || true
fi
exit $status
