"""Image preprocessing and augmentations of the vision setting, in numpy.

Augmentations draw from `experiments.training.pipeline.augmentation_rng(seed, step)`, so a batch
and its augmentations are a function of `(seed, step)` only.
"""

from __future__ import annotations

import numpy as np

from experiments.vision.tfds_data import ImageDataset


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images (std floored at 1e-6)."""
    mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.maximum(images.std(axis=(0, 1, 2), dtype=np.float64), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(dataset: ImageDataset, mean: np.ndarray, std: np.ndarray) -> ImageDataset:
    """Returns `dataset` with each channel shifted by `mean` and scaled by `1 / std`."""
    images = ((dataset.images - mean) / std).astype(np.float32)
    return ImageDataset(images, dataset.labels, dataset.num_classes)


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
