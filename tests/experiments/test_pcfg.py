"""Tests of the PCFG data: exact dynamic programs against brute-force enumeration, the sampler,
the tasks, the TFDS builder, and the errors on bad input."""

import dataclasses
import itertools
import math
import pathlib

import numpy as np
import pytest

from experiments.language.grammar import (
    Grammar,
    GrammarSpec,
    length_distribution,
    make_grammar,
    random_grammar,
    sample_sentences,
)
from experiments.language.inside_outside import (
    conditionals,
    inside,
    masked_conditionals,
    outside,
    sentence_log_prob,
    span_posteriors,
)
from experiments.language.loss_gap import masked_lm_gap, optimal_masked_lm_loss
from experiments.language.span_tasks import TASKS, downstream_task, left_child_labels, span_labels, task_spans
from experiments.language.tfds_builder import Pcfg, PcfgConfig, load_pcfg

NUM_NONTERMINALS, VOCAB = 3, 2
MAX_ENUMERATED_LENGTH = 4


@pytest.fixture(scope="module")
def cyclic_grammar() -> Grammar:
    """A dense 3-symbol grammar with recursive rules (S -> S S etc.), so parses are ambiguous."""
    rng = np.random.default_rng(0)
    n, v = NUM_NONTERMINALS, VOCAB
    binary = 0.3 * rng.dirichlet(np.ones(n * n), size=n).reshape(n, n, n)
    emit = 0.7 * rng.dirichlet(np.ones(v), size=n)
    return make_grammar(binary, emit, start=0)


def _tree_shapes(num_leaves: int):
    """All binary bracketings of ``num_leaves`` leaves, as nested (left, right) tuples."""
    if num_leaves == 1:
        yield None
        return
    for left in range(1, num_leaves):
        for left_tree in _tree_shapes(left):
            for right_tree in _tree_shapes(num_leaves - left):
                yield (left, left_tree, right_tree)


def _nodes(shape, first: int, last: int, out: list) -> int:
    """Appends (first, last, left child, right child) tuples in pre-order; returns its index."""
    index = len(out)
    out.append(None)
    if shape is None:
        out[index] = (first, last, -1, -1)
    else:
        split, left, right = shape
        left_index = _nodes(left, first, first + split, out)
        right_index = _nodes(right, first + split, last, out)
        out[index] = (first, last, left_index, right_index)
    return index


def _enumerate(grammar: Grammar, length: int):
    """Brute force over every labelled tree with ``length`` leaves.

    Returns:
      joint: ``[V] * length`` array of p(w) for every sentence of this length.
      spans: ``[V] * length + [length + 1, length + 1, N]`` array of p(w, A spans (i, j)).
      left_child: ``[V] * length + [N]`` array of p(w, the root's left child is A).
    """
    n, v = grammar.num_nonterminals, grammar.vocab_size
    joint = np.zeros((v,) * length)
    spans = np.zeros((v,) * length + (length + 1, length + 1, n))
    left_child = np.zeros((v,) * length + (n,))
    for shape in _tree_shapes(length):
        nodes: list = []
        _nodes(shape, 0, length, nodes)
        leaves = [k for k, node in enumerate(nodes) if node[2] < 0]
        for labels in itertools.product(range(n), repeat=len(nodes) - 1):
            labels = (grammar.start, *labels)
            rules = math.prod(
                grammar.binary[labels[k], labels[node[2]], labels[node[3]]]
                for k, node in enumerate(nodes)
                if node[2] >= 0
            )
            words = rules
            for leaf in leaves:
                words = np.multiply.outer(words, grammar.emit[labels[leaf]])
            joint += words
            for label, (first, last, _, _) in zip(labels, nodes, strict=True):
                spans[..., first, last, label] += words
            if length > 1:
                left_child[..., labels[nodes[0][2]]] += words
    return joint, spans, left_child


@pytest.fixture(scope="module")
def enumerated(cyclic_grammar):
    return {n: _enumerate(cyclic_grammar, n) for n in range(1, MAX_ENUMERATED_LENGTH + 1)}


