"""The exact masked-LM loss gap of a model: every evaluation position masked in turn.

The grammar's true conditionals give the Bayes-optimal masked-LM loss exactly
(`experiments.language.loss_gap`); `masked_lm_gap` compares a model's predictions with them, on the
held-out evaluation split or, with `on="seen"`, on the first sentences the run trained on. The
pretraining loop logs both at every checkpoint (`LanguageSetting.checkpoint_metrics`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.language import data, loss_gap
from experiments.training import models

# Sentences per forward pass when every position of the evaluation split is masked in turn.
_GAP_CHUNK = 250


@functools.partial(jax.jit, static_argnums=0)
def every_position_masked(
    model: models.EncoderHead, params: models.Params, tokens: jax.Array, mask_id: jax.Array
) -> jax.Array:
    """The model's log-probabilities at every position when that position alone is masked.

    Args:
      model: the masked-LM model.
      params: its parameters.
      tokens: `(B, T)` token ids.
      mask_id: the mask token's id.

    Returns:
      `(B, T, V')`: row `[b, i]` is the prediction at position `i` of sentence `b` with `i`
      masked (padding positions included; callers ignore them).
    """

    def at(position: jax.Array) -> jax.Array:
        masked = tokens.at[:, position].set(mask_id)
        where = jnp.full((tokens.shape[0], 1), position)
        logits, _ = models.apply_model(model, params, {}, models.TokensAt(masked, where), train=False)
        return jax.nn.log_softmax(logits[:, 0])

    return jnp.moveaxis(jax.lax.map(at, jnp.arange(tokens.shape[1])), 0, 1)


def masked_lm_gap(
    model: models.EncoderHead,
    params: models.Params,
    task: data.LanguageTask,
    *,
    seen: tuple[int, int] | None = None,
) -> loss_gap.LossEstimate:
    """The masked-LM loss gap to the Bayes optimum, exactly, on held-out or training sentences.

    Every position of every sentence is masked in turn, and the model's prediction is compared
    with the grammar's true conditional (`loss_gap.masked_lm_gap`, a KL divergence): no sampling
    of masks or of words, so the only noise is the choice of sentences.

    Args:
      model: the masked-LM model of the run.
      params: its parameters.
      task: the language task (its splits and grammar).
      seen: None for the `evaluation` split; `(seed, batch_size)` of the run for the first
        training sentences it saw (`LanguageTask.seen_sentences`): a gap below the held-out one
        there means the model memorised its training sentences.

    Returns:
      The gap in nats and its standard error over sentences.
    """
    if seen is None:
        sentences, truth = task.test, task.true_conditionals
    else:
        sentences, truth = task.seen_sentences(*seen), task.seen_conditionals(*seen)
    tokens, mask_id = sentences.tokens, jnp.int32(sentences.mask_id)
    log_probs = np.concatenate(
        [
            np.asarray(every_position_masked(model, params, tokens[i : i + _GAP_CHUNK], mask_id))
            for i in range(0, len(tokens), _GAP_CHUNK)
        ]
    )
    return loss_gap.masked_lm_gap(truth, log_probs, sentences.lengths)
