"""Tests of the inside-outside algorithm: the charts and every quantity computed from them against
brute-force enumeration, long sentences in log space, and the errors on bad batches."""

import math

import numpy as np
import pytest

from experiments.language.grammar import make_grammar
from experiments.language.inside_outside import (
    conditionals,
    inside,
    left_child_scores,
    masked_conditionals,
    outside,
    sentence_log_prob,
    span_posteriors,
)
from tests.experiments.language.brute_force import MAX_ENUMERATED_LENGTH, VOCAB, all_sentences, flat_parses


@pytest.mark.parametrize("length", range(1, MAX_ENUMERATED_LENGTH + 1))
def test_inside_outside_match_brute_force(cyclic_grammar, enumerated, length):
    # Padded past the length, so padding must not leak into the charts.
    tokens, lengths, flat_joint, flat_spans, flat_left = flat_parses(
        cyclic_grammar, enumerated, length
    )
    joint = enumerated[length][0]

    np.testing.assert_allclose(
        sentence_log_prob(cyclic_grammar, tokens, lengths), np.log(flat_joint), rtol=1e-10
    )

    log_inside = inside(cyclic_grammar, tokens, lengths)
    log_outside = outside(cyclic_grammar, log_inside, lengths)
    both = np.exp(log_inside + log_outside)[:, : length + 1, : length + 1]
    np.testing.assert_allclose(both, flat_spans, rtol=1e-9, atol=1e-15)

    posteriors = span_posteriors(cyclic_grammar, tokens, lengths)[
        :, : length + 1, : length + 1
    ]
    np.testing.assert_allclose(posteriors, flat_spans / flat_joint[:, None, None, None], atol=1e-10)

    probs = conditionals(cyclic_grammar, tokens, lengths)
    for sentence, words in enumerate(tokens[:, :length]):
        for i in range(length):
            completions = np.array([joint[(*words[:i], v, *words[i + 1 :])] for v in range(VOCAB)])
            np.testing.assert_allclose(probs[sentence, i], completions / completions.sum())
    np.testing.assert_array_equal(probs[:, length:], 0.0)

    if length > 1:
        scores = left_child_scores(cyclic_grammar, tokens, lengths)
        np.testing.assert_allclose(
            scores / scores.sum(1, keepdims=True), flat_left / flat_left.sum(1, keepdims=True)
        )


def test_conditionals_marginalise_hidden_positions(cyclic_grammar, enumerated):
    joint = enumerated[4][0]
    tokens, lengths = all_sentences(4, 4, cyclic_grammar.pad_id)
    visible = np.ones(tokens.shape, dtype=bool)
    visible[:, 3] = False
    probs = conditionals(cyclic_grammar, tokens, lengths, visible)
    # p(w_1 | w_0, w_2) with w_3 hidden, against summing w_3 out of the brute-force joint.
    marginal = joint.sum(axis=3)
    expected = marginal / marginal.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        probs[:, 1], np.moveaxis(expected, 1, -1)[tokens[:, 0], tokens[:, 2]]
    )


def test_masked_conditionals_pick_each_sentence_position(cyclic_grammar):
    tokens, lengths = all_sentences(3, 4, cyclic_grammar.pad_id)
    positions = np.arange(lengths.size) % 3
    everywhere = conditionals(cyclic_grammar, tokens, lengths)
    masked = tokens.copy()
    masked[np.arange(lengths.size), positions] = cyclic_grammar.mask_id
    np.testing.assert_allclose(
        masked_conditionals(cyclic_grammar, masked, lengths, positions),
        everywhere[np.arange(lengths.size), positions],
    )
    with pytest.raises(ValueError, match="positions: expected"):
        masked_conditionals(cyclic_grammar, tokens, lengths, positions + 1)


def test_log_space_handles_sentences_beyond_float64_range():
    # S -> S S with probability p, S -> w uniformly: p(w) = Catalan(n - 1) p^(n-1) q^n.
    p, vocab, length = 0.4, 1000, 120
    grammar = make_grammar(np.full((1, 1, 1), p), np.full((1, vocab), (1 - p) / vocab))
    tokens = np.arange(length, dtype=np.int32)[None] % vocab
    catalan = math.lgamma(2 * length - 1) - math.lgamma(length) - math.lgamma(length + 1)
    expected = catalan + (length - 1) * math.log(p) + length * math.log((1 - p) / vocab)
    assert expected < math.log(np.finfo(np.float64).tiny)
    log_prob = sentence_log_prob(grammar, tokens, np.array([length]))
    np.testing.assert_allclose(log_prob, [expected], rtol=1e-10)


def test_batches_that_do_not_fit(cyclic_grammar):
    tokens, lengths = np.zeros((2, 5), dtype=np.int32), np.array([3, 5])
    with pytest.raises(ValueError, match="lengths: expected values in"):
        conditionals(cyclic_grammar, tokens, np.array([3, 6]))
    with pytest.raises(ValueError, match="tokens: expected word ids"):
        conditionals(cyclic_grammar, tokens + 7, lengths)
    # Word 1 is never emitted, so no word completes "1 _" in the second sentence.
    impossible = make_grammar(np.full((1, 1, 1), 0.3), np.array([[0.7, 0.0]]))
    with pytest.raises(ValueError, match=r"tokens: .* sentences \[1\] have probability zero"):
        conditionals(impossible, np.array([[0, 0], [1, 0]]), np.array([2, 2]))
