r"""The downstream tasks A, B, C of Liu et al. (2023)'s release, on grammars of the rooted family.

Their definitions (``pcfg/generate_downstream.py`` of the authors' code), each an arg-max of
inside probabilities :math:`\beta` under the true grammar:

* A (:func:`root_labels`): which root symbol generated the sentence,
  :math:`\arg\max_k \beta(0, n, S_k)` with
  :math:`\beta(0, n, S_k) = \sum_{0<s<n} \beta(0, s, B_k)\,\beta(s, n, C_k)` for root ``k`` ->
  ``(B_k, C_k)`` (:func:`~experiments.language.rooted_grammar.root_pairs`); the roots'
  probabilities under the start symbol are not part of it, as in the release;
* B, C (:func:`prefix_labels`): the most likely non-terminal of the prefix of 4 (B) or 2 (C)
  words, :math:`\arg\max_A \beta(0, k, A)` over the phrase non-terminals (every level below the
  roots; the release's arg-max also ranges over its root symbols, which here are rules of the start
  symbol rather than non-terminals). Where no phrase generates the prefix (every inside
  probability is zero: its words belong to different phrases in every parse) the label is
  ``grammar.no_constituent``; the release takes the first symbol there. The label depends on the
  first ``k`` words only, but on their joint parse: no word alone determines it.

A task is undefined where its arg-max cannot vary: a grammar with one root (task A has one class),
or one whose phrases never generate the prefix (e.g. level-1 symbols that yield fewer words than
task B's 4, where every label is ``no_constituent``). Both are errors: a split whose labels are all
the same is refused, naming the task.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from experiments.language.grammar import Grammar, Seed, sample_sentences
from experiments.language.inside_outside import inside
from experiments.language.rooted_grammar import root_pairs
from experiments.language.span_tasks import TaskExamples

PREFIX_LENGTHS = {"b": 4, "c": 2}
_CHUNK = 256
TASKS: dict[str, str] = {
    "a": "root: which root symbol generated the sentence (the arg-max of its inside probability).",
    "b": "prefix of 4 words: the non-terminal of largest inside probability on span (0, 4).",
    "c": "prefix of 2 words: the non-terminal of largest inside probability on span (0, 2).",
}


def root_labels(grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Task A's labels: the root of largest inside probability of each sentence.

    Args:
      grammar: a grammar whose start symbol's rules are the roots (`rooted_grammar`).
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths, >= 2.

    Returns:
      ``[B]`` int32 root indices in ``[0, K)`` (the rows of ``root_pairs(grammar)``).

    Raises:
      ValueError: the grammar has fewer than two roots, or a sentence none of them generates.
    """
    pairs = root_pairs(grammar)
    if len(pairs) < 2:
        raise ValueError(
            f"grammar: task a asks which root generated a sentence, but the start symbol has "
            f"{len(pairs)} root rule; expected a grammar with at least 2 roots (num_roots >= 2)"
        )
    lengths = np.asarray(lengths)
    log_inside = inside(grammar, tokens, lengths)  # [B, T+1, T+1, N]
    rows = np.arange(lengths.size)[:, None]
    splits = np.arange(1, log_inside.shape[1] - 1)
    left = log_inside[rows, 0, splits][..., pairs[:, 0]]  # [B, S, K]
    right = log_inside[rows, splits, lengths[:, None]][..., pairs[:, 1]]
    scores = special.logsumexp(left + right, axis=1)  # [B, K]
    undefined = np.flatnonzero(~np.isfinite(scores.max(axis=1)))
    if undefined.size:
        raise ValueError(
            f"tokens: no root generates sentences {undefined[:5].tolist()}; expected sentences "
            "of the grammar"
        )
    return np.argmax(scores, axis=1).astype(np.int32)


def prefix_labels(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, prefix: int
) -> np.ndarray:
    """Tasks B and C's labels: the phrase non-terminal of largest inside probability on (0, k).

    Args:
      grammar: the grammar; its phrase non-terminals are all but the start symbol.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths, each >= ``prefix``.
      prefix: the span's length ``k``.

    Returns:
      ``[B]`` int32 non-terminals, or ``grammar.no_constituent`` where no phrase non-terminal
      generates the prefix (the words of the prefix belong to different phrases in every parse).

    Raises:
      ValueError: a sentence shorter than the prefix.
    """
    lengths = np.asarray(lengths)
    short = np.flatnonzero(lengths < prefix)
    if short.size:
        raise ValueError(
            f"lengths: the prefix task of {prefix} words needs sentences of >= {prefix} words, "
            f"got length {int(lengths[short[0]])} at {int(short[0])}"
        )
    log_inside = inside(grammar, tokens, lengths)[:, 0, prefix]  # [B, N]
    log_inside[:, grammar.start] = -np.inf
    labels = np.argmax(log_inside, axis=1).astype(np.int32)
    labels[~np.isfinite(log_inside.max(axis=1))] = grammar.no_constituent
    return labels


def task_spans(task: str, lengths: np.ndarray) -> np.ndarray:
    """The span of each task: the whole sentence (A) or the prefix (B, C); ``[B, 2]`` int32."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    lengths = np.asarray(lengths, dtype=np.int32)
    last = lengths if task == "a" else np.full_like(lengths, PREFIX_LENGTHS[task])
    return np.stack([np.zeros_like(lengths), last], axis=1)


def downstream_task(
    grammar: Grammar, task: str, num: int, *, seed: Seed, min_len: int = 5, max_len: int = 16
) -> TaskExamples:
    """Samples labelled examples of task A, B or C.

    Args:
      grammar: a grammar of the rooted family.
      task: a key of :data:`TASKS`.
      num: number of examples, >= 2.
      seed: seed of the sentences (see ``sample_sentences``); different for train and test.
      min_len: shortest sentence, at least the task's prefix.
      max_len: longest sentence.

    Returns:
      :class:`~experiments.language.span_tasks.TaskExamples`.

    Raises:
      ValueError: an unknown task, ``min_len`` shorter than the prefix, a task the grammar leaves
        undefined (see :func:`root_labels`, :func:`prefix_labels`), or labels that are all the
        same (a task with one class).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    prefix = PREFIX_LENGTHS.get(task, 2)
    if isinstance(min_len, int | np.integer) and min_len < prefix:
        raise ValueError(
            f"min_len: task {task!r} asks about the first {prefix} words, more than sentences of "
            f"length min_len={min_len} have; expected min_len >= {prefix}"
        )
    sentences = sample_sentences(grammar, num, seed=seed, min_len=min_len, max_len=max_len)
    tokens, lengths = sentences.tokens, sentences.lengths
    labels = np.zeros(num, dtype=np.int32)
    for first in range(0, num, _CHUNK):  # Bounds the [chunk, T+1, T+1, N] inside charts.
        chunk = slice(first, first + _CHUNK)
        if task == "a":
            labels[chunk] = root_labels(grammar, tokens[chunk], lengths[chunk])
        else:
            labels[chunk] = prefix_labels(grammar, tokens[chunk], lengths[chunk], PREFIX_LENGTHS[task])
    if num >= 2 and np.unique(labels).size < 2:
        raise ValueError(
            f"task {task!r}: every one of {num} sentences has label {int(labels[0])}, so the task "
            "has one class; expected grammar parameters under which its arg-max varies"
        )
    return TaskExamples(tokens, lengths, task_spans(task, lengths), labels)
