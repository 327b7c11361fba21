"""Model size at the same function: the trace after embedding a model into a wider architecture.

The Hessian trace of two models of different widths compares two parametrisations as much as two
functions. Liu et al. (2023) therefore embed the smaller model into the largest architecture of the
comparison without changing its function (duplicated hidden units; for the language setting
`experiments.language.embedding.enlarge`) and compare traces there. With
`config.hessian.embed_width = W`, the measurement stage does the same for every checkpoint: it
builds the run's model at width `W`, embeds the parameters (`Setting.embed`), checks that the
embedded model's loss on the measured subset equals the original's, and estimates the trace of the
embedded model's pretraining loss on the same subset (`trace_embedded`, `trace_embedded_stderr`,
`pretrain_loss_subset_embedded`). A run already of width `W` is embedded into itself (the identity),
so every row of a size comparison has the statistic.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.core import config_utils, multihost
from experiments.measurement.dataset_trace import trace_cells, unstack
from experiments.training import evaluation, models, objectives, runs

# The embedded loss may differ from the original by float32 rounding only.
_LOSS_TOLERANCE = 1e-4


def check_embed_width(config: ml_collections.ConfigDict, embed_width: int) -> None:
    """Checks `config.hessian.embed_width` against the widths the study trains.

    Raises:
      ConfigError: naming the field, when it is negative or a trained width does not divide it.
    """
    if embed_width < 0:
        raise config_utils.ConfigError(
            f"config.hessian.embed_width must be >= 0 (0: off); got {embed_width}."
        )
    if not embed_width:
        return
    widths = set(config.sweep.widths) if "sweep" in config and "widths" in config.sweep else set()
    widths.add(config.model.width)
    bad = sorted(w for w in widths if w > embed_width or embed_width % w)
    if bad:
        raise config_utils.ConfigError(
            f"config.hessian.embed_width={embed_width}: every trained width must divide it (a "
            f"function-preserving embedding duplicates units a whole number of times); widths "
            f"{bad} do not."
        )


def _wide_model(run: runs.Run, width: int) -> models.EncoderHead:
    model_config = ml_collections.ConfigDict(config_utils.to_plain(run.config.model))
    model_config.width = width
    return objectives.build_model_for(
        run.objective,
        model_config,
        run.task.num_classes,
        run.task.input_shape,
        input_vocab_size=run.task.input_vocab_size,
    )


def embedded_trace(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    batches: Any,
    key: jax.Array,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The cells of the module docstring for one checkpoint.

    Raises:
      ConfigError: the setting has no function-preserving embedding (`Setting.embed` is None), or
        the model has non-trainable state (BatchNorm statistics), which the embedding cannot carry.
      RuntimeError: the embedded model's loss differs from the original's (a broken embedding).
    """
    width = settings["embed_width"]
    wide_model = _wide_model(run, width)
    like, wide_state = jax.eval_shape(
        lambda: models.init_model(wide_model, run.seed, run.task.input_shape)
    )
    if jax.tree_util.tree_leaves(model_state) or jax.tree_util.tree_leaves(wide_state):
        raise config_utils.ConfigError(
            "config.hessian.embed_width: the model has non-trainable state (e.g. BatchNorm "
            "statistics), which a function-preserving embedding does not carry."
        )
    wide_params = run.setting.embed(params, like)
    if wide_params is None:
        raise config_utils.ConfigError(
            f"config.hessian.embed_width: the {run.setting.name} setting has no "
            "function-preserving embedding into a wider model; set it to 0."
        )
    wide_params = multihost.replicate(jax.tree.map(np.asarray, wide_params))
    objective_key = evaluation.pretraining_key(run)
    loss_fn = evaluation.eval_loss(run.model, run.objective, objective_key, model_state)
    wide_loss_fn = evaluation.eval_loss(wide_model, run.objective, objective_key, {})
    first = unstack(batches)
    loss = float(np.mean([loss_fn(params, b) for b in first]))
    wide_loss = float(np.mean([wide_loss_fn(wide_params, b) for b in first]))
    if not abs(wide_loss - loss) <= _LOSS_TOLERANCE * max(1.0, abs(loss)):
        raise RuntimeError(f"the width-{width} embedding changed the loss: {loss} -> {wide_loss}")
    cells = trace_cells("trace_embedded", wide_loss_fn, wide_params, batches, key, settings)
    return {**cells, "pretrain_loss_subset_embedded": wide_loss}
