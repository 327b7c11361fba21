#!/usr/bin/env bash
# The one GPU check for a lent H100: `bash benchmarks/gpu_check.sh` from the repository root.
#
# Runs benchmarks/gpu.py (ResNet-18 and a GPT-2-small-sized decoder: gradient vs hvp vs hvp_fn
# chunks, a 100-probe trace, peak memory, PyTorch double backward) under a hard time limit that
# leaves room for a rerun inside a 15-minute device budget. The table is rewritten after every row,
# so a run cut short still returns what it measured: $OUT/gpu_results.md, log in $OUT/gpu_log.txt.
# Extra arguments go to benchmarks/gpu.py (e.g. --skip-check, --repeats 3).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python -c "import jax; print('jax', jax.__version__, jax.devices())"
  timeout --signal=INT --kill-after=15 "${GPU_CHECK_SECONDS:-330}" python -m benchmarks.gpu "$@"
  echo "benchmarks.gpu exit status: $?"
} 2>&1 | tee "$out/gpu_log.txt"
