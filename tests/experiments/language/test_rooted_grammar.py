"""Tests of the rooted grammar family, its vectorised sampler and the paper's tasks A, B, C:
labels against brute-force enumeration, and the errors of grammars that leave a task undefined."""

import dataclasses

import numpy as np
import pytest

from experiments.language import paper_tasks, sampling
from experiments.language.grammar import Grammar, length_distribution, make_grammar
from experiments.language.inside_outside import sentence_log_prob
from experiments.language.rooted_grammar import RootedGrammarSpec, root_pairs, rooted_grammar
from experiments.language.sampling import sample_tokens
from experiments.language.tfds_builder import PcfgConfig
from tests.experiments.language.brute_force import all_sentences, enumerate_parses

SMALL = RootedGrammarSpec(
    num_roots=3,
    num_levels=3,
    nonterminals_per_level=4,
    rules_per_nonterminal=3,
    words_per_preterminal=6,
    vocab_size=12,
)


def test_rooted_grammar_has_distinct_roots_and_shared_words():
    grammar = rooted_grammar(SMALL)
    assert grammar.binary.shape == (SMALL.num_nonterminals,) * 3 == (13, 13, 13)
    pairs = root_pairs(grammar)
    assert len(pairs) == 3 and len({tuple(p) for p in pairs.tolist()}) == 3
    assert set(pairs.ravel().tolist()) == {1, 2, 3, 4}  # Every level-1 symbol starts some root.
    assert grammar.emit[grammar.start].sum() == 0
    preterminals = grammar.emit[9:] > 0
    assert (preterminals.sum(axis=0) > 1).any()  # A word of several preterminals: ambiguity.
    lengths = length_distribution(grammar, 2 * SMALL.max_sentence_length)
    assert lengths[: SMALL.max_sentence_length + 1].sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(rooted_grammar(SMALL).binary, grammar.binary)
    assert not np.array_equal(rooted_grammar(dataclasses.replace(SMALL, seed=1)).emit, grammar.emit)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_roots": 1}, "num_roots"),  # Task A would have one class.
        ({"num_roots": 17}, "num_roots"),  # More roots than pairs of level-1 symbols.
        ({"num_roots": 1, "nonterminals_per_level": 1}, "num_roots"),
        ({"num_levels": 1}, "num_levels"),
        ({"words_per_preterminal": 13}, "words_per_preterminal"),
        ({"emission_prob": 1.0}, "emission_prob"),
    ],
)
def test_bad_rooted_specs_name_the_field(change, field):
    with pytest.raises(ValueError, match=f"spec.{field}"):
        rooted_grammar(dataclasses.replace(SMALL, **change))


def test_configs_that_leave_a_task_undefined_name_the_field():
    # Two levels: level-1 symbols yield at most 2 words, so no phrase spans task B's 4.
    with pytest.raises(ValueError, match="grammar.num_levels"):
        PcfgConfig(grammar=dataclasses.replace(SMALL, num_levels=2), min_len=4, max_len=4)
    with pytest.raises(ValueError, match="min_len: task b"):
        PcfgConfig(grammar=SMALL, min_len=3, max_len=8)
    with pytest.raises(ValueError, match="spec.num_roots"):
        PcfgConfig(grammar=dataclasses.replace(SMALL, num_roots=1), min_len=5, max_len=8)
    # A grammar whose every 2-word prefix has the same label: task C has one class.
    binary = np.zeros((4, 4, 4))
    binary[0, 1, 2] = binary[1, 3, 3] = 1.0
    emit = np.zeros((4, 2))
    emit[2, 0] = emit[3, 1] = 1.0
    one_class = make_grammar(binary, emit)
    with pytest.raises(ValueError, match="task 'c': every one of 20 sentences has label 1"):
        paper_tasks.downstream_task(one_class, "c", 20, seed=0, min_len=3, max_len=3)
    with pytest.raises(ValueError, match="min_len: task 'b' asks about the first 4 words"):
        paper_tasks.downstream_task(one_class, "b", 20, seed=0, min_len=3, max_len=3)
    with pytest.raises(ValueError, match="task a asks which root .* at least 2 roots"):
        paper_tasks.downstream_task(one_class, "a", 20, seed=0, min_len=3, max_len=3)


def test_sample_tokens_follows_the_grammar(cyclic_grammar):
    count, min_len, max_len = 40_000, 1, 3
    tokens, lengths = sample_tokens(
        cyclic_grammar, count, rng=np.random.default_rng(0), min_len=min_len, max_len=max_len
    )
    assert tokens.shape == (count, max_len) and lengths.min() >= min_len
    assert np.all(tokens[np.arange(max_len) >= lengths[:, None]] == cyclic_grammar.pad_id)
    # Every sentence of up to 3 words, against its exact probability given the length bounds.
    total = length_distribution(cyclic_grammar, max_len)[min_len:].sum()
    observed = {tuple(row[:n]) for row, n in zip(tokens.tolist(), lengths, strict=True)}
    for length in range(min_len, max_len + 1):
        sentences, sizes = all_sentences(length, max_len, cyclic_grammar.pad_id)
        expected = np.exp(sentence_log_prob(cyclic_grammar, sentences, sizes)) / total
        seen = np.array(
            [np.sum((lengths == length) & np.all(tokens == row, axis=1)) for row in sentences]
        )
        stderr = np.sqrt(count * expected * (1 - expected))
        assert np.all(np.abs(seen - count * expected) < 5 * stderr + 1), (length, seen, expected)
    assert len(observed) > 10
    first, second = (
        sample_tokens(cyclic_grammar, 50, rng=np.random.default_rng(1), min_len=1, max_len=3)
        for _ in range(2)
    )
    np.testing.assert_array_equal(first[0], second[0])


