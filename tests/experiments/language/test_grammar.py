"""Tests of the grammar: validation, the random layered grammar, the length distribution and the
sampler."""

import dataclasses

import numpy as np
import pytest

from experiments.language.grammar import (
    GrammarSpec,
    length_distribution,
    make_grammar,
    perturbed_grammar,
    random_grammar,
    sample_sentences,
)
from experiments.language.inside_outside import sentence_log_prob
from tests.experiments.language.brute_force import MAX_ENUMERATED_LENGTH, all_sentences


@pytest.mark.parametrize("length", range(1, MAX_ENUMERATED_LENGTH + 1))
def test_length_distribution_matches_brute_force(cyclic_grammar, enumerated, length):
    joint = enumerated[length][0]
    assert length_distribution(cyclic_grammar, length)[length] == pytest.approx(joint.sum())


def test_random_grammar_is_valid_and_seeded():
    spec = GrammarSpec(seed=3, vocab_size=30, num_levels=2, nonterminals_per_level=4)
    grammar = random_grammar(spec)
    assert grammar.binary.shape == (spec.num_nonterminals,) * 3
    assert grammar.emit.shape == (spec.num_nonterminals, 30)
    np.testing.assert_allclose(grammar.binary.sum((1, 2)) + grammar.emit.sum(1), 1.0)
    lengths = length_distribution(grammar, 2 * spec.max_sentence_length)
    assert lengths[: spec.max_sentence_length + 1].sum() == pytest.approx(1.0)
    assert lengths[1] == 0 and lengths[spec.max_sentence_length] > 0
    again = random_grammar(spec)
    np.testing.assert_array_equal(grammar.binary, again.binary)
    other = random_grammar(dataclasses.replace(spec, seed=4))
    assert not np.array_equal(grammar.emit, other.emit)


def test_sampler_is_seeded_and_trees_are_derivations():
    grammar = random_grammar(GrammarSpec(vocab_size=30, num_levels=2))
    sample = sample_sentences(grammar, 50, seed=7, min_len=3, max_len=8)
    again = sample_sentences(grammar, 50, seed=7, min_len=3, max_len=8)
    for mine, theirs in zip(sample, again, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert not np.array_equal(
        sample.tokens, sample_sentences(grammar, 50, seed=8).tokens[:, :8]
    )
    assert sample.lengths.min() >= 3 and sample.lengths.max() <= 8
    for tokens, length, tree in zip(*sample, strict=True):
        assert np.all(tokens[length:] == grammar.pad_id)
        assert tree[0, length] == grammar.start
        labelled = {(int(i), int(j)): int(tree[i, j]) for i, j in np.argwhere(tree >= 0)}
        assert len(labelled) == 2 * length - 1  # a binary tree over `length` leaves
        for (i, j), label in labelled.items():
            if j == i + 1:
                assert grammar.emit[label, tokens[i]] > 0
                continue
            children = [k for k in range(i + 1, j) if (i, k) in labelled and (k, j) in labelled]
            assert len(children) == 1
            k = children[0]
            assert grammar.binary[label, labelled[i, k], labelled[k, j]] > 0


def test_sampler_follows_the_grammar_given_the_length_bounds(cyclic_grammar):
    sample = sample_sentences(cyclic_grammar, 4000, seed=0, min_len=2, max_len=3)
    counts: dict[tuple, int] = {}
    for tokens, length in zip(sample.tokens, sample.lengths, strict=True):
        key = tuple(tokens[:length].tolist())
        counts[key] = counts.get(key, 0) + 1
    keys, exact = [], []
    for length in (2, 3):
        tokens, lengths = all_sentences(length, 3, cyclic_grammar.pad_id)
        keys += [tuple(row[:length].tolist()) for row in tokens]
        exact += np.exp(sentence_log_prob(cyclic_grammar, tokens, lengths)).tolist()
    exact = np.array(exact) / np.sum(exact)
    empirical = np.array([counts.get(key, 0) for key in keys]) / 4000
    assert 0.5 * np.abs(exact - empirical).sum() < 0.04


def _grammar_arrays(cyclic_grammar):
    return cyclic_grammar.binary.copy(), cyclic_grammar.emit.copy()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b, e: (b, e[:, :0]), "emit: expected"),
        (lambda b, e: (b[:2], e), "binary: expected shape"),
        (lambda b, e: (b * 0, e * 0), "no rules"),
        (lambda b, e: (b, np.concatenate([e[:, :1] * 0, e[:, 1:]], axis=1)), "sum to"),
        (lambda b, e: (-b, e), "non-negative"),
    ],
)
def test_make_grammar_rejects_bad_arrays(cyclic_grammar, edit, message):
    binary, emit = edit(*_grammar_arrays(cyclic_grammar))
    with pytest.raises(ValueError, match=message):
        make_grammar(binary, emit)


