"""Pretraining objectives: the losses whose Hessians the experiments measure.

An `Objective` has three parts:
  * `prepare_batch(batch, rng)`: numpy, outside `jit`: turns a raw batch of a `BatchSource` into
    what the loss needs, always with an `"inputs"` entry that the model is applied to (e.g. two
    augmented views for contrastive learning, noisy images for denoising, or the masked-LM's
    `models.TokensAt`: entries may be pytrees of arrays, each with the examples on axis 0);
  * the head it needs: `head` (`"linear"` or `"mlp"`) and `output_size(num_classes, input_shape)`;
  * `loss(outputs, batch)`: a scalar from the model's outputs on `batch["inputs"]`.

Each setting registers its own objectives (`Setting.objectives`: the vision setting's in
`experiments.vision.objectives`, the language setting's training algorithms in
`experiments.language.objectives`); a new objective is one function `options -> Objective` in that
registry, `options` being `config.pretrain`, from which it reads its own knobs through
`config_utils.read_fields`.

`make_eval_loss` gives the pure `loss_fn(params, batch) -> scalar` of the Hessian stage: the
model in evaluation mode, BatchNorm statistics fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.training import models, pipeline

Batch = Mapping[str, np.ndarray]
LossFn = Callable[[models.Params, Batch], jax.Array]


class BatchSource(Protocol):
    """A dataset that cuts its own training batches (`ImageDataset`, `SentenceDataset`)."""

    @property
    def num_examples(self) -> int: ...

    def batch_at(self, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
        """The raw batch of step `step`, a function of `(seed, step)` only."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """A pretraining objective.

    Attributes:
      name: the registry name.
      head: the head the model needs, `"linear"` or `"mlp"` (see `models.build_model`).
      output_size: `(num_classes, input_shape) -> int`, the head's output size.
      prepare_batch: `(batch, rng) -> batch`, numpy; adds `"inputs"` and the loss's targets.
      loss: `(outputs, prepared_batch) -> scalar`, traceable by `jit`, `grad` and `jvp`.
      categorical: the model's outputs are the logits of a categorical distribution over the
        labels (so the Fisher-sampling trace applies).
    """

    name: str
    head: str
    output_size: Callable[[int, tuple[int, ...]], int]
    prepare_batch: Callable[[Batch, np.random.Generator], dict[str, np.ndarray]]
    loss: Callable[[jax.Array, Batch], jax.Array]
    categorical: bool = False


ObjectiveFactory = Callable[[ml_collections.ConfigDict], Objective]


def get_objective(
    pretrain_config: ml_collections.ConfigDict, registry: Mapping[str, ObjectiveFactory]
) -> Objective:
    """The objective named by `config.pretrain.objective`, with its knobs from `config.pretrain`.

    Args:
      pretrain_config: `config.pretrain`.
      registry: the objectives of the setting (`Setting.objectives`).

    Returns:
      The `Objective`.

    Raises:
      ConfigError: an unknown objective (the message lists the valid ones) or a knob of the wrong
        type or value.
    """
    fields = config_utils.read_fields(pretrain_config, {"objective": Field(str)}, "config.pretrain")
    factory = config_utils.choose(fields["objective"], registry, "config.pretrain.objective")
    return factory(pretrain_config)


def build_model_for(
    objective: Objective,
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    input_vocab_size: int = 0,
) -> models.EncoderHead:
    """Builds the model of `config.model` with the head that `objective` needs.

    `input_vocab_size` is the number of token ids of token data (0 for images); see
    `models.build_model`.
    """
    return models.build_model(
        model_config,
        objective.output_size(num_classes, input_shape),
        objective.head,
        input_vocab_size=input_vocab_size,
    )


def training_batch(
    objective: Objective,
    dataset: BatchSource,
    batch_size: int,
    seed: int,
    step: int,
) -> dict[str, np.ndarray]:
    """The prepared batch of training step `step`: a function of `(dataset, seed, step)` only.

    Args:
      objective: the objective that prepares the batch.
      dataset: the training examples.
      batch_size: examples per batch.
      seed: the run's seed (data order and augmentations).
      step: the 0-based training step.

    Returns:
      The dict (of numpy arrays, or pytrees of them) that `objective.loss` takes.
    """
    batch = dataset.batch_at(batch_size, seed, step)
    return objective.prepare_batch(batch, pipeline.augmentation_rng(seed, step))


def stacked_batches(
    objective: Objective,
    dataset: BatchSource,
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """`num_batches` prepared batches stacked on a leading axis (e.g. for `dataset_hvp_fn`).

    The batches are the training batches of steps `0 .. num_batches - 1` for `seed`: one pass
    over the data without repeats while `num_batches * batch_size <= dataset.num_examples`.

    Args:
      objective: the objective that prepares the batches.
      dataset: the examples.
      batch_size: examples per batch.
      num_batches: how many batches.
      seed: the data-order and augmentation seed.

    Returns:
      The batches' pytree (a dict) with arrays of shape `(num_batches, ...)`.
    """
    batches = [
        training_batch(objective, dataset, batch_size, seed, step) for step in range(num_batches)
    ]
    return jax.tree.map(lambda *leaves: np.stack(leaves), *batches)


def make_eval_loss(
    model: nn.Module, objective: Objective, model_state: models.ModelState
) -> LossFn:
    """The pretraining loss as a pure function of the parameters, in evaluation mode.

    BatchNorm uses the fixed running statistics in `model_state` and no model uses dropout, so
    the result is a deterministic `loss_fn(params, batch) -> scalar` for `hessjax.hvp` and friends.

    Args:
      model: the model (e.g. from `runs.load_run`).
      objective: the pretraining objective.
      model_state: the model's non-trainable collections, held fixed.

    Returns:
      `loss_fn(params, batch)`, where `batch` is a prepared batch (`training_batch`).
    """

    def loss_fn(params: models.Params, batch: Batch) -> jax.Array:
        outputs, _ = models.apply_model(model, params, model_state, batch["inputs"], train=False)
        return objective.loss(outputs, batch)

    return loss_fn


@functools.lru_cache(maxsize=32)
def compiled_eval_loss(
    model: nn.Module, objective: Objective
) -> Callable[[models.Params, models.ModelState, Batch], jax.Array]:
    """`make_eval_loss` as one jitted `loss(params, model_state, batch)`, shared by equal models
    and objectives, so the seeds of one configuration compile it once."""
    return jax.jit(lambda params, model_state, batch: make_eval_loss(model, objective, model_state)(
        params, batch))
