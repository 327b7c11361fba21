"""Two processes on localhost, joined by jax.distributed, compute the trace of one process."""

import json

import jax
import numpy as np
import pytest

import hessjax
from tests import _multihost_worker, _subprocess, toy

NUM_PROCESSES = 2
TIMEOUT_SECONDS = 180


def _run_processes() -> list[dict]:
    completed = _subprocess.run_processes(_subprocess.command("_multihost_worker.py"),
                                          num_processes=NUM_PROCESSES, num_devices=2,
                                          timeout=TIMEOUT_SECONDS)
    for process in completed:
        if process.returncode:
            pytest.fail(f"a process of the two-process run failed:\n{process.stderr[-4000:]}")
    return [json.loads(process.stdout.strip().splitlines()[-1]) for process in completed]


def test_two_processes_compute_the_trace_of_one(x64):
    results = _run_processes()
    params = toy.mlp_params(jax.random.key(0))
    batch = toy.classification_batch(jax.random.key(1), n=_multihost_worker.NUM_EXAMPLES)
    expected = hessjax.trace(hessjax.hvp_fn(toy.mlp_loss, params, batch), params,
                             jax.random.key(_multihost_worker.TRACE_KEY), num_matvecs=16,
                             chunk_size=8)
    assert sorted(result["process_index"] for result in results) == [0, 1]
    for result in results:
        assert result["started"]
        assert result["process_count"] == NUM_PROCESSES
        assert (result["device_count"], result["local_device_count"]) == (4, 2)
        assert result["global_batch_shape"] == [_multihost_worker.NUM_EXAMPLES, 5]
        np.testing.assert_allclose(result["value"], float(expected.value), rtol=1e-9)
        np.testing.assert_allclose(result["stderr"], float(expected.stderr), rtol=1e-9)
