"""Span classification tasks on PCFG sentences, labelled by posterior (max-marginal) decoding.

* :func:`span_labels` -- the most probable label (a non-terminal, or none) of a given span;
* :func:`left_child_labels` -- the most probable non-terminal of the root's left child;
* :data:`TASKS`, :func:`task_spans`, :func:`downstream_task` -- the tasks a, b, c and their
  seeded, labelled examples.

The posteriors come from :mod:`experiments.language.inside_outside` under the true grammar, so
every label is the Bayes decision and every task's Bayes accuracy is 1.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from experiments.language.grammar import Grammar, Seed, sample_sentences
from experiments.language.inside_outside import _check_batch, left_child_scores, span_posteriors


def _check_spans(spans: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    spans = np.asarray(spans)
    if spans.shape != (lengths.size, 2) or not np.issubdtype(spans.dtype, np.integer):
        raise ValueError(f"spans: expected a [{lengths.size}, 2] integer array of (start, end)")
    bad = np.flatnonzero((spans[:, 0] < 0) | (spans[:, 0] >= spans[:, 1]) | (spans[:, 1] > lengths))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"spans: span {k} is {tuple(spans[k].tolist())} but sentence {k} has length "
            f"{int(lengths[k])}; expected 0 <= start < end <= length"
        )
    return spans


def span_labels(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, spans: np.ndarray
) -> np.ndarray:
    """Max-marginal label of a given span of each sentence.

    The label is ``argmax`` over the ``N + 1`` outcomes ``mu(i, j, A)`` for each non-terminal
    ``A`` and ``1 - sum_A mu(i, j, A)`` for :attr:`Grammar.no_constituent`: the Bayes decision for
    "which non-terminal generated words ``i..j-1``, if any".

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths.
      spans: ``[B, 2]`` (start, end) with ``0 <= start < end <= length``.

    Returns:
      ``[B]`` int32 labels in ``[0, N]``.

    Raises:
      ValueError: if a span does not lie inside its sentence.
    """
    tokens, lengths, _ = _check_batch(grammar, tokens, lengths)
    spans = _check_spans(spans, lengths)
    posteriors = span_posteriors(grammar, tokens, lengths)
    posterior = posteriors[np.arange(lengths.size), spans[:, 0], spans[:, 1]]
    outcomes = np.concatenate([posterior, 1 - posterior.sum(axis=1, keepdims=True)], axis=1)
    return np.argmax(outcomes, axis=1).astype(np.int32)


def left_child_labels(grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    r"""Most probable non-terminal of the root's left child.

    .. math::

      \arg\max_A \sum_{0<k<n} \sum_C \mathrm{binary}[S, A, C]\,\beta(0, k, A)\,\beta(k, n, C).

    Where the split point ``k`` is unknown, this needs a global parse of the sentence. The argmax
    of :func:`~experiments.language.inside_outside.left_child_scores`.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths, >= 2.

    Returns:
      ``[B]`` int32 labels in ``[0, N)``.
    """
    scores = left_child_scores(grammar, tokens, lengths)
    return np.argmax(scores, axis=1).astype(np.int32)


class TaskExamples(NamedTuple):
    """Examples of a span classification task.

    Attributes:
      tokens: ``[num, max_len]`` int32 word ids, padded with ``grammar.pad_id``.
      lengths: ``[num]`` int32 sentence lengths.
      spans: ``[num, 2]`` int32 (start, end) of the span to classify.
      labels: ``[num]`` int32 labels in ``[0, grammar.num_labels)``.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    spans: np.ndarray
    labels: np.ndarray


TASKS: dict[str, str] = {
    "a": "prefix: label of the span of the first 2 words (a non-terminal or no_constituent).",
    "b": "middle: label of the 2-word span starting at (length - 2) // 2 (a non-terminal or "
    "no_constituent).",
    "c": "left child: non-terminal of the root's left child; the span is the whole sentence and "
    "the split point is not given.",
}
"""Downstream tasks, easiest first (the tasks A/B/C of Liu et al. (2023) in spirit).

Labels are deterministic functions of the sentence (posterior decoding under the true grammar), so
the Bayes accuracy of every task is 1; the tasks differ in how much of the parse a model must
recover: a local span at the sentence edge (a), a local span whose position moves with the length
(b), or the top split of the whole sentence (c).
"""

# Every task asks about 2 words or about the root's two children.
_MIN_TASK_LENGTH = 2


def task_spans(task: str, lengths: np.ndarray) -> np.ndarray:
    """Span each task asks about, for sentences of the given lengths.

    Args:
      task: a key of :data:`TASKS`.
      lengths: ``[B]`` sentence lengths, >= 2.

    Returns:
      ``[B, 2]`` int32 (start, end).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    lengths = np.asarray(lengths, dtype=np.int32)
    too_short = np.flatnonzero(lengths < _MIN_TASK_LENGTH)
    if too_short.size:
        raise ValueError(
            f"lengths: task {task!r} needs sentences of length >= {_MIN_TASK_LENGTH}, got "
            f"length {int(lengths[too_short[0]])} at {int(too_short[0])}"
        )
    first = {"a": np.zeros_like(lengths), "b": (lengths - 2) // 2, "c": np.zeros_like(lengths)}[
        task
    ]
    last = lengths if task == "c" else first + 2
    return np.stack([first, last], axis=1)


def downstream_task(
    grammar: Grammar, task: str, num: int, *, seed: Seed, min_len: int = 4, max_len: int = 16
) -> TaskExamples:
    """Samples labelled examples of a downstream task.

    Args:
      grammar: the grammar.
      task: a key of :data:`TASKS`.
      num: number of examples.
      seed: seed of the sentences (see :func:`sample_sentences`); use different seeds for the
        train and test splits.
      min_len: shortest sentence, >= 2 (every task's span has 2 words or more).
      max_len: longest sentence.

    Returns:
      :class:`TaskExamples`.

    Raises:
      ValueError: if ``task`` is unknown or ``min_len`` is shorter than the task's span.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    if isinstance(min_len, int | np.integer) and min_len < _MIN_TASK_LENGTH:
        raise ValueError(
            f"min_len: task {task!r} asks about a span of {_MIN_TASK_LENGTH} words, longer than "
            f"sentences of length min_len={min_len}; expected min_len >= {_MIN_TASK_LENGTH}"
        )
    sentences = sample_sentences(grammar, num, seed=seed, min_len=min_len, max_len=max_len)
    spans = task_spans(task, sentences.lengths)
    if task == "c":
        labels = left_child_labels(grammar, sentences.tokens, sentences.lengths)
    else:
        labels = span_labels(grammar, sentences.tokens, sentences.lengths, spans)
    return TaskExamples(sentences.tokens, sentences.lengths, spans, labels)
