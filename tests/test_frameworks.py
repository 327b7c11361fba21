"""The same calls work for Flax Linen, Flax NNX and plain dicts, with model state held fixed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hessjax
from tests import toy


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(6, param_dtype=jnp.float64)(x)
        # Evaluation mode: running statistics are constants of the loss, not functions of params.
        x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
        x = nn.Dropout(0.5, deterministic=not train)(jnp.tanh(x))
        return nn.Dense(3, param_dtype=jnp.float64)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 6, param_dtype=jnp.float64, rngs=rngs)
        self.norm = nnx.BatchNorm(6, param_dtype=jnp.float64, rngs=rngs)
        self.out = nnx.Linear(6, 3, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


def _check(loss_fn, params, batch):
    """hvp_fn, trace and top_eigenvalues agree with the dense Hessian of the same loss."""
    hessian = toy.exact_hessian(loss_fn, params, batch)
    matvec = hessjax.hvp_fn(loss_fn, params, batch)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = unravel(jax.random.normal(jax.random.key(9), flat.shape, flat.dtype))
    np.testing.assert_allclose(toy.ravel(matvec(v)), hessian @ toy.ravel(v), rtol=1e-9, atol=1e-12)
    estimate = hessjax.trace(matvec, params, jax.random.key(0), num_matvecs=flat.size * 2,
                             method="xtrace", chunk_size=flat.size)
    np.testing.assert_allclose(float(estimate.value), np.trace(hessian), rtol=1e-8)
    eigen = hessjax.top_eigenvalues(matvec, params, jax.random.key(1), k=1, num_steps=min(flat.size, 30))
    np.testing.assert_allclose(float(eigen.values[0]), np.linalg.eigvalsh(hessian)[-1], rtol=1e-8)


def test_flax_linen_with_batch_statistics(x64):
    model = LinenNet()
    x, y = toy.classification_batch(jax.random.key(0), n=12)
    variables = model.init(jax.random.key(1), x)
    # One training-mode pass so the running statistics are not the trivial initial ones.
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(2)})
    stats = updates["batch_stats"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params, "batch_stats": stats}, batch[0])
        return toy.cross_entropy(logits, batch[1])

    _check(loss_fn, variables["params"], (x, y))


def test_flax_nnx_through_split_and_merge(x64):
    model = NnxNet(nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, batch):
        return toy.cross_entropy(nnx.merge(graphdef, params, rest)(batch[0]), batch[1])

    _check(loss_fn, params, toy.classification_batch(jax.random.key(3), n=12))


def test_plain_dict_of_arrays(x64):
    _check(toy.mlp_loss, toy.mlp_params(jax.random.key(0), sizes=(5, 4, 3)),
           toy.classification_batch(jax.random.key(4), n=12))