def test_sample_tokens_caches_the_acceptance_per_grammar_and_bounds(cyclic_grammar):
    """The acceptance probability is cached: a cache filled under other bounds or another
    grammar must not change a batch (it sets how many derivations are drawn from the stream),
    and bad bounds still get the clear error after a hit."""

    def batch(grammar, min_len, max_len):
        return sample_tokens(grammar, 64, rng=np.random.default_rng(7), min_len=min_len,
                             max_len=max_len)

    sampling._cached_acceptance.cache_clear()
    cold = batch(cyclic_grammar, 2, 3)
    sampling._cached_acceptance.cache_clear()
    batch(cyclic_grammar, 1, 3)
    batch(_with_start(cyclic_grammar, 1), 2, 3)
    warm = [batch(cyclic_grammar, 2, 3) for _ in range(2)]
    assert sampling._cached_acceptance.cache_info().currsize == 3
    for tokens, lengths in warm:
        np.testing.assert_array_equal(tokens, cold[0])
        np.testing.assert_array_equal(lengths, cold[1])
    with pytest.raises(ValueError, match="min_len <= max_len"):
        batch(cyclic_grammar, 3, 2)
    with pytest.raises(ValueError, match="min_len: expected a positive integer"):
        batch(cyclic_grammar, 2.0, 3)


def _with_start(grammar: Grammar, start: int) -> Grammar:
    return Grammar(grammar.binary, grammar.emit, start)


@pytest.mark.parametrize("prefix", [2, 3])
def test_prefix_labels_match_brute_force(cyclic_grammar, prefix):
    length = 4
    tokens, lengths = all_sentences(length, length, cyclic_grammar.pad_id)
    # beta(0, k, A) by enumerating every tree of A over the prefix's words.
    inside = np.stack(
        [
            enumerate_parses(_with_start(cyclic_grammar, a), prefix)[0].reshape(-1)
            for a in range(cyclic_grammar.num_nonterminals)
        ],
        axis=1,
    )
    words = np.ravel_multi_index(tokens[:, :prefix].T, (2,) * prefix)
    scores = inside[words]
    scores[:, cyclic_grammar.start] = -1  # The phrase non-terminals only.
    labels = paper_tasks.prefix_labels(cyclic_grammar, tokens, lengths, prefix)
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))


@pytest.mark.parametrize("length", [2, 3])
def test_root_labels_match_brute_force(cyclic_grammar, length):
    pairs = root_pairs(cyclic_grammar)
    assert len(pairs) == 9  # The dense test grammar: every pair is a root.
    tokens, lengths = all_sentences(length, length, cyclic_grammar.pad_id)
    n = cyclic_grammar.num_nonterminals
    inside = []
    for left, right in pairs:
        # A fresh start symbol whose only rule is the root's pair: its sentence probability is
        # the root's inside probability, summed over every tree.
        binary = np.zeros((n + 1,) * 3)
        binary[:n, :n, :n] = cyclic_grammar.binary
        binary[n, left, right] = 1.0
        emit = np.concatenate([cyclic_grammar.emit, np.zeros((1, 2))])
        inside.append(enumerate_parses(Grammar(binary, emit, n), length)[0].reshape(-1))
    expected = np.stack(inside, axis=1).argmax(axis=1)
    np.testing.assert_array_equal(
        paper_tasks.root_labels(cyclic_grammar, tokens, lengths), expected
    )


def test_paper_tasks_are_seeded_with_their_spans():
    grammar = rooted_grammar(SMALL)
    for task in paper_tasks.TASKS:
        examples = paper_tasks.downstream_task(grammar, task, 40, seed=2, min_len=5, max_len=8)
        again = paper_tasks.downstream_task(grammar, task, 40, seed=2, min_len=5, max_len=8)
        np.testing.assert_array_equal(examples.labels, again.labels)
        assert 0 <= examples.labels.min() and examples.labels.max() <= grammar.no_constituent
        last = examples.lengths if task == "a" else paper_tasks.PREFIX_LENGTHS[task]
        np.testing.assert_array_equal(examples.spans[:, 1], last)
        assert np.all(examples.spans[:, 0] == 0)
    labels = paper_tasks.downstream_task(grammar, "a", 40, seed=2, min_len=5, max_len=8).labels
    assert labels.max() < SMALL.num_roots
