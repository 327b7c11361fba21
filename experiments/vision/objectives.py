"""The vision setting's pretraining objectives (`OBJECTIVES`, its `Setting.objectives`).

Supervised (cross-entropy, label smoothing, squared error) and self-supervised (SimCLR's
contrastive loss, a denoising autoencoder) losses on `{"images", "labels"}` batches of an
`ImageDataset`; see `experiments.training.objectives` for what an `Objective` is.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.training.objectives import Batch, Objective, ObjectiveFactory
from experiments.vision import images as image_ops

_LARGE_NEGATIVE = -1e9  # Masks self-similarity logits; finite, so no inf reaches derivatives.


def _classes(num_classes: int, input_shape: tuple[int, ...]) -> int:
    del input_shape
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
        "cross_entropy",
        "linear",
        _classes,
        _supervised_batch,
        _smoothed_cross_entropy(0.0),
        categorical=True,
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
        categorical=True,
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
        shifted = image_ops.random_shift(images, rng, fields["augment_max_shift"])
        return image_ops.gaussian_noise(shifted, rng, fields["augment_noise_std"])

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
            "inputs": image_ops.gaussian_noise(images, rng, fields["denoising_noise_std"]),
            "targets": images.reshape(len(images), -1),
        }

    def loss(reconstructions: jax.Array, batch: Batch) -> jax.Array:
        return 0.5 * jnp.mean((reconstructions - batch["targets"]) ** 2)

    return Objective("denoising", "mlp", lambda _, shape: int(np.prod(shape)), prepare_batch, loss)


OBJECTIVES: dict[str, ObjectiveFactory] = {
    "cross_entropy": cross_entropy,
    "label_smoothing": label_smoothing,
    "squared_error": squared_error,
    "contrastive": contrastive,
    "denoising": denoising,
}
