"""Tests of the span tasks: labels by posterior decoding against brute-force enumeration, seeded
examples, and the errors on spans and tasks that do not fit."""

import numpy as np
import pytest

from experiments.language.grammar import GrammarSpec, random_grammar
from experiments.language.span_tasks import (
    TASKS,
    downstream_task,
    left_child_labels,
    span_labels,
    task_spans,
)
from tests.experiments.language.brute_force import MAX_ENUMERATED_LENGTH, flat_parses


@pytest.mark.parametrize("length", range(2, MAX_ENUMERATED_LENGTH + 1))
def test_labels_match_brute_force(cyclic_grammar, enumerated, length):
    tokens, lengths, flat_joint, flat_spans, flat_left = flat_parses(
        cyclic_grammar, enumerated, length
    )
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


def test_spans_and_tasks_that_do_not_fit(cyclic_grammar):
    tokens, lengths = np.zeros((2, 5), dtype=np.int32), np.array([3, 5])
    with pytest.raises(ValueError, match=r"spans: span 0 is \(1, 4\) but sentence 0 has length 3"):
        span_labels(cyclic_grammar, tokens, lengths, np.array([[1, 4], [0, 2]]))
    with pytest.raises(ValueError, match="min_len: task 'a' asks about a span of 2 words"):
        downstream_task(cyclic_grammar, "a", 3, seed=0, min_len=1, max_len=3)
    with pytest.raises(ValueError, match="task: expected one of"):
        task_spans("d", lengths)
