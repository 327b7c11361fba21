r"""The language setting's training algorithms: the single-position masked-LM loss.

Masking scheme (the one the exact optimum assumes, see `experiments.language.loss_gap`): in every
sentence exactly one position, uniform over the sentence, is replaced by the mask token, and the
loss is the cross-entropy of the original word there. The prepared batch's `"inputs"` are
`models.TokensAt(masked tokens, masked position)`, so the model computes its last block at the
masked position only (the loss reads nothing else). The model (`text_transformer`) predicts
over all `V + 2` ids; ids past the words (padding, mask) count as wrong predictions in the gap.

`OBJECTIVES` (the study's `objective` axis) are `"adamw"`, the plain masked-LM loss (trained with
the configured optimizer, AdamW in `configs/pcfg.py`), and `"adversarial"`, the same loss to which
the setting's step extras add the adversary's penalty (`experiments.language.adversary`).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax

from experiments.language import adversary
from experiments.training import models
from experiments.training.objectives import Batch, Objective, ObjectiveFactory


def _mask_one_position(batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tokens, lengths = batch["tokens"], batch["lengths"]
    rows = np.arange(len(lengths))
    positions = rng.integers(0, lengths).astype(np.int32)  # Uniform over each sentence.
    inputs = tokens.copy()
    inputs[rows, positions] = batch["mask_id"]
    return {
        "inputs": models.TokensAt(inputs, positions[:, None]),
        "targets": tokens[rows, positions],
    }


def _masked_lm_loss(logits: jax.Array, batch: Batch) -> jax.Array:
    # `logits` is `(batch, 1, V')`: the model's outputs at the masked positions (`TokensAt`).
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, 0], batch["targets"]).mean()


def _vocabulary(num_classes: int, input_shape: tuple[int, ...]) -> int:
    del input_shape
    return num_classes


def _masked_lm_objective(name: str) -> Objective:
    return Objective(
        name, "linear", _vocabulary, _mask_one_position, _masked_lm_loss, categorical=True
    )


def masked_lm(options: ml_collections.ConfigDict) -> Objective:
    """The single-position masked-LM loss (see the module docstring), registered as `"adamw"`."""
    del options
    return _masked_lm_objective("adamw")


def adversarial(options: ml_collections.ConfigDict) -> Objective:
    """The masked-LM loss; the setting's step extras add the `Adversary`'s penalty."""
    adversary.read_settings(options)  # Fails early on a bad knob.
    return _masked_lm_objective("adversarial")


OBJECTIVES: dict[str, ObjectiveFactory] = {
    "adamw": masked_lm,
    "adversarial": adversarial,
}
