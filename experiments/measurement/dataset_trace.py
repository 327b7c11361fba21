"""Stacked batches in the measurement stage: `unstack`, and `trace_cells`, the Hessian trace of a
loss over them as every trace cell but the pretraining summary's is estimated (`hessjax.trace_until`
on `dataset_hvp_fn` at `config.hessian`'s `rtol`, `max_matvecs` and `trace_method`, split across
devices and hosts)."""

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


def unstack(batches: Any) -> list[Any]:
    """Stacked batches as a list of batches (the leading axis split)."""
    count = len(jax.tree_util.tree_leaves(batches)[0])
    return [jax.tree.map(lambda leaf, i=i: leaf[i], batches) for i in range(count)]
