"""A numpy input pipeline whose every random choice is a function of (seed, step).

Training batches are addressed by step, not drawn from a stateful iterator: the batch of step `t`
is a slice of the permutation of epoch `t // steps_per_epoch`, and that permutation comes from
`(seed, epoch)`. Augmentations draw from a generator seeded by `(seed, step)`. A run resumed at
step `t` therefore sees exactly the batches an uninterrupted run sees from step `t` on.
"""

from __future__ import annotations

import numpy as np

from experiments.data.tfds_data import ImageDataset

# Independent random streams derived from the same seed.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def _generator(seed: int, index: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got {seed}.")
    return np.random.default_rng([seed, index, stream])


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images (std floored at 1e-6)."""
    mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.maximum(images.std(axis=(0, 1, 2), dtype=np.float64), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(dataset: ImageDataset, mean: np.ndarray, std: np.ndarray) -> ImageDataset:
    """Returns `dataset` with each channel shifted by `mean` and scaled by `1 / std`."""
    images = ((dataset.images - mean) / std).astype(np.float32)
    return ImageDataset(images, dataset.labels, dataset.num_classes)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches per epoch (the last partial batch of each epoch is dropped)."""
    if not 0 < batch_size <= num_examples:
        raise ValueError(
            f"`batch_size` must be in [1, num_examples={num_examples}]; got {batch_size}."
        )
    return num_examples // batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the examples; a function of `(seed, epoch)`."""
    return _generator(seed, epoch, _ORDER_STREAM).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the examples in the training batch of step `step`.

    Args:
      num_examples: size of the dataset.
      batch_size: examples per batch.
      seed: the data-order seed.
      step: the 0-based training step.

    Returns:
      An int array of `batch_size` distinct indices.
    """
    epoch, position = divmod(step, steps_per_epoch(num_examples, batch_size))
    order = epoch_permutation(num_examples, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


def batch_at(dataset: ImageDataset, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
    """The training batch of step `step`: a dict with `images` (NHWC float32) and `labels`."""
    indices = batch_indices(dataset.num_examples, batch_size, seed, step)
    return {"images": dataset.images[indices], "labels": dataset.labels[indices]}


def augmentation_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for the augmentations of step `step`, independent of the data order."""
    return _generator(seed, step, _AUGMENT_STREAM)


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shifts each image by up to `max_shift` pixels in each direction (a padded random crop).

    Borders are filled by repeating the edge pixels, which for centred objects on a plain
    background (digits, MNIST) is background, whatever the normalization.

    Args:
      images: NHWC array.
      rng: source of the shifts.
      max_shift: largest shift in pixels; 0 returns the images unchanged.

    Returns:
      An array shaped like `images`.
    """
    if max_shift < 0:
        raise ValueError(f"`max_shift` must be >= 0; got {max_shift}.")
    if max_shift == 0:
        return images
    count, height, width, _ = images.shape
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = np.pad(images, pad, mode="edge")
    top, left = rng.integers(0, 2 * max_shift + 1, size=(2, count))
    rows = top[:, None, None] + np.arange(height)[None, :, None]
    cols = left[:, None, None] + np.arange(width)[None, None, :]
    return padded[np.arange(count)[:, None, None], rows, cols]


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Adds independent `N(0, std^2)` noise to every pixel; returns float32."""
    if std < 0:
        raise ValueError(f"`std` must be >= 0; got {std}.")
    return (images + std * rng.standard_normal(images.shape, dtype=np.float32)).astype(np.float32)