def test_make_grammar_rejects_unreachable_and_endless_grammars():
    binary = np.zeros((2, 2, 2))
    emit = np.array([[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"binary: non-terminals \[1\] are unreachable"):
        make_grammar(binary, emit)
    endless = np.zeros((1, 1, 1)) + 0.6  # S -> S S with probability 0.6: supercritical
    with pytest.raises(ValueError, match="binary: derivations need not terminate"):
        make_grammar(endless, np.array([[0.4]]))
    with pytest.raises(ValueError, match="start"):
        make_grammar(binary[:1, :1, :1], emit[:1], start=3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("num_levels", 0),
        ("nonterminals_per_level", -1),
        ("num_preterminals", 0),
        ("words_per_nonterminal", 500),
        ("emission_prob", 1.0),
        ("concentration", 0.0),
        ("rules_per_nonterminal", 1),
    ],
)
def test_random_grammar_rejects_bad_sizes(field, value):
    with pytest.raises(ValueError, match=f"spec.{field}"):
        random_grammar(GrammarSpec(**{field: value}))


def test_length_bounds_the_grammar_cannot_meet():
    # Without direct emissions every sentence has exactly 2 ** (num_levels + 1) = 8 words.
    grammar = random_grammar(GrammarSpec(num_levels=2, emission_prob=0.0))
    with pytest.raises(ValueError, match=r"min_len, max_len: .* \[4, 7\] have probability 0"):
        sample_sentences(grammar, 5, seed=0, min_len=4, max_len=7)
    assert (
        sample_sentences(grammar, 5, seed=0, min_len=4, max_len=8).lengths.tolist() == [8] * 5
    )
    with pytest.raises(ValueError, match="min_len <= max_len"):
        sample_sentences(grammar, 5, seed=0, min_len=9, max_len=8)
    with pytest.raises(ValueError, match="max_len: expected a positive integer"):
        sample_sentences(grammar, 5, seed=0, min_len=1, max_len=0)
    with pytest.raises(ValueError, match="num"):
        sample_sentences(grammar, -1, seed=0)


def test_perturbed_grammar_keeps_the_rules_and_changes_their_odds():
    grammar = random_grammar(GrammarSpec(seed=3, vocab_size=30, num_levels=2, nonterminals_per_level=4))
    perturbed = perturbed_grammar(grammar, 1.0, seed=0)
    np.testing.assert_allclose(perturbed.binary.sum((1, 2)) + perturbed.emit.sum(1), 1.0)
    # The same rules are possible (the same sentences), with other probabilities.
    np.testing.assert_array_equal(perturbed.binary > 0, grammar.binary > 0)
    np.testing.assert_array_equal(perturbed.emit > 0, grammar.emit > 0)
    assert np.abs(np.log(perturbed.emit[grammar.emit > 0] / grammar.emit[grammar.emit > 0])).mean() > 0.3
    assert perturbed.start == grammar.start
    np.testing.assert_array_equal(perturbed_grammar(grammar, 1.0, seed=0).emit, perturbed.emit)
    assert not np.array_equal(perturbed_grammar(grammar, 1.0, seed=1).emit, perturbed.emit)
    # A small scale stays close to the original.
    close = perturbed_grammar(grammar, 1e-3, seed=0)
    np.testing.assert_allclose(close.emit, grammar.emit, rtol=1e-2, atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_perturbed_grammar_rejects_a_bad_scale(cyclic_grammar, scale):
    with pytest.raises(ValueError, match="scale: expected a positive finite number"):
        perturbed_grammar(cyclic_grammar, scale, seed=0)
