#!/usr/bin/env bash
# Every CPU table of benchmarks/RESULTS.md in one go, one after another (run it on a quiet machine:
# nothing else running; each script records the load average at its start and end).
#
#   bash benchmarks/cpu_suite.sh [PYTHON_WITH_TORCH]
#
# PYTHON_WITH_TORCH: a Python that has torch and PyHessian beside hessjax, for the PyHessian and
# curvlinops rows of benchmarks.cpu (e.g. a venv made with --system-site-packages, then
# `pip install torch==2.13.0 pyhessian curvlinops-for-pytorch`); default: python (those rows then
# say "absent"). About 30 minutes on the quiet 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PYTHON="${1:-python}"
echo "start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
python -m benchmarks.overhead
python -m benchmarks.first_call
"$TORCH_PYTHON" -m benchmarks.cpu
python -m benchmarks.jax_peers
echo "end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
