r"""Vectorised sampling of PCFG sentences: thousands of derivations at once, one level at a time.

:func:`~experiments.language.grammar.sample_sentences` derives one sentence at a time in Python,
with its parse tree, and stays the sampler of the stored datasets (their sentences must not
change). Pretraining on fresh sentences needs a batch every few milliseconds, which
:func:`sample_tokens` draws with numpy: every pending node of every derivation rewrites at once
(an inverse-CDF draw from its symbol's rules), children get the binary path of their node, and the
leaves of a sentence are its words in path order. Derivations that must pass ``max_len`` words
are abandoned as soon as they must, and sentences outside ``[min_len, max_len]`` are rejected, so
the result follows ``p(w | min_len <= |w| <= max_len)`` exactly, like ``sample_sentences``, with
a different random stream.

Example::

  tokens, lengths = sample_tokens(grammar, 256, rng=np.random.default_rng([seed, step]))
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from experiments.language.grammar import Grammar, _check_length_bounds, length_distribution

# Paths are int64 codes of the left/right turns from the root: at most 62 turns.
_MAX_LENGTH = 62


class _RuleTable(NamedTuple):
    """Every symbol's outcomes, padded to a common count, for vectorised inverse-CDF draws."""

    cumulative: np.ndarray  # [N, M], padded with 2.0 (never drawn)
    left: np.ndarray  # [N, M] left child, or -1 for a word
    right: np.ndarray  # [N, M] right child, or the word


def _grammar_of(grammar_key: tuple[bytes, bytes, int, tuple[int, int]]) -> Grammar:
    binary_bytes, emit_bytes, start, (n, v) = grammar_key
    return Grammar(np.frombuffer(binary_bytes).reshape(n, n, n),
                   np.frombuffer(emit_bytes).reshape(n, v), start)


