"""Evaluation-mode functions of a run's model, compiled once per model and reused.

The measurement stage and the transfer stages of every setting evaluate the same few functions
of a model on many checkpoints: the pretraining loss, the logits, the encoder's features, the
predicted classes. On a CPU compiling costs more than running these small models, so each is
built once per model (`shared_function`, or jitted with the model static) and the checkpoint's
arrays are arguments, never constants.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.core import config_utils
from experiments.training import models, objectives, runs

_SHARED_FUNCTIONS: dict[tuple[Any, ...], Any] = {}


def shared_function(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """`build()`, built once per `key` (hashable) and reused by every later call.

    hessjax compiles once per function object (loss, logits): on a CPU compiling costs more than
    measuring these small models, so checkpoints and runs of one model and objective must share
    one function object, keyed by what determines it.
    """
    if key not in _SHARED_FUNCTIONS:
        _SHARED_FUNCTIONS[key] = build()
    return _SHARED_FUNCTIONS[key]


def eval_loss(
    model: models.EncoderHead,
    objective: objectives.Objective,
    objective_key: str,
    model_state: models.ModelState,
) -> objectives.LossFn:
    """`objectives.make_eval_loss`, compiled once per `(model, objective_key)`.

    Args:
      model: the model.
      objective: the loss.
      objective_key: identifies `objective` and its options (e.g. `config.pretrain` as JSON).
      model_state: the model's non-trainable collections (BatchNorm statistics, which differ per
        checkpoint), bound as an argument of a `jax.tree_util.Partial`: hessjax passes its arrays
        to the compiled products, so the next checkpoint reuses them instead of compiling afresh.
    """
    # Jitted, so that evaluating the loss outside hessjax does not compile op by op.
    loss = shared_function(
        ("eval_loss", model, objective_key),
        lambda: jax.jit(
            lambda state, params, batch: objectives.make_eval_loss(model, objective, state)(
                params, batch
            )
        ),
    )
    return jax.tree_util.Partial(loss, model_state)


def eval_logits(
    model: models.EncoderHead, model_state: models.ModelState
) -> Callable[[models.Params, jax.Array], jax.Array]:
    """The evaluation-mode outputs `logits_fn(params, inputs)`, shared like `eval_loss`."""
    logits = shared_function(
        ("eval_logits", model),
        lambda: jax.jit(
            lambda state, params, inputs: models.apply_model(
                model, params, state, inputs, train=False
            )[0]
        ),
    )
    return jax.tree_util.Partial(logits, model_state)


def pretraining_key(run: runs.Run) -> str:
    """Identifies the pretraining objective and its options (for `eval_loss`)."""
    return json.dumps(config_utils.to_plain(run.config.pretrain), sort_keys=True)


@functools.partial(jax.jit, static_argnums=0)
def _features(
    model: models.EncoderHead, params: models.Params, model_state: models.ModelState, images: Any
) -> jax.Array:
    return models.features(model, params, model_state, images)


def encode(
    model: models.EncoderHead,
    params: models.Params,
    model_state: models.ModelState,
    images: np.ndarray,
) -> jax.Array:
    """The frozen encoder's evaluation-mode features of `images`, shape `(N, feature_dim)`."""
    return _features(model, params, model_state, images)


@functools.partial(jax.jit, static_argnums=0)
def predict(
    model: models.EncoderHead, params: models.Params, model_state: models.ModelState, images: Any
) -> jax.Array:
    """The model's evaluation-mode predicted classes (arg-max of the logits) of `images`."""
    logits, _ = models.apply_model(model, params, model_state, images, train=False)
    return jnp.argmax(logits, axis=-1)
