"""What probes read of a sentence: an encoder's per-token features in two views, and the raw input.

Views of a masked-LM encoder (`VIEWS`), each `(model, params, tokens, spans, mask_id) -> (N, dim)`:
  * `"concat"`: every position's features concatenated, `(N, max_len * width)`: the linear probe
    of Liu et al. (2023)'s release, and the primary view;
  * `"mean"`: the features averaged over the task's span, `(N, width)` (`span_features`; also
    what the adversary reads);
  * `"masked"`: what the masked-LM loss trains, read at every position: for each position `i`, the
    model's log-probabilities of every token at `i` with `i` masked, `log P(x_i | the rest)`,
    concatenated, `(N, max_len * vocab)` (`masked_predictions`). The single-position loss reads
    the last layer at the masked position only, so the last layer at an unmasked position (the
    other views) is never trained for itself; the masked position's prediction is. A perfect
    masked-LM's view is the grammar's exact conditionals, which a linear probe reads tasks A and B
    from 10-14 points above the one-hot baseline on the `rooted` grammar (docs/pcfg_results.md).

Inputs without an encoder, the baselines a probe score needs beside it (`one_hot_tokens`,
`bag_of_words`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.training import models

View = Callable[..., jax.Array]  # (model, params, tokens, spans, mask_id) -> (N, dim)


def span_features(
    model: models.EncoderHead,
    params: models.Params,
    tokens: jax.Array,
    spans: jax.Array,
    mask_id: int | None = None,
) -> jax.Array:
    """The encoder's per-token features averaged over each span, `(N, width)`.

    Args:
      model: a `text_transformer` model.
      params: its parameters (only the encoder's are used).
      tokens: `(N, max_len)` token ids.
      spans: `(N, 2)` (start, end) of the span of each sentence.
      mask_id: unused (the signature of every view).

    Returns:
      The mean feature over positions `start .. end - 1` of each sentence.
    """
    del mask_id
    per_token = models.features(model, params, {}, tokens)
    positions = jnp.arange(tokens.shape[1])
    inside = (positions >= spans[:, :1]) & (positions < spans[:, 1:])
    weights = inside / inside.sum(axis=1, keepdims=True)
    return jnp.einsum("nt,ntw->nw", weights, per_token)


def concatenated_features(
    model: models.EncoderHead,
    params: models.Params,
    tokens: jax.Array,
    spans: jax.Array,
    mask_id: int | None = None,
) -> jax.Array:
    """Every position's features, concatenated: `(N, max_len * width)` (`spans`, `mask_id` unused)."""
    del spans, mask_id
    per_token = models.features(model, params, {}, tokens)
    return per_token.reshape(per_token.shape[0], -1)


def masked_predictions(
    model: models.EncoderHead,
    params: models.Params,
    tokens: jax.Array,
    spans: jax.Array,
    mask_id: int | None = None,
) -> jax.Array:
    """`log P(x_i | the rest)` of every token id at every position `i`, with `i` masked.

    Args:
      model: a `text_transformer` masked-LM (its head predicts the token at a masked position).
      params: its parameters.
      tokens: `(N, max_len)` token ids.
      spans: unused (the signature of every view).
      mask_id: the mask token's id (`Grammar.mask_id`).

    Returns:
      `(N, max_len * vocab)`: position `i`'s block is the log-softmax of the model's prediction at
      `i` from the sentence with `i` replaced by the mask, as in pretraining.
    """
    del spans
    if mask_id is None:
        raise ValueError("masked_predictions needs mask_id, the id of the mask token.")
    tokens = jnp.asarray(tokens, jnp.int32)
    count, length = tokens.shape

    def at(position: int) -> jax.Array:
        masked = tokens.at[:, position].set(mask_id)
        where = jnp.full((count, 1), position, jnp.int32)
        logits, _ = models.apply_model(
            model, params, {}, models.TokensAt(masked, where), train=False
        )
        return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)

    return jnp.concatenate([at(position) for position in range(length)], axis=-1)


VIEWS: dict[str, View] = {
    "concat": concatenated_features,
    "mean": span_features,
    "masked": masked_predictions,
}
PRIMARY_VIEW = "concat"


def one_hot_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The raw input: position-wise one-hot token ids, `(N, max_len * vocab_size)` float32."""
    return np.eye(vocab_size, dtype=np.float32)[tokens].reshape(len(tokens), -1)


def bag_of_words(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in each sentence, `(N, vocab_size)` float32 (the padding's
    count is the sentence's length, which the input shows too)."""
    return np.eye(vocab_size, dtype=np.float32)[tokens].sum(axis=1)
