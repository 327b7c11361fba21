"""Sharded curvature equals single-device curvature, and really runs sharded.

The 8-device checks run once, in one child process (tests/_sharded_worker.py), because the pytest
process's JAX already has its single CPU device; the tests below read its report.
"""

import json
import subprocess

import jax
import jax.numpy as jnp
import pytest

from hessjax import sharding
from tests import _subprocess

LAYOUTS = ("data8", "grid")
COMPARED = ("hvp", "hvp_fn", "block", "dataset_hvp_fn", "trace", "top_eigenvalues", "density")


@pytest.fixture(scope="module")
def report():
    completed = subprocess.run(_subprocess.command("_sharded_worker.py"), capture_output=True,
                               text=True, timeout=300, env=_subprocess.environment(8))
    if completed.returncode:
        pytest.fail(f"the 8-device worker failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_results_equal_single_device_results(report, layout):
    assert report["device_count"] == 8
    differences = report[layout]["differences"]
    assert set(differences) == set(COMPARED)
    for name, difference in differences.items():
        assert difference < 1e-6, (layout, name, difference)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_is_split_over_all_devices_and_params_replicated(report, layout):
    placed = report[layout]
    assert placed["batch_devices"] == 8
    assert placed["batch_spec"] == "P('data',)"
    assert placed["stacked_spec"] == "P(None, 'data')"
    assert placed["params_replicated"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sum_over_examples_is_an_all_reduce(report, layout):
    assert report[layout]["all_reduce"]


def test_probe_blocks_are_split_over_the_probes_axis(report):
    assert report["grid"]["block_spec"] == "P('probes',)"
    assert report["grid"]["block_devices"] == 8
    # Without shard_probes the block is not split across probes.
    assert report["data8"]["block_spec"] == "P()"


def test_indivisible_batch_error_names_both_sizes(report):
    message = report["indivisible_error"]
    assert "12 examples" in message and "8 devices" in message and "'data'" in message


def test_shard_probes_is_cached_per_mesh():
    mesh = sharding.make_mesh()
    first = sharding.shard_probes(lambda v: v, mesh)
    second = sharding.shard_probes(lambda v: 2 * v, mesh)
    # The same static function: a second operator reuses the compiled estimators.
    assert first.func is second.func


def test_mesh_and_placement_errors_name_the_argument():
    with pytest.raises(ValueError, match="`data` \\* `probes` must equal the number of devices"):
        sharding.make_mesh(data=2)
    with pytest.raises(ValueError, match="`probes` must be a positive integer"):
        sharding.make_mesh(probes=0)
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="`axis` 'model' is not an axis of the mesh"):
        sharding.shard_batch(jnp.zeros((4, 2)), mesh, axis="model")
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
        sharding.shard_probes(lambda v: v, "mesh")


def test_scalar_batch_leaves_are_replicated():
    mesh = sharding.make_mesh()
    placed = sharding.shard_batch({"x": jnp.zeros((4, 2)), "temperature": 1.5}, mesh)
    assert placed["temperature"].sharding.is_fully_replicated
    assert placed["x"].sharding.spec == jax.sharding.PartitionSpec("data")


@pytest.mark.parametrize("environ", [{}, {"HESSJAX_DISTRIBUTED": "off"},
                                     {"HESSJAX_COORDINATOR": "127.0.0.1:1",
                                      "HESSJAX_NUM_PROCESSES": "1", "HESSJAX_PROCESS_ID": "0"},
                                     {"SLURM_NTASKS": "1"}])
def test_initialize_distributed_is_a_no_op_on_one_host(environ):
    assert sharding.initialize_distributed(environ) is False


@pytest.mark.parametrize("environ,message", [
    ({"HESSJAX_COORDINATOR": "127.0.0.1:1"}, "HESSJAX_NUM_PROCESSES and HESSJAX_PROCESS_ID must"),
    ({"HESSJAX_COORDINATOR": "127.0.0.1:1", "HESSJAX_NUM_PROCESSES": "two",
      "HESSJAX_PROCESS_ID": "0"}, "HESSJAX_NUM_PROCESSES must be a non-negative integer"),
    ({"HESSJAX_COORDINATOR": "127.0.0.1:1", "HESSJAX_NUM_PROCESSES": "2",
      "HESSJAX_PROCESS_ID": "2"}, "HESSJAX_PROCESS_ID must be in \\[0, HESSJAX_NUM_PROCESSES=2\\)"),
    ({"HESSJAX_COORDINATOR": "127.0.0.1:1", "HESSJAX_NUM_PROCESSES": "2",
      "HESSJAX_PROCESS_ID": "0", "HESSJAX_LOCAL_DEVICE_IDS": "0;1"},
     "HESSJAX_LOCAL_DEVICE_IDS must be comma-separated integers"),
    ({"HESSJAX_DISTRIBUTED": "yes"}, "HESSJAX_DISTRIBUTED must be 'auto' or 'off'"),
])
def test_initialize_distributed_rejects_a_malformed_environment(environ, message):
    with pytest.raises(ValueError, match=message):
        sharding.initialize_distributed(environ)
