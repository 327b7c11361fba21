"""One call for the curvature statistics of a loss over a dataset."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from hessjax import _checks
from hessjax._common import Method, check_key, check_method, loss_of, split_key
from hessjax.products import dataset_hvp_fn
from hessjax.spectrum import Eigen, SpectralDensity, spectral_density, top_eigenvalues
from hessjax.trace import TraceEstimate, block_traces, trace_and_blocks_until, trace_until


class HessianSummary(NamedTuple):
    """The curvature statistics of a dataset's loss, and what each cost.

    Attributes:
        loss: the mean loss over the dataset at the parameters (finite: a non-finite loss is an
            error).
        trace: the trace of the Hessian, a :class:`~hessjax.TraceEstimate` from
            :func:`~hessjax.trace_until` (use ``trace.interval()`` for a confidence interval).
        top_eigenvalues: an :class:`~hessjax.Eigen` with the ``top_k`` largest eigenpairs, or None
            when skipped (``top_k=0``).
        block_traces: a pytree like ``params`` of :class:`~hessjax.TraceEstimate` (one per leaf),
            or None when skipped (``block_matvecs=0``).
        density: a :class:`~hessjax.SpectralDensity`, or None when skipped (``density_probes=0``).
        matvecs_trace: Hessian-vector products spent on ``trace``.
        matvecs_eigen: products spent on ``top_eigenvalues`` (``lanczos_steps + top_k``, or 0).
        matvecs_blocks: products spent on ``block_traces`` beyond the trace's: 0 with
            ``method="hutchinson"`` (the block traces are then those of the trace's own probes, at
            least ``block_matvecs`` of them), else ``block_matvecs``.
        matvecs_density: products spent on ``density`` (``density_probes * density_steps``).
        num_matvecs: all products spent, the sum of the four.
        seconds: wall time of the whole call, results ready.
    """

    loss: jax.Array
    trace: TraceEstimate
    top_eigenvalues: Eigen | None
    block_traces: Any
    density: SpectralDensity | None
    matvecs_trace: int
    matvecs_eigen: int
    matvecs_blocks: int
    matvecs_density: int
    num_matvecs: int
    seconds: float


def hessian_summary(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batches: Any,
                    key: jax.Array, *, rtol: float = 0.05, max_matvecs: int = 200,
                    method: Method = "hutchinson", top_k: int = 3, lanczos_steps: int = 20,
                    block_matvecs: int = 20, density_probes: int = 4, density_steps: int = 30,
                    chunk_size: int | None = None) -> HessianSummary:
    r"""Trace, top eigenvalues, per-block traces and spectral density of the dataset Hessian.

    The Hessian is that of the size-weighted mean loss over ``batches``,
    :math:`H = \sum_b \frac{n_b}{\sum_{b'} n_{b'}} \nabla^2_\theta L(\theta, b)`
    (see :func:`~hessjax.dataset_hvp_fn`, which holds every batch in memory). The same ``key`` gives
    the same probes for every ``params``: pass one key for all the checkpoints you compare (common
    random numbers). The trace and the block traces share their probes. Call it outside ``jit``: it
    measures wall time and checks the loss and the products on the host.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (evaluation mode: fixed normalization
            statistics, no dropout).
        params: pytree of floating arrays.
        batches: stacked batches (leading batch-index axis) or a list of batches.
        key: a ``jax.random`` key.
        rtol: target relative standard error of the trace (:func:`~hessjax.trace_until`).
        max_matvecs: the most products the trace may spend.
        method: trace estimator, ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        top_k: how many top eigenvalues (0 to skip).
        lanczos_steps: Lanczos steps for the top eigenvalues.
        block_matvecs: probes for the per-block traces (0 to skip). With Hutchinson (and
            ``block_matvecs <= max_matvecs``) they are the trace's probes, so the trace spends at
            least this many and the blocks cost no product of their own.
        density_probes: probes for the spectral density (0 to skip).
        density_steps: Lanczos steps per density probe.
        chunk_size: products per compiled kernel (the memory knob).

    Returns:
        A :class:`HessianSummary`.

    Raises:
        ValueError, TypeError: bad arguments, naming the argument. :class:`hessjax.NonFiniteError`:
            the mean loss is NaN or infinite, or the Hessian-vector products are.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: 0.5 * jnp.mean(x) * jnp.sum(p ** 2)  # H = mean(x) * I
        >>> batches = jnp.full((2, 4), 3.0)  # two batches of four examples
        >>> summary = hessjax.hessian_summary(loss, jnp.ones(5), batches, jax.random.key(0), top_k=1,
        ...                                   lanczos_steps=2, block_matvecs=0, density_probes=0)
        >>> round(float(summary.trace.value), 4), round(float(summary.top_eigenvalues.values[0]), 4)
        (15.0, 3.0)
        >>> summary.num_matvecs == summary.matvecs_trace + summary.matvecs_eigen
        True

    References:
        Ghorbani, Krishnan & Xiao, "An investigation into neural net optimization via Hessian
        eigenvalue density", ICML 2019. Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural networks
        through the lens of the Hessian", IEEE BigData 2020.
    """
    start = time.perf_counter()
    check_key(key)
    check_method(method)
    top_k = _checks.check_int(top_k, "top_k", minimum=0)
    block_matvecs = _checks.check_int(block_matvecs, "block_matvecs", minimum=0)
    if block_matvecs == 1:
        raise ValueError("`block_matvecs` must be 0 (skip) or >= 2 for an error bar; got 1.")
    density_probes = _checks.check_int(density_probes, "density_probes", minimum=0)
    max_matvecs = _checks.check_int(max_matvecs, "max_matvecs", minimum=2)
    matvec = dataset_hvp_fn(loss_fn, params, batches)
    loss = loss_of(matvec)
    _checks.check_finite_loss(loss, "`params` (the mean of `loss_fn` over `batches`)")
    trace_key, eigen_key, density_key = split_key(key, 3)
    eigen = blocks = density = None
    blocks_spent = 0
    if method == "hutchinson" and 0 < block_matvecs <= max_matvecs:
        # One set of products for both: at least `block_matvecs` probes.
        estimate, blocks = trace_and_blocks_until(
            matvec, params, trace_key, rtol=rtol, max_matvecs=max_matvecs,
            min_block_matvecs=block_matvecs, chunk_size=chunk_size)
    else:
        estimate = trace_until(matvec, params, trace_key, rtol=rtol, max_matvecs=max_matvecs,
                               method=method, chunk_size=chunk_size)
        if block_matvecs:
            blocks = block_traces(matvec, params, trace_key, num_matvecs=block_matvecs,
                                  chunk_size=chunk_size)
            blocks_spent = block_matvecs
    if top_k:
        eigen = top_eigenvalues(matvec, params, eigen_key, k=top_k, num_steps=lanczos_steps)
    if density_probes:
        density = spectral_density(matvec, params, density_key, num_probes=density_probes,
                                   num_steps=density_steps)
    jax.block_until_ready((estimate, eigen, blocks, density))
    spent = [int(estimate.num_matvecs), int(eigen.num_matvecs) if eigen else 0,
             blocks_spent, int(density.num_matvecs) if density else 0]
    return HessianSummary(loss, estimate, eigen, blocks, density, *spent, sum(spent),
                          time.perf_counter() - start)