def _all_sentences(length: int, width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.array(list(itertools.product(range(VOCAB), repeat=length)), dtype=np.int32)
    tokens = np.full((words.shape[0], width), pad, dtype=np.int32)
    tokens[:, :length] = words
    return tokens, np.full(words.shape[0], length, dtype=np.int32)


@pytest.mark.parametrize("length", range(1, MAX_ENUMERATED_LENGTH + 1))
def test_inside_outside_match_brute_force(cyclic_grammar, enumerated, length):
    joint, spans, left_child = enumerated[length]
    # Pad past the length, so padding must not leak into the charts.
    tokens, lengths = _all_sentences(length, MAX_ENUMERATED_LENGTH + 1, cyclic_grammar.pad_id)
    flat_joint = joint.reshape(-1)
    flat_spans = spans.reshape(-1, length + 1, length + 1, NUM_NONTERMINALS)

    np.testing.assert_allclose(
        sentence_log_prob(cyclic_grammar, tokens, lengths), np.log(flat_joint), rtol=1e-10
    )
    assert length_distribution(cyclic_grammar, length)[length] == pytest.approx(joint.sum())

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
        flat_left = left_child.reshape(-1, NUM_NONTERMINALS)
        np.testing.assert_array_equal(
            left_child_labels(cyclic_grammar, tokens, lengths), flat_left.argmax(axis=1)
        )
        first = length // 2
        spans_asked = np.tile([first, first + 1 + (length > 2)], (lengths.size, 1))
        span_posterior = flat_spans[:, spans_asked[0, 0], spans_asked[0, 1]] / flat_joint[:, None]
        outcomes = np.concatenate([span_posterior, 1 - span_posterior.sum(1, keepdims=True)], 1)
        np.testing.assert_array_equal(
            span_labels(cyclic_grammar, tokens, lengths, spans_asked), outcomes.argmax(1)
        )


def test_conditionals_marginalise_hidden_positions(cyclic_grammar, enumerated):
    joint = enumerated[4][0]
    tokens, lengths = _all_sentences(4, 4, cyclic_grammar.pad_id)
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
    tokens, lengths = _all_sentences(3, 4, cyclic_grammar.pad_id)
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
        tokens, lengths = _all_sentences(length, 3, cyclic_grammar.pad_id)
        keys += [tuple(row[:length].tolist()) for row in tokens]
        exact += np.exp(sentence_log_prob(cyclic_grammar, tokens, lengths)).tolist()
    exact = np.array(exact) / np.sum(exact)
    empirical = np.array([counts.get(key, 0) for key in keys]) / 4000
    assert 0.5 * np.abs(exact - empirical).sum() < 0.04


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


def test_downstream_tasks_are_seeded_and_labelled_consistently():
    grammar = random_grammar(GrammarSpec(vocab_size=30, num_levels=2))
    for task in TASKS:
        examples = downstream_task(grammar, task, 30, seed=2, max_len=8)
        again = downstream_task(grammar, task, 30, seed=2, max_len=8)
        np.testing.assert_array_equal(examples.labels, again.labels)
        assert examples.labels.min() >= 0 and examples.labels.max() < grammar.num_labels
        np.testing.assert_array_equal(examples.spans, task_spans(task, examples.lengths))
        assert np.all(examples.spans[:, 1] <= examples.lengths)
    lengths = np.array([4, 7])
    np.testing.assert_array_equal(task_spans("a", lengths), [[0, 2], [0, 2]])
    np.testing.assert_array_equal(task_spans("b", lengths), [[1, 3], [2, 4]])
    np.testing.assert_array_equal(task_spans("c", lengths), [[0, 4], [0, 7]])


def test_tfds_builder_serves_the_splits(pcfg_data_dir):
    data = load_pcfg(pcfg_data_dir, "tiny")
    config = next(c for c in Pcfg.BUILDER_CONFIGS if c.name == "tiny")
    expected_splits = {"pretrain", "evaluation"} | {
        f"task_{t}_{s}" for t in TASKS for s in ("train", "test")
    }
    assert set(data.splits) == expected_splits
    pretrain = data.splits["pretrain"]
    assert pretrain["tokens"].shape == (config.num_pretrain, config.max_len)
    assert np.all(pretrain["label"] == -1)
    np.testing.assert_array_equal(pretrain["span"][:, 1], pretrain["length"])
    task = data.splits["task_b_test"]
    assert task["label"].shape == (config.num_task_test,)
    relabelled = span_labels(data.grammar, task["tokens"], task["length"], task["span"])
    np.testing.assert_array_equal(task["label"], relabelled)
    # Generation order is kept and the sampling is deterministic by seed.
    direct = downstream_task(
        data.grammar, "b", config.num_task_test, seed=(config.data_seed, 5), max_len=config.max_len
    )
    np.testing.assert_array_equal(task["tokens"], direct.tokens)
    with pytest.raises(ValueError, match=r"splits: .* unknown \['validation'\]"):
        load_pcfg(pathlib.Path(pcfg_data_dir), "tiny", splits=["validation"])
    reloaded = load_pcfg(pcfg_data_dir, "tiny", splits=["evaluation"])
    np.testing.assert_array_equal(
        reloaded.splits["evaluation"]["tokens"], data.splits["evaluation"]["tokens"]
    )


def test_small_config_is_the_tiny_grammar_with_many_sentences():
    # The grammar a tiny model can fit to 0.02 nats on a CPU (docs/pcfg_results.md); built lazily, so
    # only its parameters are checked here.
    configs = {c.name: c for c in Pcfg.BUILDER_CONFIGS}
    small, tiny = configs["small"], configs["tiny"]
    assert small.grammar == tiny.grammar and small.max_len == tiny.max_len == 8
    assert small.num_pretrain == 100_000 > tiny.num_pretrain
    grammar = random_grammar(small.grammar)
    assert grammar.emit.shape == (11, 20)


def test_tfds_custom_configs_are_keyed_by_their_parameters(tmp_path):
    first = PcfgConfig(data_seed=1, num_pretrain=10)
    second = PcfgConfig(data_seed=2, num_pretrain=10)
    assert first.name != second.name
    assert first.name == PcfgConfig(data_seed=1, num_pretrain=10).name
    with pytest.raises(ValueError, match="config"):
        load_pcfg(str(tmp_path), "no_such_config")
    with pytest.raises(ValueError, match="num_pretrain: expected a positive integer"):
        PcfgConfig(num_pretrain=0)


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


def test_spans_and_batches_that_do_not_fit(cyclic_grammar):
    tokens, lengths = np.zeros((2, 5), dtype=np.int32), np.array([3, 5])
    with pytest.raises(ValueError, match=r"spans: span 0 is \(1, 4\) but sentence 0 has length 3"):
        span_labels(cyclic_grammar, tokens, lengths, np.array([[1, 4], [0, 2]]))
    with pytest.raises(ValueError, match="min_len: task 'a' asks about a span of 2 words"):
        downstream_task(cyclic_grammar, "a", 3, seed=0, min_len=1, max_len=3)
    with pytest.raises(ValueError, match="task: expected one of"):
        task_spans("d", lengths)
    with pytest.raises(ValueError, match="lengths: expected values in"):
        conditionals(cyclic_grammar, tokens, np.array([3, 6]))
    with pytest.raises(ValueError, match="tokens: expected word ids"):
        conditionals(cyclic_grammar, tokens + 7, lengths)
    # Word 1 is never emitted, so no word completes "1 _" in the second sentence.
    impossible = make_grammar(np.full((1, 1, 1), 0.3), np.array([[0.7, 0.0]]))
    with pytest.raises(ValueError, match=r"tokens: .* sentences \[1\] have probability zero"):
        conditionals(impossible, np.array([[0, 0], [1, 0]]), np.array([2, 2]))
    truth = conditionals(cyclic_grammar, tokens, lengths)
    with pytest.raises(ValueError, match="model_log_probs: expected shape"):
        masked_lm_gap(truth, np.zeros((2, 5, 1)), lengths)
