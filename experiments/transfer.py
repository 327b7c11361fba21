"""What the Hessian and fine-tuning stages share: checkpoints of a run, features, linear heads.

Both stages read the checkpoints of one pretraining workdir (`open_run`, `restore_checkpoint`),
compute the frozen encoder's features of target images (`encode`) and fit a multinomial logistic
regression head on them (`fit_linear_head`): the fine-tuning stage scores it (the linear probe),
the Hessian stage differentiates the downstream loss of the encoder with that head.

On a CPU, compiling costs more than running these small models, so the helpers here are built to
compile once per model and input shape (`shared_function`, jitted functions with the model static).
"""

from __future__ import annotations

import functools
import json
import logging as logging_lib
import pathlib
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.typing import ArrayLike
from ml_collections import config_flags
from scipy import optimize, special

from experiments import config_utils, models, multihost, objectives, train
from experiments.data import tfds_data

# The loss of a categorical classifier, whatever the pretraining objective was.
DOWNSTREAM_OBJECTIVE = "cross_entropy"


class _ReadOnlyNoticeFilter(logging_lib.Filter):
    """Drops Orbax's warnings that checkpoints are opened read-only: the stages only read them,
    once per job, and the warnings would bury the progress lines."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        message = record.getMessage().replace("_", " ")
        return not ("/orbax/" in record.pathname and "read only" in message)


_READ_ONLY_NOTICE_FILTER = _ReadOnlyNoticeFilter()


class StudyIncompleteError(RuntimeError):
    """Some jobs of a study failed; its results and report cover the others."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the model of the run's config."""


class NoCheckpointsError(FileNotFoundError):
    """A pretraining workdir without any complete checkpoint."""


def open_run(
    workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None
) -> tuple[train.Run, list[int]]:
    """The pretraining run in `workdir` and its checkpoint steps, for a stage that measures them.

    Args:
      workdir: a `train.pretrain` workdir.
      config: the config the caller believes the run has; its pretraining sections must equal the
        saved ones. `None`: the saved config.

    Returns:
      `(run, steps)`: the run rebuilt from its saved config, and its checkpoint steps ascending.

    Raises:
      FileNotFoundError: `workdir` holds no pretraining run.
      NoCheckpointsError: the run has no checkpoint yet.
      ConfigError: `config` differs from the run's config in a pretraining field (all listed).
    """
    logging.get_absl_handler().addFilter(_READ_ONLY_NOTICE_FILTER)  # Adding it again: no-op.
    saved = train.load_config(workdir)
    if config is not None:
        sections = lambda plain: {k: plain.get(k) for k in train.PRETRAINING_SECTIONS}
        changed = config_utils.differences(
            sections(config_utils.to_plain(saved)), sections(config_utils.to_plain(config))
        )
        if changed:
            raise config_utils.ConfigError(
                f"{workdir} holds a run of a different config; it differs in:\n  "
                + "\n  ".join(changed)
            )
    steps = train.checkpoint_steps(workdir)
    if not steps:
        raise NoCheckpointsError(
            f"{workdir} holds no checkpoint: pretrain it first (`python -m experiments.pretrain "
            f"--workdir={workdir} ...`)."
        )
    return train.build_run(saved), steps


def restore_checkpoint(
    workdir: str | pathlib.Path, step: int, run: train.Run
) -> tuple[models.Params, models.ModelState]:
    """`train.restore_params`, with a clear error when the checkpoint is of another model.

    Raises:
      CheckpointMismatchError: the stored parameter shapes differ from those of `run.model`.
      FileNotFoundError: no checkpoint at `step`.
    """
    try:
        return train.restore_params(workdir, step, run)
    except (ValueError, TypeError, KeyError) as error:
        expected = jax.tree_util.tree_map(lambda leaf: leaf.shape, jax.eval_shape(run.init)[0])
        raise CheckpointMismatchError(
            f"The checkpoint at step {step} in {workdir} does not fit the model of its config "
            f"(config.model = {config_utils.to_plain(run.config.model)}; expected parameter "
            f"shapes {expected}): {type(error).__name__}: {str(error)[:500]}"
        ) from error


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


def pretraining_key(run: train.Run) -> str:
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


class LinearHead(NamedTuple):
    """A linear classifier on features.

    Attributes:
      kernel: `(feature_dim, num_classes)` weights.
      bias: `(num_classes,)` offsets.
    """

    kernel: np.ndarray
    bias: np.ndarray

    def accuracy(self, features: ArrayLike, labels: np.ndarray) -> float:
        """The fraction of `labels` predicted by the arg-max of the logits."""
        predictions = np.argmax(np.asarray(features) @ self.kernel + self.bias, axis=-1)
        return float(np.mean(predictions == labels))


