"""Every estimator gives the same answer under ``jax.jit`` as when called eagerly."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy

MATRIX = toy.matrix_with_spectrum(np.linspace(-1.0, 3.0, 12), seed=7).astype(np.float32)
LIKE = {"a": jnp.zeros(4), "b": jnp.zeros((2, 4))}


def _matvec(v):
    flat, unravel = jax.flatten_util.ravel_pytree(v)
    return unravel(jnp.asarray(MATRIX) @ flat)


CALLS = {
    "lanczos": lambda key: hessjax.lanczos(_matvec, LIKE, key, num_steps=6),
    "top_eigenvalues": lambda key: hessjax.top_eigenvalues(_matvec, LIKE, key, k=2, num_steps=8),
    "spectral_density": lambda key: hessjax.spectral_density(_matvec, LIKE, key, num_probes=3,
                                                             num_steps=5),
    "diagonal": lambda key: hessjax.diagonal(_matvec, LIKE, key, num_matvecs=7, chunk_size=3),
    "block_traces": lambda key: hessjax.block_traces(_matvec, LIKE, key, num_matvecs=7),
    "fisher_trace": lambda key: hessjax.fisher_trace(
        toy.mlp_logits, toy.mlp_params(jax.random.key(0), dtype=jnp.float32),
        toy.classification_batch(jax.random.key(1), dtype=jnp.float32)[0], key, num_samples=5,
        chunk_size=2),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_jit_matches_eager(name):
    key = jax.random.key(3)
    eager = CALLS[name](key)
    jitted = jax.jit(CALLS[name])(key)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
