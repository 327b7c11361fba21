"""One process of a two-process hessjax run on localhost; started twice by tests/test_multihost.py.

The environment gives the ``HESSJAX_*`` variables read by ``initialize_distributed`` and the number
of local CPU devices (``XLA_FLAGS``). Each process loads only its share of the batch, builds the
global batch with ``global_batch`` and estimates the trace of the Hessian of the mean loss; the
coordination and the all-reduce over the four devices of both processes are JAX's. Prints one JSON
object.
"""

from __future__ import annotations

import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hessjax import sharding  # noqa: E402

NUM_EXAMPLES = 32
TRACE_KEY = 7


def main() -> None:
    # Before anything runs on a device: multi-host JAX must be set up first.
    started = sharding.initialize_distributed()
    jax.config.update("jax_enable_x64", True)

    import hessjax
    from tests import toy

    mesh = sharding.make_mesh()
    params = sharding.replicate(toy.mlp_params(jax.random.key(0)), mesh)
    batch = toy.classification_batch(jax.random.key(1), n=NUM_EXAMPLES)
    share = NUM_EXAMPLES // jax.process_count()
    start = jax.process_index() * share
    local = jax.tree_util.tree_map(lambda x: x[start:start + share], batch)
    global_batch = sharding.global_batch(local, mesh)
    estimate = hessjax.trace(hessjax.hvp_fn(toy.mlp_loss, params, global_batch), params,
                             jax.random.key(TRACE_KEY), num_matvecs=16, chunk_size=8)
    print(json.dumps({
        "started": started,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "global_batch_shape": list(global_batch[0].shape),
        "value": float(estimate.value),
        "stderr": float(estimate.stderr),
    }), flush=True)


if __name__ == "__main__":
    main()
