"""Small models and matrices with exactly known curvature, shared by the library tests."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np


def mlp_params(key: jax.Array, sizes=(5, 6, 3), dtype=jnp.float64) -> dict:
    """A tanh MLP's parameters (smooth, so its Hessian is well defined everywhere)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"layer{i}": {"w": jax.random.normal(k, (m, n), dtype) / np.sqrt(m),
                          "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (n,), dtype)}
            for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def mlp_logits(params: dict, x: jax.Array) -> jax.Array:
    layers = [params[name] for name in sorted(params)]
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def mlp_loss(params: dict, batch: tuple) -> jax.Array:
    x, y = batch
    return cross_entropy(mlp_logits(params, x), y)


def classification_batch(key: jax.Array, n: int = 16, dim: int = 5, classes: int = 3,
                         dtype=jnp.float64) -> tuple:
    x = jax.random.normal(key, (n, dim), dtype)
    y = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, classes)
    return x, y


def cnn_params(key: jax.Array, dtype=jnp.float64) -> dict:
    k1, k2 = jax.random.split(key)
    return {"conv": jax.random.normal(k1, (3, 3, 1, 2), dtype) / 3.0,
            "dense": jax.random.normal(k2, (2 * 4 * 4, 3), dtype) / 6.0}


def cnn_loss(params: dict, batch: tuple) -> jax.Array:
    images, labels = batch
    h = jax.lax.conv_general_dilated(images, params["conv"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h).reshape(images.shape[0], -1)
    return cross_entropy(h @ params["dense"], labels)


def image_batch(key: jax.Array, n: int = 8, dtype=jnp.float64) -> tuple:
    images = jax.random.normal(key, (n, 4, 4, 1), dtype)
    labels = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 3)
    return images, labels


def exact_hessian(loss_fn, params, batch) -> np.ndarray:
    """The dense Hessian in the coordinates of ``ravel_pytree`` (float64 when x64 is on)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat))


def ravel(tree) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def matrix_with_spectrum(eigenvalues, seed: int = 0) -> np.ndarray:
    """A dense symmetric matrix with the given eigenvalues and random eigenvectors."""
    eigenvalues = np.asarray(eigenvalues, np.float64)
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return (basis * eigenvalues) @ basis.T


def _matmul(matrix: jax.Array, v: jax.Array) -> jax.Array:
    return matrix @ v


def matvec_of(matrix) -> jax.tree_util.Partial:
    """``v -> matrix @ v`` as a pytree: matrices of one shape share every compiled estimator."""
    return jax.tree_util.Partial(_matmul, jnp.asarray(matrix))
