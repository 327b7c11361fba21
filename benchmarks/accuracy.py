"""Accuracy against exact references in float64: top eigenvalue, spectral density, trace estimators.

Exact spectra need the dense Hessian, so the density and estimator-efficiency checks use a small MLP
(64-32-10, 2,410 parameters) briefly trained on digits, whose full float64 Hessian ``jax.hessian``
gives. The 85k-parameter MLP's exact top eigenvalue comes from ``scipy.sparse.linalg.eigsh`` on a
float64 Hessian-vector product instead. Call these functions inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse.linalg
import scipy.stats

import hessjax
from benchmarks.workloads import JaxOps, Workload, digits_mlp

SMALL_MLP_SIZES = (64, 32, 10)
# Matvec budgets (multiples of 6, so that every method spends them exactly), up to n / 2.
EFFICIENCY_GRID = (6, 12, 24, 48, 96, 192, 384, 768, 1200)
EFFICIENCY_METHODS = ("hutchinson", "hutch++", "xtrace")
CONTROL_DIMENSION = 2000


def trained_small_mlp(steps: int = 100, batch_size: int = 1024, seed: int = 0,
                      sizes: tuple[int, ...] = SMALL_MLP_SIZES) -> Workload:
    """The small MLP after ``steps`` full-batch Adam steps (learning rate 1e-2) on its batch."""
    workload = digits_mlp(sizes, batch_size, seed)
    loss_fn, batch = workload.jax_loss(), workload.jax_batch()
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(state, _):
        params, opt_state = state
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    params = workload.jax_params()
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    trained = jax.tree_util.tree_map(np.asarray, params)
    return dataclasses.replace(workload, name=f"{workload.name} trained", params=trained)


def exact_hessian(workload: Workload) -> np.ndarray:
    """The dense float64 Hessian of the workload's loss over its flattened parameters."""
    loss_fn, batch = workload.jax_loss(), workload.jax_batch(jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(workload.jax_params(jnp.float64))
    hessian = jax.jit(jax.hessian(lambda x: loss_fn(unravel(x), batch)))(flat)
    return np.asarray(hessian)


def exact_ggn(workload: Workload, chunk: int = 128) -> np.ndarray:
    """The dense float64 generalized Gauss-Newton matrix of the workload (``hessjax.ggn_fn``).

    Positive semi-definite (cross-entropy is convex in the logits): the operator on which
    estimators that assume it (XNysTrace) may be compared with the others.
    """
    params, batch = workload.jax_params(jnp.float64), workload.jax_batch(jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    forward = workload.forward
    matvec = hessjax.ggn_fn(
        lambda p, b: forward(JaxOps, p, b[0]),
        lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean(),
        params, batch)
    columns = jax.jit(lambda m, basis: jax.lax.map(
        lambda e: jax.flatten_util.ravel_pytree(m(unravel(e)))[0], basis, batch_size=chunk))
    ggn = np.asarray(columns(matvec, jnp.eye(flat.size, dtype=flat.dtype)))
    return (ggn + ggn.T) / 2


def exact_top_eigenvalue(workload: Workload, tol: float = 1e-8) -> float:
    """The largest eigenvalue by ARPACK (``eigsh``) on a float64 forward-over-reverse product."""
    params = workload.jax_params(jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    matvec = hessjax.hvp_fn(workload.jax_loss(), params, workload.jax_batch(jnp.float64))
    flat_matvec = jax.jit(lambda m, x: jax.flatten_util.ravel_pytree(m(unravel(x)))[0])
    operator = scipy.sparse.linalg.LinearOperator(
        (flat.size, flat.size), dtype=np.float64,
        matvec=lambda x: np.asarray(flat_matvec(matvec, jnp.asarray(x.ravel()))))
    return float(scipy.sparse.linalg.eigsh(operator, k=1, which="LA", tol=tol,
                                           return_eigenvectors=False)[0])


def density_errors(eigenvalues: np.ndarray, nodes: np.ndarray, weights: np.ndarray,
                   powers: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, float]:
    """How far a quadrature measure ``(nodes, weights)`` is from the exact eigenvalue measure.

    Returns:
        ``W1``: the Wasserstein-1 distance between the two measures; ``moment{p}``: the relative
        error of the normalized moment :math:`\\frac1n \\operatorname{tr}(H^p)`.
    """
    nodes, weights = np.ravel(nodes), np.ravel(weights)
    errors = {"W1": float(scipy.stats.wasserstein_distance(eigenvalues, nodes, None, weights))}
    for p in powers:
        exact = np.mean(eigenvalues**p)
        errors[f"moment{p}"] = float(abs(np.sum(weights * nodes**p) - exact) / abs(exact))
    return errors


# An estimator as the efficiency sweep sees it: ``(matvec, like, key, num_matvecs) -> estimate``.
Estimator = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, int], jax.Array]


def hessjax_estimator(method: str) -> Estimator:
    """``hessjax.trace`` with ``method`` as an :data:`Estimator`."""
    return lambda matvec, like, key, num_matvecs: hessjax.trace(
        matvec, like, key, num_matvecs=num_matvecs, method=method).value


def relative_rmse(matrix: np.ndarray, estimator: Estimator, num_matvecs: int, num_seeds: int,
                  vmap_seeds: bool = True) -> float:
    """Relative root-mean-square error of ``estimator`` on the dense ``matrix`` over seeds.

    ``vmap_seeds=False`` runs the seeds one compiled call at a time instead of in one ``vmap``:
    XLA:CPU (jaxlib 0.10.2) hangs, every thread idle, running a float64 program that holds a
    batched ``jnp.linalg.inv`` beside a batched QR and matrix products (traceax's XTrace and
    XNysTrace vmapped over 2 or more keys; ``benchmarks/NOTES.md``).
    """
    like = jnp.zeros(matrix.shape[0], matrix.dtype)
    operator, keys = jnp.asarray(matrix), jax.random.split(jax.random.key(0), num_seeds)

    def estimate(operator, key):
        return estimator(lambda v: operator @ v, like, key, num_matvecs)

    if vmap_seeds:
        values = np.asarray(jax.jit(jax.vmap(estimate, (None, 0)))(operator, keys))
    else:
        one = jax.jit(estimate)
        values = np.asarray([one(operator, key) for key in keys])
    exact = float(np.trace(matrix))
    return float(np.sqrt(np.mean((values - exact) ** 2)) / abs(exact))


def decaying_spectrum_matrix(n: int = CONTROL_DIMENSION, power: float = 1.0, seed: int = 0) -> np.ndarray:
    """A dense PSD control operator ``Q diag(i ** -power) Q^T`` with a random orthogonal ``Q``.

    The regime where sketching estimators are meant to pay (Meyer et al. 2021): most of the trace and
    of the Frobenius norm sits in a few directions. Beside the trained MLP's Hessian, whose spectrum
    is too flat for them, it shows whether Hutch++ and XTrace deliver their gain at all.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.arange(1, n + 1, dtype=np.float64) ** -power) @ q.T


def estimator_efficiency(matrix: np.ndarray, target: float = 0.01, num_seeds: int = 50,
                         grid: tuple[int, ...] = EFFICIENCY_GRID,
                         estimators: Mapping[str, Estimator] | None = None,
                         vmap_seeds: bool = True) -> dict[str, dict]:
    """For each estimator, its relative RMSE along ``grid`` and the first budget reaching ``target``.

    The budgets stop at half the dimension: beyond it a sketch of that size can recover the whole
    operator, and the comparison stops being about estimators.

    Args:
        matrix: the dense symmetric operator.
        target: the relative RMSE to reach.
        num_seeds: keys the RMSE is taken over.
        grid: the budgets tried, in increasing order (products; each method rounds down to its
            multiple, and every budget here is a multiple of 6).
        estimators: name -> :data:`Estimator`; default hessjax's methods (``EFFICIENCY_METHODS``).
        vmap_seeds: see :func:`relative_rmse`.

    Returns:
        ``{name: {"rmse": {num_matvecs: error}, "reached": num_matvecs or None}}``.
    """
    if estimators is None:
        estimators = {method: hessjax_estimator(method) for method in EFFICIENCY_METHODS}
    grid = tuple(m for m in grid if 2 * m <= matrix.shape[0])
    results = {}
    for name, estimator in estimators.items():
        rmse, reached = {}, None
        for num_matvecs in grid:
            rmse[num_matvecs] = relative_rmse(matrix, estimator, num_matvecs, num_seeds,
                                              vmap_seeds)
            if rmse[num_matvecs] <= target:
                reached = num_matvecs
                break
        results[name] = {"rmse": rmse, "reached": reached}
    return results
