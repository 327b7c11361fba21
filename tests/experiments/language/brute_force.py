"""Brute-force PCFG quantities of short sentences: the truth the exact dynamic programs must meet."""

import itertools
import math

import numpy as np

from experiments.language.grammar import Grammar

NUM_NONTERMINALS, VOCAB = 3, 2
MAX_ENUMERATED_LENGTH = 4


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


def enumerate_parses(grammar: Grammar, length: int):
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


def all_sentences(length: int, width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Every sentence of ``length`` words over the ``VOCAB`` words, padded to ``width``."""
    words = np.array(list(itertools.product(range(VOCAB), repeat=length)), dtype=np.int32)
    tokens = np.full((words.shape[0], width), pad, dtype=np.int32)
    tokens[:, :length] = words
    return tokens, np.full(words.shape[0], length, dtype=np.int32)


def flat_parses(grammar: Grammar, enumerated: dict, length: int) -> tuple[np.ndarray, ...]:
    """Every sentence of ``length`` words, padded past it, with its brute-force probabilities.

    Args:
      grammar: the grammar ``enumerated`` was computed for.
      enumerated: length -> the result of :func:`enumerate_parses`.
      length: the sentence length.

    Returns:
      ``tokens, lengths`` of :func:`all_sentences` (width ``MAX_ENUMERATED_LENGTH + 1``), and one
      row per sentence of ``joint`` ``[S]``, ``spans`` ``[S, length + 1, length + 1, N]`` and
      ``left_child`` ``[S, N]``.
    """
    joint, spans, left_child = enumerated[length]
    tokens, lengths = all_sentences(length, MAX_ENUMERATED_LENGTH + 1, grammar.pad_id)
    flat_spans = spans.reshape(-1, length + 1, length + 1, grammar.num_nonterminals)
    flat_left = left_child.reshape(-1, grammar.num_nonterminals)
    return tokens, lengths, joint.reshape(-1), flat_spans, flat_left
