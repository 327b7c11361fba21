"""Tests of the function-preserving embedding of a narrow text transformer into a wider one."""

import jax
import ml_collections
import numpy as np
import pytest

from experiments.language.embedding import enlarge
from experiments.training import models

VOCAB, LENGTH = 12, 6


def _model(width: int, num_heads: int, mlp_ratio: int = 4, depth: int = 2) -> models.EncoderHead:
    config = ml_collections.ConfigDict(
        {
            "family": "text_transformer",
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
        }
    )
    return models.build_model(config, VOCAB, "linear", input_vocab_size=VOCAB)


def _shapes(model: models.EncoderHead):
    return jax.eval_shape(lambda: models.init_model(model, 0, (LENGTH,))[0])


@pytest.fixture(scope="module")
def narrow():
    """A width-8 model with every parameter moved off its initialisation (LayerNorm scales and
    biases included), and its outputs on a few sentences."""
    model = _model(8, 2)
    params, _ = models.init_model(model, 0, (LENGTH,))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: leaf + 0.3 * rng.normal(size=leaf.shape), params)
    tokens = rng.integers(0, VOCAB, (4, LENGTH))
    return params, tokens, np.asarray(model.apply({"params": params}, tokens))


@pytest.mark.parametrize(
    "width, num_heads, mlp_ratio",
    [(16, 2, 4), (16, 4, 8), (32, 4, 8), (24, 6, 4)],  # Longer heads, more heads, both.
)
def test_embedded_model_computes_the_same_outputs(narrow, width, num_heads, mlp_ratio):
    params, tokens, outputs = narrow
    wide = _model(width, num_heads, mlp_ratio)
    embedded = enlarge(params, _shapes(wide))
    assert jax.tree.map(np.shape, embedded) == jax.tree.map(np.shape, _shapes(wide))
    np.testing.assert_allclose(wide.apply({"params": embedded}, tokens), outputs, atol=1e-5)
    # The residual stream is copied: every copy of a feature is the narrow feature.
    features = np.asarray(models.features(wide, embedded, {}, tokens))
    narrow_features = np.asarray(models.features(_model(8, 2), params, {}, tokens))
    ratio = width // 8
    np.testing.assert_allclose(features, np.tile(narrow_features, (1, 1, ratio)), atol=1e-5)


@pytest.mark.parametrize(
    "wide, message",
    [
        (_model(12, 2), r"\(12, 8\) -> \(12, 12\): the width axis 12 is not a multiple of 8"),
        (_model(16, 1), r"\(2, 4\) -> \(1, 16\): the heads axis 1 is not a multiple of 2"),
        (_model(16, 2, depth=3), "TransformerBlock_2"),
    ],
)
def test_incompatible_shapes_name_both(narrow, wide, message):
    params, _, _ = narrow
    with pytest.raises(ValueError, match=message):
        enlarge(params, _shapes(wide))
