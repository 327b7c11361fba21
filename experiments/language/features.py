"""What probes read of a sentence: an encoder's per-token features in two views, and the raw input.

Views of a masked-LM encoder (`VIEWS`), each `(model, params, tokens, spans) -> (N, dim)`:
  * `"concat"`: every position's features concatenated, `(N, max_len * width)`: the linear probe
    of Liu et al. (2023)'s release, and the primary view;
  * `"mean"`: the features averaged over the task's span, `(N, width)` (`span_features`; also
    what the adversary reads).

Inputs without an encoder, the baselines a probe score needs beside it (`one_hot_tokens`,
`bag_of_words`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.training import models

View = Callable[[models.EncoderHead, models.Params, jax.Array, jax.Array], jax.Array]


def span_features(
    model: models.EncoderHead, params: models.Params, tokens: jax.Array, spans: jax.Array
) -> jax.Array:
    """The encoder's per-token features averaged over each span, `(N, width)`.

    Args:
      model: a `text_transformer` model.
      params: its parameters (only the encoder's are used).
      tokens: `(N, max_len)` token ids.
      spans: `(N, 2)` (start, end) of the span of each sentence.

    Returns:
      The mean feature over positions `start .. end - 1` of each sentence.
    """
    per_token = models.features(model, params, {}, tokens)
    positions = jnp.arange(tokens.shape[1])
    inside = (positions >= spans[:, :1]) & (positions < spans[:, 1:])
    weights = inside / inside.sum(axis=1, keepdims=True)
    return jnp.einsum("nt,ntw->nw", weights, per_token)


def concatenated_features(
    model: models.EncoderHead, params: models.Params, tokens: jax.Array, spans: jax.Array
) -> jax.Array:
    """Every position's features, concatenated: `(N, max_len * width)` (`spans` is unused)."""
    del spans
    per_token = models.features(model, params, {}, tokens)
    return per_token.reshape(per_token.shape[0], -1)


VIEWS: dict[str, View] = {"concat": concatenated_features, "mean": span_features}
PRIMARY_VIEW = "concat"


def one_hot_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The raw input: position-wise one-hot token ids, `(N, max_len * vocab_size)` float32."""
    return np.eye(vocab_size, dtype=np.float32)[tokens].reshape(len(tokens), -1)


def bag_of_words(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in each sentence, `(N, vocab_size)` float32 (the padding's
    count is the sentence's length, which the input shows too)."""
    return np.eye(vocab_size, dtype=np.float32)[tokens].sum(axis=1)