def fit_linear_head(
    features: ArrayLike, labels: np.ndarray, num_classes: int, *, l2: float, steps: int
) -> LinearHead:
    r"""Multinomial logistic regression on frozen features, by full-batch L-BFGS.

    Minimizes :math:`\frac1N \sum_i \ell_{CE}(W^\top f_i + b, y_i) + \frac{\lambda}{2} \|W\|^2`,
    strictly convex for :math:`\lambda > 0`, with SciPy's L-BFGS-B in float64 from zero: exact
    gradients of a problem this small cost microseconds in numpy, while compiling an XLA solver
    would cost seconds per feature shape. Deterministic.

    Args:
      features: `(N, feature_dim)`.
      labels: `(N,)` integer labels in `[0, num_classes)`.
      num_classes: the number of classes.
      l2: the ridge penalty :math:`\lambda` on the weights, > 0.
      steps: the most L-BFGS iterations (it stops earlier once the gradient vanishes).

    Returns:
      The fitted `LinearHead` (float32).
    """
    features = np.asarray(features, np.float64)
    count, dimension = features.shape
    targets = np.eye(num_classes)[labels]

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, bias = flat[:-num_classes].reshape(dimension, num_classes), flat[-num_classes:]
        logits = features @ kernel + bias
        log_probabilities = logits - special.logsumexp(logits, axis=-1, keepdims=True)
        value = -np.sum(targets * log_probabilities) / count + 0.5 * l2 * np.sum(kernel**2)
        residual = (np.exp(log_probabilities) - targets) / count
        gradient = np.concatenate(
            [(features.T @ residual + l2 * kernel).ravel(), residual.sum(axis=0)]
        )
        return value, gradient

    start = np.zeros((dimension + 1) * num_classes)
    solution = optimize.minimize(
        objective, start, jac=True, method="L-BFGS-B", options={"maxiter": steps}
    ).x
    return LinearHead(
        solution[:-num_classes].reshape(dimension, num_classes).astype(np.float32),
        solution[-num_classes:].astype(np.float32),
    )


def downstream_model(run: train.Run, num_classes: int) -> models.EncoderHead:
    """The run's encoder under a new linear classification head of `num_classes` outputs."""
    return models.build_model(run.config.model, num_classes, "linear")


def with_head(params: models.Params, head: LinearHead) -> models.Params:
    """`params["encoder"]` under the linear `head`, laid out like `downstream_model`'s params."""
    head = {name: jnp.asarray(value) for name, value in head._asdict().items()}
    return {"encoder": params["encoder"], "head": {"Dense_0": head}}


def downstream_objective() -> objectives.Objective:
    """The loss of a classifier on a target task: softmax cross-entropy."""
    return objectives.get_objective(ml_collections.ConfigDict({"objective": DOWNSTREAM_OBJECTIVE}))


@functools.partial(jax.jit, static_argnums=0)
def predict(
    model: models.EncoderHead, params: models.Params, model_state: models.ModelState, images: Any
) -> jax.Array:
    """The model's evaluation-mode predicted classes (arg-max of the logits) of `images`."""
    logits, _ = models.apply_model(model, params, model_state, images, train=False)
    return jnp.argmax(logits, axis=-1)


# Errors caused by the user's input, which the binaries report as one message.
USER_ERRORS = (
    config_utils.ConfigError,
    FileNotFoundError,  # No run in the workdir, no checkpoint, a dataset not prepared.
    CheckpointMismatchError,
    StudyIncompleteError,
    tfds_data.UnknownDatasetError,
    train.WorkdirConfigMismatchError,
)


def run_binary(
    stage: Callable[[str, ml_collections.ConfigDict | None], Any],
    default_config: str | None = None,
) -> None:
    """The absl main of a stage binary: `--workdir`, `--config` (+ overrides), one call.

    The flags are defined here, not at import, so that the stage modules can be imported together.
    Multi-host JAX starts first when the environment asks for it (`multihost.initialize`).

    Args:
      stage: `stage(workdir, config)`, e.g. `hessian.measure_run`.
      default_config: the config file used without `--config`; `None`: the stage's own default.
    """
    config = config_flags.DEFINE_config_file(
        "config",
        default_config,
        "Config file (overrides: --config.SECTION.FIELD=VALUE).",
        lock_config=True,
    )
    workdir = flags.DEFINE_string("workdir", None, "The working directory.", required=True)

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        multihost.initialize()
        try:
            stage(workdir.value, config.value)
        except USER_ERRORS as error:
            sys.exit(f"{type(error).__name__}: {error}")

    app.run(main)
