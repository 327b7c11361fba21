"""Tests of the exact masked-LM optimum and a model's gap to it."""

import math

import numpy as np
import pytest

from experiments.language.grammar import GrammarSpec, random_grammar, sample_sentences
from experiments.language.inside_outside import conditionals
from experiments.language.loss_gap import masked_lm_gap, optimal_masked_lm_loss


def test_optimal_loss_and_gap():
    grammar = random_grammar(GrammarSpec(vocab_size=30, num_levels=2))
    sample = sample_sentences(grammar, 20, seed=1, max_len=8)
    truth = conditionals(grammar, sample.tokens, sample.lengths)
    optimum = optimal_masked_lm_loss(truth, sample.lengths)
    assert 0 < optimum.value < math.log(30) and optimum.stderr > 0
    np.testing.assert_allclose(truth[sample.tokens < 30].sum(-1), 1.0)

    with np.errstate(divide="ignore"):
        perfect = np.log(truth)
    assert masked_lm_gap(truth, perfect, sample.lengths).value == pytest.approx(0.0, abs=1e-12)
    # A model over V + 2 ids (words, padding, mask): its KL gap is its cross-entropy minus optimum.
    uniform = np.full(truth.shape[:2] + (grammar.model_vocab_size,), -math.log(32))
    gap = masked_lm_gap(truth, uniform, sample.lengths)
    cross_entropy = np.mean([math.log(32)] * 20)
    assert gap.value == pytest.approx(cross_entropy - optimum.value)


def test_gap_rejects_model_log_probs_of_the_wrong_shape(cyclic_grammar):
    tokens, lengths = np.zeros((2, 5), dtype=np.int32), np.array([3, 5])
    truth = conditionals(cyclic_grammar, tokens, lengths)
    with pytest.raises(ValueError, match="model_log_probs: expected shape"):
        masked_lm_gap(truth, np.zeros((2, 5, 1)), lengths)
