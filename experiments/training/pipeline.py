"""Step-addressed data order: every random choice of a batch is a function of (seed, step).

Training batches are addressed by step, not drawn from a stateful iterator: the batch of step `t`
is a slice of the permutation of epoch `t // steps_per_epoch`, and that permutation comes from
`(seed, epoch)`. Augmentations draw from a generator seeded by `(seed, step)`. A run resumed at
step `t` therefore sees exactly the batches an uninterrupted run sees from step `t` on.
"""

from __future__ import annotations

import numpy as np

# Independent random streams derived from the same seed.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def _generator(seed: int, index: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got {seed}.")
    return np.random.default_rng([seed, index, stream])


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


def augmentation_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for the augmentations of step `step`, independent of the data order."""
    return _generator(seed, step, _AUGMENT_STREAM)
