"""Rematerialized and mixed-precision losses give the curvature of the plain loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from hessjax import memory
from tests import toy


def _bytes(tree) -> int:
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree))


def _problem(dtype):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 16, 3), dtype=dtype)
    batch = toy.classification_batch(jax.random.key(1), n=64, dtype=dtype)
    v = jax.tree_util.tree_map(lambda x: jnp.sin(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape),
                               params)
    return params, batch, v


@pytest.mark.parametrize("policy", ["nothing_saveable",
                                    jax.checkpoint_policies.dots_with_no_batch_dims_saveable])
def test_remat_gives_the_same_hessian_vector_products(x64, policy):
    params, batch, v = _problem(jnp.float64)
    product = hessjax.hvp_fn(memory.remat(toy.mlp_loss, policy), params, batch)(v)
    np.testing.assert_allclose(toy.ravel(product),
                               toy.ravel(hessjax.hvp(toy.mlp_loss, params, batch, v)), atol=1e-6)


def test_remat_keeps_fewer_residuals_in_the_linearized_operator(x64):
    params, batch, _ = _problem(jnp.float64)
    plain = hessjax.hvp_fn(toy.mlp_loss, params, batch)
    rematerialized = hessjax.hvp_fn(memory.remat(toy.mlp_loss), params, batch)
    assert _bytes(rematerialized) < _bytes(plain) / 2


def test_wrappers_are_cached_so_compiled_products_are_reused():
    assert memory.remat(toy.mlp_loss) is memory.remat(toy.mlp_loss, "nothing_saveable")
    assert memory.mixed_precision(toy.mlp_loss) is memory.mixed_precision(toy.mlp_loss,
                                                                          jnp.bfloat16)


def test_mixed_precision_is_close_to_float32_and_returns_float32():
    params, batch, v = _problem(jnp.float32)
    loss = memory.mixed_precision(toy.mlp_loss)
    assert loss(params, batch).dtype == jnp.float32
    product = hessjax.hvp_fn(loss, params, batch)(v)
    # Vectors, and so every estimator's accumulation, stay float32.
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(product)} == {jnp.dtype(jnp.float32)}
    expected = toy.ravel(hessjax.hvp(toy.mlp_loss, params, batch, v))
    error = np.linalg.norm(toy.ravel(product) - expected) / np.linalg.norm(expected)
    assert error < 5e-2, error


def test_mixed_precision_casts_floating_leaves_only():
    seen = {}

    def loss(params, batch):
        seen.update(params=params.dtype, inputs=batch[0].dtype, labels=batch[1].dtype)
        return jnp.sum(params) * jnp.sum(batch[0])

    memory.mixed_precision(loss)(jnp.ones(2), (jnp.ones(3), jnp.arange(3)))
    assert seen == {"params": jnp.bfloat16, "inputs": jnp.bfloat16, "labels": jnp.int32}


def test_wrapper_errors_name_the_argument():
    with pytest.raises(ValueError, match="`policy` must be one of"):
        memory.remat(toy.mlp_loss, "save_everything")
    with pytest.raises(TypeError, match="`compute_dtype` must be a floating dtype"):
        memory.mixed_precision(toy.mlp_loss, jnp.int8)
    with pytest.raises(TypeError, match="`compute_dtype` must be a floating dtype"):
        memory.mixed_precision(toy.mlp_loss, "not a dtype")
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        memory.remat("loss")


def _scaled_square(scale, params, batch):
    return scale * jnp.sum(jnp.tanh(params * batch) ** 2)


@pytest.mark.parametrize("wrap", [lambda f: hessjax.memory.remat(f),
                                  lambda f: hessjax.memory.mixed_precision(f, jnp.bfloat16)])
def test_wrappers_keep_a_partial_loss_arrays_as_arguments(wrap):
    import importlib

    products = importlib.import_module("hessjax.products")
    params, batch, v = jnp.linspace(0.1, 1.0, 5), jnp.linspace(1.0, 2.0, 5), jnp.ones(5)
    reference = hessjax.hvp(lambda p, b: _scaled_square(1.0, p, b), params, batch, v)
    sizes = []
    for scale in (1.0, 2.0, 4.0):
        wrapped = wrap(jax.tree_util.Partial(_scaled_square, jnp.asarray(scale)))
        assert isinstance(wrapped, jax.tree_util.Partial)
        np.testing.assert_allclose(hessjax.hvp(wrapped, params, batch, v), scale * reference,
                                   rtol=2e-2)
        sizes.append(products._hvp._cache_size())
    assert sizes[0] == sizes[1] == sizes[2], sizes
