"""Pretraining objectives: the losses whose Hessians the experiments measure.

An `Objective` has three parts:
  * `prepare_batch(batch, rng)`: numpy, outside `jit`: turns a `{"images", "labels"}` batch into
    what the loss needs, always with an `"inputs"` entry that the model is applied to (e.g. two
    augmented views for contrastive learning, noisy images for denoising, or the masked-LM's
    `models.TokensAt`: entries may be pytrees of arrays, each with the examples on axis 0);
  * the head it needs: `head` (`"linear"` or `"mlp"`) and `output_size(num_classes, image_shape)`;
  * `loss(outputs, batch)`: a scalar from the model's outputs on `batch["inputs"]`.

A new objective is one function `options -> Objective` added to `OBJECTIVES`; `options` is
`config.pretrain`, from which it reads its own knobs through `config_utils.read_fields`.

`make_eval_loss` gives the pure `loss_fn(params, batch) -> scalar` of the Hessian stage: the
model in evaluation mode, BatchNorm statistics fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import config_utils, models
from experiments.config_utils import Field
from experiments.data import pipeline
from experiments.data.tfds_data import ImageDataset

Batch = Mapping[str, np.ndarray]
LossFn = Callable[[models.Params, Batch], jax.Array]


class BatchSource(Protocol):
    """A dataset that cuts its own training batches (e.g. `language.SentenceDataset`)."""

    @property
    def num_examples(self) -> int: ...

    def batch_at(self, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
        """The raw batch of step `step`, a function of `(seed, step)` only."""


_LARGE_NEGATIVE = -1e9  # Masks self-similarity logits; finite, so no inf reaches derivatives.


@dataclasses.dataclass(frozen=True)
class Objective:
    """A pretraining objective.

    Attributes:
      name: the registry name.
      head: the head the model needs, `"linear"` or `"mlp"` (see `models.build_model`).
      output_size: `(num_classes, image_shape) -> int`, the head's output size.
      prepare_batch: `(batch, rng) -> batch`, numpy; adds `"inputs"` and the loss's targets.
      loss: `(outputs, prepared_batch) -> scalar`, traceable by `jit`, `grad` and `jvp`.
    """

    name: str
    head: str
    output_size: Callable[[int, tuple[int, ...]], int]
    prepare_batch: Callable[[Batch, np.random.Generator], dict[str, np.ndarray]]
    loss: Callable[[jax.Array, Batch], jax.Array]


def _classes(num_classes: int, image_shape: tuple[int, ...]) -> int:
    del image_shape
    return num_classes


def _supervised_batch(batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng  # Supervised objectives train on the clean images.
    return {"inputs": batch["images"], "labels": batch["labels"]}


def _smoothed_cross_entropy(smoothing: float) -> Callable[[jax.Array, Batch], jax.Array]:
    def loss(logits: jax.Array, batch: Batch) -> jax.Array:
        targets = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=logits.dtype)
        targets = optax.smooth_labels(targets, smoothing) if smoothing else targets
        return optax.softmax_cross_entropy(logits, targets).mean()

    return loss


def cross_entropy(options: ml_collections.ConfigDict) -> Objective:
    """Supervised softmax cross-entropy, the standard pretraining loss."""
    del options
    return Objective(
        "cross_entropy", "linear", _classes, _supervised_batch, _smoothed_cross_entropy(0.0)
    )


def label_smoothing(options: ml_collections.ConfigDict) -> Objective:
    """Cross-entropy against targets smoothed by `config.pretrain.label_smoothing` (default 0.1).

    References:
      Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """
    fields = config_utils.read_fields(
        options, {"label_smoothing": Field(float, 0.1)}, "config.pretrain"
    )
    if not 0 <= fields["label_smoothing"] < 1:
        raise config_utils.ConfigError(
            f"config.pretrain.label_smoothing must be in [0, 1); got {fields['label_smoothing']}."
        )
    return Objective(
        "label_smoothing",
        "linear",
        _classes,
        _supervised_batch,
        _smoothed_cross_entropy(fields["label_smoothing"]),
    )


def squared_error(options: ml_collections.ConfigDict) -> Objective:
    r"""Squared error between the outputs and one-hot targets.

    .. math:: \ell = \tfrac{1}{2B} \sum_{b=1}^{B} \lVert f(x_b) - e_{y_b} \rVert^2,

    whose Hessian with respect to the outputs is the identity.
    """
    del options

    def loss(outputs: jax.Array, batch: Batch) -> jax.Array:
        targets = jax.nn.one_hot(batch["labels"], outputs.shape[-1], dtype=outputs.dtype)
        return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1).mean()

    return Objective("squared_error", "linear", _classes, _supervised_batch, loss)


def contrastive(options: ml_collections.ConfigDict) -> Objective:
    r"""SimCLR's NT-Xent loss over two augmented views of each image; the head is a projection.

    Each view is the image shifted by up to `augment_max_shift` pixels (default 1) plus gaussian
    noise of standard deviation `augment_noise_std` (default 0.1); `inputs` stacks the first views
    of the batch, then the second views. With `z` the L2-normalized projections, the loss is the
    cross-entropy of finding each view's partner among the other `2B - 1` views, with logits
    `z_i . z_j / temperature` (default 0.5). The projection head has `projection_dim` outputs
    (default 32).

    References:
      Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      ICML 2020.
    """
    fields = config_utils.read_fields(
        options,
        {
            "temperature": Field(float, 0.5),
            "projection_dim": Field(int, 32),
            "augment_max_shift": Field(int, 1),
            "augment_noise_std": Field(float, 0.1),
        },
        "config.pretrain",
    )
    if fields["temperature"] <= 0 or fields["projection_dim"] < 1:
        raise config_utils.ConfigError(
            "config.pretrain.temperature and config.pretrain.projection_dim must be positive; got "
            f"{fields['temperature']} and {fields['projection_dim']}."
        )

    def view(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        shifted = pipeline.random_shift(images, rng, fields["augment_max_shift"])
        return pipeline.gaussian_noise(shifted, rng, fields["augment_noise_std"])

    def prepare_batch(batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
        images = batch["images"]
        return {"inputs": np.concatenate([view(images, rng), view(images, rng)])}

    def loss(projections: jax.Array, batch: Batch) -> jax.Array:
        del batch  # The pairing is positional: view i and view i + B.
        num_views = projections.shape[0]
        z = projections / jnp.linalg.norm(projections, axis=-1, keepdims=True).clip(1e-12)
        logits = z @ z.T / fields["temperature"]
        logits = jnp.where(jnp.eye(num_views, dtype=bool), _LARGE_NEGATIVE, logits)
        partners = (jnp.arange(num_views) + num_views // 2) % num_views
        return optax.softmax_cross_entropy_with_integer_labels(logits, partners).mean()

    return Objective("contrastive", "mlp", lambda *_: fields["projection_dim"], prepare_batch, loss)


def denoising(options: ml_collections.ConfigDict) -> Objective:
    r"""Denoising autoencoder: an MLP decoder head reconstructs clean images from noisy ones.

    Inputs are the images plus gaussian noise of standard deviation `denoising_noise_std`
    (default 0.5, in standardized pixel units); the loss is half the mean squared error per pixel,
    :math:`\tfrac{1}{2BD} \sum_b \lVert g(x_b + \epsilon_b) - x_b \rVert^2` with `D` pixels.

    References:
      Vincent et al., "Extracting and Composing Robust Features with Denoising Autoencoders",
      ICML 2008.
    """
    fields = config_utils.read_fields(
        options, {"denoising_noise_std": Field(float, 0.5)}, "config.pretrain"
    )

    def prepare_batch(batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
        images = batch["images"]
        return {
            "inputs": pipeline.gaussian_noise(images, rng, fields["denoising_noise_std"]),
            "targets": images.reshape(len(images), -1),
        }

    def loss(reconstructions: jax.Array, batch: Batch) -> jax.Array:
        return 0.5 * jnp.mean((reconstructions - batch["targets"]) ** 2)

    return Objective("denoising", "mlp", lambda _, shape: int(np.prod(shape)), prepare_batch, loss)


OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict], Objective]] = {
    "cross_entropy": cross_entropy,
    "label_smoothing": label_smoothing,
    "squared_error": squared_error,
    "contrastive": contrastive,
    "denoising": denoising,
}


def get_objective(
    pretrain_config: ml_collections.ConfigDict,
    registry: Mapping[str, Callable[[ml_collections.ConfigDict], Objective]] = OBJECTIVES,
) -> Objective:
    """The objective named by `config.pretrain.objective`, with its knobs from `config.pretrain`.

    Args:
      pretrain_config: `config.pretrain`.
      registry: the objectives that the data admits: `OBJECTIVES` for images,
        `language.OBJECTIVES` for token sequences.

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
    image_shape: tuple[int, ...],
    *,
    input_vocab_size: int = 0,
) -> models.EncoderHead:
    """Builds the model of `config.model` with the head that `objective` needs.

    `input_vocab_size` is the number of token ids of token data (0 for images); see
    `models.build_model`.
    """
    return models.build_model(
        model_config,
        objective.output_size(num_classes, image_shape),
        objective.head,
        input_vocab_size=input_vocab_size,
    )


def training_batch(
    objective: Objective,
    dataset: ImageDataset | BatchSource,
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
    if isinstance(dataset, ImageDataset):
        batch = pipeline.batch_at(dataset, batch_size, seed, step)
    else:
        batch = dataset.batch_at(batch_size, seed, step)
    return objective.prepare_batch(batch, pipeline.augmentation_rng(seed, step))


def stacked_batches(
    objective: Objective,
    dataset: ImageDataset | BatchSource,
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
      model: the model (e.g. from `train.load_run`).
      objective: the pretraining objective.
      model_state: the model's non-trainable collections, held fixed.

    Returns:
      `loss_fn(params, batch)`, where `batch` is a prepared batch (`training_batch`).
    """

    def loss_fn(params: models.Params, batch: Batch) -> jax.Array:
        outputs, _ = models.apply_model(model, params, model_state, batch["inputs"], train=False)
        return objective.loss(outputs, batch)

    return loss_fn
