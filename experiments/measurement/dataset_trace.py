"""The Hessian trace of a loss over stacked batches, as every trace cell of the measurement stage
other than the pretraining summary's is estimated: `hessjax.trace_until` on `dataset_hvp_fn`, at
`config.hessian`'s `rtol`, `max_matvecs` and `trace_method`, split across devices and hosts."""

from __future__ import annotations

from typing import Any

import jax

import hessjax
from experiments.core import multihost
from experiments.training import objectives


def trace_cells(
    name: str,
    loss_fn: objectives.LossFn,
    params: Any,
    batches: Any,
    key: jax.Array,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """`{name, name_stderr, matvecs_<suffix>}` of the trace of `loss_fn` over `batches`.

    Args:
      name: the cell, e.g. `"trace_downstream"`; the products go to `"matvecs_downstream"`.
      loss_fn: `loss_fn(params, batch) -> scalar`.
      params: the parameters it is differentiated in (replicated).
      batches: the batches, stacked on a leading axis.
      key: the probes' key.
      settings: the measurement settings (`rtol`, `max_matvecs`, `trace_method`).
    """
    estimate = hessjax.trace_until(
        hessjax.dataset_hvp_fn(loss_fn, params, multihost.shard_examples(batches, batch_axis=1)),
        params,
        key,
        rtol=settings["rtol"],
        max_matvecs=settings["max_matvecs"],
        method=settings["trace_method"],
    )
    return {
        name: float(estimate.value),
        f"{name}_stderr": float(estimate.stderr),
        f"matvecs_{name.removeprefix('trace_')}": int(estimate.num_matvecs),
    }