@functools.lru_cache(maxsize=8)
def _table(grammar_key: tuple[bytes, bytes, int, tuple[int, ...]]) -> _RuleTable:
    binary, emit, _ = _grammar_of(grammar_key)
    n = binary.shape[0]
    probs = np.concatenate([binary.reshape(n, n * n), emit], axis=1)
    width = max(int((probs > 0).sum(axis=1).max()), 1)
    cumulative = np.full((n, width), 2.0)
    left = np.full((n, width), -1, dtype=np.int64)
    right = np.zeros((n, width), dtype=np.int64)
    for symbol in range(n):
        support = np.flatnonzero(probs[symbol])
        count = support.size
        cumulative[symbol, :count] = np.cumsum(probs[symbol, support] / probs[symbol, support].sum())
        cumulative[symbol, count - 1] = 1.0  # Rounding never lets a draw past the last outcome.
        is_rule = support < n * n
        left[symbol, :count] = np.where(is_rule, support // n, -1)
        right[symbol, :count] = np.where(is_rule, support % n, support - n * n)
    return _RuleTable(cumulative, left, right)


def _grammar_key(grammar: Grammar) -> tuple[bytes, bytes, int, tuple[int, int]]:
    shape = (grammar.num_nonterminals, grammar.vocab_size)
    return grammar.binary.tobytes(), grammar.emit.tobytes(), grammar.start, shape


def _rule_table(grammar: Grammar) -> _RuleTable:
    return _table(_grammar_key(grammar))


def _acceptance(grammar: Grammar, min_len: int, max_len: int) -> float:
    """P(min_len <= |w| <= max_len), after `_check_length_bounds`; cached per grammar and bounds."""
    if not all(isinstance(v, int | np.integer) for v in (min_len, max_len)):
        _check_length_bounds(grammar, min_len, max_len)  # Raises the bounds' own error.
    return _cached_acceptance(_grammar_key(grammar), int(min_len), int(max_len))


# The length distribution's einsums took two thirds of a 256-sentence batch's time, for a constant of
# the grammar. Errors are not cached: bad bounds raise on every call.
@functools.lru_cache(maxsize=8)
def _cached_acceptance(grammar_key: tuple[bytes, bytes, int, tuple[int, int]], min_len: int,
                       max_len: int) -> float:
    grammar = _grammar_of(grammar_key)
    _check_length_bounds(grammar, min_len, max_len)
    return float(length_distribution(grammar, max_len)[min_len:].sum())


def _derive(
    grammar: Grammar, table: _RuleTable, count: int, max_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` derivations from the start symbol; returns (sentence, order key, word) per leaf,
    and drops every leaf of a derivation that must pass ``max_len`` words."""
    sentence = np.arange(count)
    symbol = np.full(count, grammar.start)
    path = np.zeros(count, dtype=np.int64)
    leaves = []
    alive = np.ones(count, dtype=bool)
    done_words = np.zeros(count, dtype=np.int64)
    for depth in range(max_len):
        if not sentence.size:
            break
        draw = rng.random(sentence.size)
        outcome = (draw[:, None] >= table.cumulative[symbol]).sum(axis=1)
        left, right = table.left[symbol, outcome], table.right[symbol, outcome]
        emitted = left < 0
        # A leaf at depth d with path p sorts at p << (max_len - d): the order of the words.
        leaves.append((sentence[emitted], path[emitted] << (max_len - depth), right[emitted]))
        np.add.at(done_words, sentence[emitted], 1)
        branch = ~emitted
        sentence = np.repeat(sentence[branch], 2)
        symbol = np.stack([left[branch], right[branch]], axis=1).ravel()
        path = np.stack([2 * path[branch], 2 * path[branch] + 1], axis=1).ravel()
        # Every pending node yields at least one word.
        pending = np.bincount(sentence, minlength=count)
        alive &= done_words + pending <= max_len
        keep = alive[sentence]
        sentence, symbol, path = sentence[keep], symbol[keep], path[keep]
    owner, key, word = (np.concatenate(parts) for parts in zip(*leaves, strict=True))
    kept = alive[owner]
    return owner[kept], key[kept], word[kept]


def sample_tokens(
    grammar: Grammar,
    num: int,
    *,
    rng: np.random.Generator,
    min_len: int = 4,
    max_len: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples sentences from ``p(w | min_len <= |w| <= max_len)``, vectorised.

    Args:
      grammar: the grammar.
      num: number of sentences, >= 0.
      rng: the random generator (consumed).
      min_len: shortest admissible length.
      max_len: longest admissible length (at most 62); the padded width of ``tokens``.

    Returns:
      ``tokens`` (``[num, max_len]`` int32 word ids padded with ``grammar.pad_id``) and
      ``lengths`` (``[num]`` int32).

    Raises:
      ValueError: a negative ``num``, ``max_len`` above 62, or length bounds the grammar cannot
        meet (as ``sample_sentences``).
    """
    if not isinstance(num, int | np.integer) or num < 0:
        raise ValueError(f"num: expected a non-negative integer, got {num!r}")
    if isinstance(max_len, int | np.integer) and max_len > _MAX_LENGTH:
        raise ValueError(f"max_len: expected at most {_MAX_LENGTH}, got {max_len}")
    accept = _acceptance(grammar, min_len, max_len)
    table = _rule_table(grammar)
    tokens = np.full((num, max_len), grammar.pad_id, dtype=np.int32)
    lengths = np.zeros(num, dtype=np.int32)
    filled = 0
    while filled < num:
        count = int(np.ceil(1.2 * (num - filled) / accept)) + 8
        owner, key, word = _derive(grammar, table, count, max_len, rng)
        order = np.lexsort((key, owner))
        owner, word = owner[order], word[order]
        sizes = np.bincount(owner, minlength=count)
        accepted = np.flatnonzero((sizes >= min_len) & (sizes <= max_len))[: num - filled]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for offset in range(max_len):
            has = offset < sizes[accepted]
            rows = filled + np.flatnonzero(has)
            tokens[rows, offset] = word[starts[accepted[has]] + offset]
        lengths[filled : filled + accepted.size] = sizes[accepted]
        filled += accepted.size
    return tokens, lengths
