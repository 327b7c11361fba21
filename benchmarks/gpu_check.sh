#!/usr/bin/env bash
# The one GPU check for a lent H100 or H200: `bash benchmarks/gpu_check.sh` from the repository root.
#
# 0. benchmarks/parallel_seeds.py (first, when asked for): 8 seeds of the language study's model, one
#    after another against stacked in one `jax.vmap`ped program (the study's default on an
#    accelerator), limit PARALLEL_SEEDS_SECONDS (default 0: off). On an H200 on 2026-12-04 this
#    part took 8 s to prepare the grammar's data and 134 s for the seeds one after another, and the
#    stacked run took 114 s in a separate call: give it 300. `benchmarks/host_costs.py` runs first
#    (its own limit, 120 s): the time of a batch on the device's host and a stacked run's compiles.
#    It needs tensorflow-datasets, array-record and ml-collections as wheels (below).
# 1. benchmarks/gpu_scale.py: the largest GPT-2-style decoder whose 100-probe trace fits on the
#    card, without and with remat, and its time (limit GPU_SCALE_SECONDS, default 250 s;
#    GPU_SCALE_SETTINGS picks settings, e.g. "1" for remat only).
# 2. benchmarks/gpu.py: ResNet-18 and a GPT-2-small-sized decoder: gradient vs hvp vs hvp_fn
#    chunks, reverse-over-reverse, PyTorch double backward, torch.func, a 100-probe trace against
#    PyHessian, peak memory (limit GPU_CHECK_SECONDS, default 250 s); the argument
#    `--workloads=decoder`, passed on to gpu.py, measures the decoder alone.
#
# A part whose seconds are 0 is skipped. The whole check needs about 12 minutes (ResNet-18 alone took
# 4 of gpu.py's): in a 15-minute device budget, run it as two back-to-back calls, e.g.
#   GPU_SCALE_SECONDS=0 GPU_CHECK_SECONDS=520 bash benchmarks/gpu_check.sh --repeats 3
#   GPU_CHECK_SECONDS=0 GPU_SCALE_SECONDS=240 GPU_SCALE_SETTINGS=1,0 bash benchmarks/gpu_check.sh
# Each table is rewritten after every row, so a run cut short still returns what it measured:
# $OUT/gpu_results.md, $OUT/gpu_scale.md, logs $OUT/gpu_log.txt and $OUT/gpu_scale_log.txt.
# PyHessian (pure Python) travels as a wheel: fetch it into .whl/ (ignored by git) with
#   pip download --no-deps -d .whl pyhessian==0.1
# and name .whl in the device call's `carry`. Part 0 needs the experiments' packages the device
# image lacks, fetched the same way for its Python (3.12) with `--only-binary=:all: --python-version
# 3.12 --platform manylinux_2_17_x86_64` (and _2_24/_2_28 for dm-tree): tensorflow-datasets,
# array_record, ml_collections, immutabledict, tensorflow-metadata, termcolor, toml, dm-tree at the
# versions `pip list` shows here, and promise (an sdist: `pip wheel --no-deps -w .whl promise==2.3`).
# Extra arguments go to benchmarks/gpu.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_scale_log.txt" || true
seeds_seconds="${PARALLEL_SEEDS_SECONDS:-0}"
if [ "$seeds_seconds" -gt 0 ]; then
  before="$(wc -l < benchmarks/RESULTS.md)"
  {
    # The host's share first (a batch's time on this host, a stacked run's compiles): about 20 s on
    # a 2-core CPU, more where each compile costs more.
    timeout --signal=INT --kill-after=15 120 "$python" -m benchmarks.host_costs
    echo "benchmarks.host_costs exit status: $?"
    timeout --signal=INT --kill-after=15 "$seeds_seconds" \
      "$python" -m benchmarks.parallel_seeds --seeds=8 --steps=1000 --parallel=1,stacked
    echo "benchmarks.parallel_seeds exit status: $?"
    tail -n "+$((before + 1))" benchmarks/RESULTS.md  # Only this run's table, if it finished.
  } 2>&1 | tee "$out/parallel_seeds_log.txt"
fi
scale_seconds="${GPU_SCALE_SECONDS:-250}"
if [ "$scale_seconds" -gt 0 ]; then
  {
    timeout --signal=INT --kill-after=15 "$((scale_seconds + 20))" \
      "$python" -m benchmarks.gpu_scale --seconds "$scale_seconds" \
      --settings "${GPU_SCALE_SETTINGS:-0,1,2}"
    echo "benchmarks.gpu_scale exit status: $?"
  } 2>&1 | tee -a "$out/gpu_scale_log.txt"
fi
check_seconds="${GPU_CHECK_SECONDS:-250}"
if [ "$check_seconds" -gt 0 ]; then
  {
    "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
    timeout --signal=INT --kill-after=15 "$check_seconds" "$python" -m benchmarks.gpu "$@"
    echo "benchmarks.gpu exit status: $?"
  } 2>&1 | tee "$out/gpu_log.txt"
fi
