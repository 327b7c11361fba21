"""One call for the curvature statistics of a loss over a dataset."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hessjax.products import dataset_hvp_fn
from hessjax.spectrum import spectral_density, top_eigenvalues
from hessjax.trace import block_traces, trace_until


def hessian_summary(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batches: Any,
                    key: jax.Array, *, rtol: float = 0.05, max_matvecs: int = 200,
                    method: str = "hutchinson", top_k: int = 3, lanczos_steps: int = 20,
                    block_matvecs: int = 20, density_probes: int = 4, density_steps: int = 30,
                    chunk_size: int | None = None) -> dict[str, Any]:
    """Trace, top eigenvalues, per-block traces and spectral density of the dataset Hessian.

    The Hessian is that of the size-weighted mean loss over ``batches`` (see ``dataset_hvp_fn``). The
    same ``key`` gives the same probes for every ``params``: pass one key for all the checkpoints you
    compare (common random numbers). Call it outside ``jit``: it measures wall time.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (evaluation mode: fixed normalization
            statistics, no dropout).
        params: pytree of floating arrays.
        batches: stacked batches (leading batch-index axis) or a list of batches.
        key: a ``jax.random`` key.
        rtol: target relative standard error of the trace (``trace_until``).
        max_matvecs: the most products the trace may spend.
        method: trace estimator, ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        top_k: how many top eigenvalues (0 to skip).
        lanczos_steps: Lanczos steps for the top eigenvalues.
        block_matvecs: probes for the per-block traces (0 to skip).
        density_probes: probes for the spectral density (0 to skip).
        density_steps: Lanczos steps per density probe.
        chunk_size: products per compiled kernel (the memory knob).

    Returns:
        A dict with ``trace``, ``trace_stderr`` (floats), ``top_eigenvalues`` (numpy array, descending),
        ``block_traces`` (a pytree of ``TraceEstimate`` like ``params``, or None), ``density``
        (``SpectralDensity`` or None), ``num_matvecs`` (all products spent) and ``seconds``.
    """
    start = time.perf_counter()
    matvec = dataset_hvp_fn(loss_fn, params, batches)
    trace_key, eigen_key, density_key = jax.random.split(key, 3)
    estimate = trace_until(matvec, params, trace_key, rtol=rtol, max_matvecs=max_matvecs,
                           method=method, chunk_size=chunk_size)
    spent = int(estimate.num_matvecs)
    eigenvalues = np.zeros((0,))
    if top_k:
        eigen = top_eigenvalues(matvec, params, eigen_key, k=top_k, num_steps=lanczos_steps)
        eigenvalues = np.asarray(eigen.values)
        spent += lanczos_steps + top_k
    blocks = None
    if block_matvecs:
        blocks = block_traces(matvec, params, trace_key, num_matvecs=block_matvecs,
                              chunk_size=chunk_size)
        spent += block_matvecs
    density = None
    if density_probes:
        density = spectral_density(matvec, params, density_key, num_probes=density_probes,
                                   num_steps=density_steps)
        spent += density_probes * density_steps
    jax.block_until_ready((blocks, density))
    return {
        "trace": float(estimate.value),
        "trace_stderr": float(estimate.stderr),
        "top_eigenvalues": eigenvalues,
        "block_traces": blocks,
        "density": density,
        "num_matvecs": spent,
        "seconds": time.perf_counter() - start,
    }
