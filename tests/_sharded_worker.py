"""Sharded-versus-single-device curvature on 8 CPU devices; run by tests/test_sharding.py.

Run as a script in a fresh process whose environment sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is fixed when JAX starts,
and the pytest process has started it with one device). Prints one JSON object: for each layout
(``data8``: the batch split 8 ways; ``grid``: a 2 x 4 data x probes mesh with sharded probes), the
largest absolute difference of each result from the single-device computation, and evidence of
where the computation ran.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hessjax  # noqa: E402
from hessjax import sharding  # noqa: E402
from tests import toy  # noqa: E402

NUM_EXAMPLES = 32
KEY = jax.random.key(7)


def _difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@jax.jit
def _statistics(matvec, dataset_matvec, like) -> dict:
    """Products, eigenvalues and density in one compiled program (one compilation per layout)."""
    v = jax.tree_util.tree_map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)),
                               like)
    # A block of 8 vectors, applied as the estimators apply their chunks of probes.
    block = jax.tree_util.tree_map(lambda x: jnp.stack([x * (i + 1) for i in range(8)]), v)
    eigen = hessjax.top_eigenvalues(matvec, like, KEY, k=2, num_steps=12)
    density = hessjax.spectral_density(matvec, like, KEY, num_probes=4, num_steps=8)
    return {"hvp_fn": matvec(v), "block": jax.vmap(matvec)(block),
            "dataset_hvp_fn": dataset_matvec(v), "top_eigenvalues": eigen.values,
            "density": (density.nodes, density.weights)}


def _trace(matvec, like) -> tuple:
    """The trace outside jit, as a user calls it: one compiled kernel per chunk of probes."""
    estimate = hessjax.trace(matvec, like, KEY, num_matvecs=16, chunk_size=8)
    return estimate.value, estimate.stderr


def _devices_of(tree) -> int:
    return min(len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(tree))


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    params = toy.mlp_params(jax.random.key(0))
    batch = toy.classification_batch(jax.random.key(1), n=NUM_EXAMPLES)
    # Two batches of 16 stacked on a leading batch-index axis, for dataset_hvp_fn.
    stacked = jax.tree_util.tree_map(lambda x: x.reshape((2, NUM_EXAMPLES // 2) + x.shape[1:]),
                                     batch)
    loss = toy.mlp_loss
    reference = _statistics(hessjax.hvp_fn(loss, params, batch),
                            hessjax.dataset_hvp_fn(loss, params, stacked), params)
    reference["trace"] = _trace(hessjax.hvp_fn(loss, params, batch), params)
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    reference["hvp"] = hessjax.hvp(loss, params, batch, v)
    report: dict = {"device_count": jax.device_count()}
    layouts = {"data8": sharding.make_mesh(), "grid": sharding.make_mesh(data=2, probes=4)}
    for name, mesh in layouts.items():
        sharded_params = sharding.replicate(params, mesh)
        sharded_batch = sharding.shard_batch(batch, mesh)
        sharded_stacked = sharding.shard_batch(stacked, mesh, batch_axis=1)
        matvec = hessjax.hvp_fn(loss, sharded_params, sharded_batch)
        if mesh.shape[sharding.PROBES] > 1:
            matvec = sharding.shard_probes(matvec, mesh)
        dataset_matvec = hessjax.dataset_hvp_fn(loss, sharded_params, sharded_stacked)
        results = _statistics(matvec, dataset_matvec, params)
        results["trace"] = _trace(matvec, params)
        results["hvp"] = hessjax.hvp(loss, sharded_params, sharded_batch, v)
        # Served from the cache of the call above: the program that actually ran.
        compiled = _statistics.lower(matvec, dataset_matvec, params).compile().as_text()
        block = jax.tree_util.tree_leaves(results["block"])[0]
        report[name] = {
            "differences": {key: _difference(results[key], reference[key]) for key in reference},
            "batch_devices": _devices_of(sharded_batch),
            "batch_spec": str(sharded_batch[0].sharding.spec),
            "stacked_spec": str(sharded_stacked[0].sharding.spec),
            "params_replicated": all(leaf.sharding.is_fully_replicated
                                     for leaf in jax.tree_util.tree_leaves(sharded_params)),
            "all_reduce": "all-reduce" in compiled,
            "block_spec": str(block.sharding.spec),
            "block_devices": len(block.sharding.device_set),
        }
    try:
        sharding.shard_batch(toy.classification_batch(jax.random.key(1), n=12), layouts["data8"])
        report["indivisible_error"] = None
    except ValueError as error:
        report["indivisible_error"] = str(error)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
