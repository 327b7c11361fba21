"""Per-token and span features of a masked-LM encoder, what probes and the adversary read."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.training import models


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
