r"""Random probabilistic context-free grammars and seeded sentences with their parse trees.

The language setting of Liu et al. (2023) pretrains masked language models on sentences drawn
from a known PCFG, so the best achievable masked-LM loss is known exactly
(:mod:`experiments.language.loss_gap`), and builds downstream tasks from the grammar's parses
(:mod:`experiments.language.span_tasks`). This module holds the grammar and the sampler:

* :class:`Grammar` -- a PCFG in Chomsky normal form as two dense arrays,
  ``binary[A, B, C] = P(A -> B C)`` and ``emit[A, w] = P(A -> w)``; :func:`make_grammar`
  validates user arrays, :func:`random_grammar` draws a seeded layered grammar from a
  :class:`GrammarSpec`.
* :func:`length_distribution` -- the exact probability of each sentence length.
* :func:`sample_sentences` -- seeded sentences with the labelled spans of their parse trees,
  restricted to lengths in ``[min_len, max_len]`` by rejection.

Token ids: words are ``0 .. V-1``; ``Grammar.pad_id = V`` pads sentences and
``Grammar.mask_id = V + 1`` is reserved for the model's mask token, so a model embeds
``Grammar.model_vocab_size = V + 2`` ids.

Example::

  grammar = random_grammar(GrammarSpec(seed=0))  # 31 non-terminals, 100 words
  sentences = sample_sentences(grammar, 1000, seed=1)  # lengths 4..16

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

_ROW_SUM_TOLERANCE = 1e-6
# Below this probability of an admissible length, rejection sampling would not finish in practice.
_MIN_ACCEPT_PROBABILITY = 1e-6

Seed = int | Sequence[int]


class Grammar(NamedTuple):
    """A PCFG in Chomsky normal form over non-terminals ``0..N-1`` and words ``0..V-1``.

    Every non-terminal ``A`` rewrites either to two non-terminals or to one word, and its rule
    probabilities sum to one: ``binary[A].sum() + emit[A].sum() == 1``.

    Attributes:
      binary: ``[N, N, N]`` float64, ``binary[A, B, C] = P(A -> B C)``.
      emit: ``[N, V]`` float64, ``emit[A, w] = P(A -> w)``.
      start: the start symbol.
    """

    binary: np.ndarray
    emit: np.ndarray
    start: int

    @property
    def num_nonterminals(self) -> int:
        """``N``, the number of non-terminals."""
        return self.emit.shape[0]

    @property
    def vocab_size(self) -> int:
        """``V``, the number of words."""
        return self.emit.shape[1]

    @property
    def pad_id(self) -> int:
        """Token id that pads sentences past their length (``V``)."""
        return self.vocab_size

    @property
    def mask_id(self) -> int:
        """Token id reserved for the masked-LM mask token (``V + 1``)."""
        return self.vocab_size + 1

    @property
    def model_vocab_size(self) -> int:
        """Number of token ids a model must embed: words, padding and mask (``V + 2``)."""
        return self.vocab_size + 2

    @property
    def no_constituent(self) -> int:
        """Span-task label meaning "no constituent spans this span" (``N``)."""
        return self.num_nonterminals

    @property
    def num_labels(self) -> int:
        """Number of span-task labels: the non-terminals and :attr:`no_constituent` (``N + 1``)."""
        return self.num_nonterminals + 1


def make_grammar(binary: np.ndarray, emit: np.ndarray, start: int = 0) -> Grammar:
    """Validates rule arrays and returns them as a :class:`Grammar`.

    A valid grammar has, for every non-terminal ``A``, non-negative rule probabilities summing to
    one; every non-terminal is reachable from ``start``; and derivations terminate: the matrix of
    expected children ``M[A, B] = sum_C binary[A, B, C] + binary[A, C, B]`` has spectral radius
    below one (a subcritical branching process, so sentences have finite expected length).

    Args:
      binary: ``[N, N, N]`` array, ``binary[A, B, C] = P(A -> B C)``.
      emit: ``[N, V]`` array, ``emit[A, w] = P(A -> w)``.
      start: index of the start symbol.

    Returns:
      The grammar, with float64 arrays.

    Raises:
      ValueError: naming the argument, for wrong shapes, negative or non-finite probabilities,
        rows that do not sum to one (all-zero rows included), unreachable non-terminals, or
        derivations that need not terminate.
    """
    binary = np.asarray(binary, dtype=np.float64)
    emit = np.asarray(emit, dtype=np.float64)
    if emit.ndim != 2 or emit.shape[0] < 1 or emit.shape[1] < 1:
        raise ValueError(
            f"emit: expected a [num_nonterminals, vocab_size] array with both sizes >= 1, "
            f"got shape {emit.shape}"
        )
    n = emit.shape[0]
    if binary.shape != (n, n, n):
        raise ValueError(
            f"binary: expected shape {(n, n, n)} (num_nonterminals from emit), got {binary.shape}"
        )
    if not (isinstance(start, int | np.integer) and 0 <= start < n):
        raise ValueError(f"start: expected an integer in [0, {n}), got {start!r}")
    for name, array in (("binary", binary), ("emit", emit)):
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"{name}: expected finite, non-negative probabilities")
    totals = binary.sum(axis=(1, 2)) + emit.sum(axis=1)
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        raise ValueError(
            f"binary, emit: non-terminals {empty.tolist()} have no rules (all-zero rows in both); "
            "expected every non-terminal's rule probabilities to sum to 1"
        )
    unnormalised = np.flatnonzero(np.abs(totals - 1) > _ROW_SUM_TOLERANCE)
    if unnormalised.size:
        raise ValueError(
            f"binary, emit: rule probabilities of non-terminals {unnormalised.tolist()} sum to "
            f"{totals[unnormalised].tolist()}; expected binary[A].sum() + emit[A].sum() == 1"
        )
    children = binary.sum(axis=2) + binary.sum(axis=1)  # expected number of each child symbol
    reachable = np.zeros(n, dtype=bool)
    frontier = [int(start)]
    reachable[start] = True
    while frontier:
        found = np.flatnonzero((children[frontier].sum(axis=0) > 0) & ~reachable)
        reachable[found] = True
        frontier = found.tolist()
    if not reachable.all():
        raise ValueError(
            f"binary: non-terminals {np.flatnonzero(~reachable).tolist()} are unreachable from "
            f"start={start}; expected every non-terminal to appear on the right of a reachable rule"
        )
    radius = float(np.max(np.abs(np.linalg.eigvals(children))))
    if radius >= 1:
        raise ValueError(
            f"binary: derivations need not terminate (the expected-children matrix has spectral "
            f"radius {radius:.3g}); expected a radius below 1, e.g. more emission probability"
        )
    return Grammar(binary=binary, emit=emit, start=int(start))


def perturbed_grammar(grammar: Grammar, scale: float, seed: int) -> Grammar:
    """The grammar with its rule probabilities perturbed: same symbols, rules and words, other odds.

    Every rule probability (binary and emission) is multiplied by ``exp(scale * z)``, ``z`` a
    standard normal drawn per rule, and each non-terminal's rules are renormalised. Rules of
    probability zero stay impossible, so the perturbed grammar derives the same sentences with other
    probabilities: text of another distribution over the same vocabulary (critic 1 of the study:
    curvature measured without the pretraining data).

    Args:
      grammar: the grammar to perturb.
      scale: standard deviation of the log-probability perturbation, > 0.
      seed: seed of the perturbation.

    Returns:
      The perturbed grammar (validated by :func:`make_grammar`).

    Raises:
      ValueError: ``scale`` is not a positive finite number, or the perturbed rules let
        derivations grow without end (:func:`make_grammar`).
    """
    if not (isinstance(scale, int | float | np.floating) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite number, got {scale!r}")
    rng = np.random.default_rng(seed)
    binary = grammar.binary * np.exp(scale * rng.standard_normal(grammar.binary.shape))
    emit = grammar.emit * np.exp(scale * rng.standard_normal(grammar.emit.shape))
    total = binary.sum(axis=(1, 2)) + emit.sum(axis=1)
    return make_grammar(binary / total[:, None, None], emit / total[:, None], grammar.start)

@dataclasses.dataclass(frozen=True)
class GrammarSpec:
    """Sizes and seed of a layered random grammar (see :func:`random_grammar`).

    Attributes:
      seed: seed of the grammar's random structure and probabilities.
      vocab_size: number of words ``V``.
      num_levels: phrase levels between the start symbol and the preterminals; sentences have at
        most ``2 ** (num_levels + 1)`` words.
      nonterminals_per_level: non-terminals on each phrase level.
      num_preterminals: non-terminals that only emit words.
      rules_per_nonterminal: binary rules drawn for each non-preterminal (duplicates merge).
      words_per_nonterminal: words each emitting non-terminal can emit.
      emission_prob: probability that a phrase non-terminal (not the start symbol) emits a word
        directly instead of branching; in ``[0, 1)``.
      concentration: Dirichlet concentration of the rule and word probabilities.
    """

    seed: int = 0
    vocab_size: int = 100
    num_levels: int = 3
    nonterminals_per_level: int = 6
    num_preterminals: int = 12
    rules_per_nonterminal: int = 4
    words_per_nonterminal: int = 10
    emission_prob: float = 0.2
    concentration: float = 1.0

    @property
    def num_nonterminals(self) -> int:
        """Start symbol, phrase non-terminals and preterminals."""
        return 1 + self.num_levels * self.nonterminals_per_level + self.num_preterminals

    @property
    def max_sentence_length(self) -> int:
        """Longest sentence the grammar can generate."""
        return 2 ** (self.num_levels + 1)


def random_grammar(spec: GrammarSpec = GrammarSpec()) -> Grammar:
    """Draws a seeded, layered random PCFG.

    Symbol ``0`` is the start symbol; then come ``num_levels`` levels of ``nonterminals_per_level``
    phrase non-terminals, then ``num_preterminals`` preterminals. Each symbol of one level rewrites
    to ``A -> B C`` with ``B, C`` on the next level (``rules_per_nonterminal`` rules, probabilities
    ``(1 - emission_prob) * Dirichlet(concentration)``); every next-level symbol appears in some
    rule, so all symbols are reachable. Phrase non-terminals also emit a word directly with
    probability ``emission_prob``; preterminals only emit. Each emitting symbol draws
    ``words_per_nonterminal`` words with ``Dirichlet(concentration)`` probabilities, so words are
    shared between symbols and parses are ambiguous. Level-to-level rules make every derivation
    finite.

    Args:
      spec: sizes and seed.

    Returns:
      The validated grammar; ``spec.num_nonterminals`` non-terminals and ``spec.vocab_size`` words.

    Raises:
      ValueError: naming the field of ``spec`` that is out of range.
    """
    for name in (
        "vocab_size",
        "num_levels",
        "nonterminals_per_level",
        "num_preterminals",
        "rules_per_nonterminal",
        "words_per_nonterminal",
    ):
        value = getattr(spec, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"spec.{name}: expected a positive integer, got {value!r}")
    if spec.words_per_nonterminal > spec.vocab_size:
        raise ValueError(
            f"spec.words_per_nonterminal: expected at most vocab_size={spec.vocab_size}, "
            f"got {spec.words_per_nonterminal}"
        )
    if not 0 <= spec.emission_prob < 1:
        raise ValueError(
            f"spec.emission_prob: expected a value in [0, 1), got {spec.emission_prob}"
        )
    if not spec.concentration > 0:
        raise ValueError(f"spec.concentration: expected a positive value, got {spec.concentration}")
    sizes = [1] + [spec.nonterminals_per_level] * spec.num_levels + [spec.num_preterminals]
    for depth, (parents, kids) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if 2 * parents * spec.rules_per_nonterminal < kids:
            raise ValueError(
                f"spec.rules_per_nonterminal: {parents} symbols on level {depth} with "
                f"{spec.rules_per_nonterminal} rules each cannot reach all {kids} symbols of the "
                f"next level; expected 2 * {parents} * rules_per_nonterminal >= {kids}"
            )

    rng = np.random.default_rng(spec.seed)
    offsets = np.cumsum([0, *sizes])
    levels = [np.arange(offsets[k], offsets[k + 1]) for k in range(len(sizes))]
    n, r = spec.num_nonterminals, spec.rules_per_nonterminal
    binary = np.zeros((n, n, n))
    emit = np.zeros((n, spec.vocab_size))

    def emit_words(symbol: int, total: float) -> None:
        words = rng.choice(spec.vocab_size, size=spec.words_per_nonterminal, replace=False)
        emit[symbol, words] = total * rng.dirichlet(np.full(words.size, spec.concentration))

    for depth, (parents, kids) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        slots = rng.choice(kids, size=2 * parents.size * r)
        slots[rng.choice(slots.size, size=kids.size, replace=False)] = rng.permutation(kids)
        branch_prob = 1.0 if depth == 0 else 1.0 - spec.emission_prob
        weights = branch_prob * rng.dirichlet(np.full(r, spec.concentration), size=parents.size)
        np.add.at(binary, (np.repeat(parents, r), slots[0::2], slots[1::2]), weights.ravel())
        if depth > 0 and spec.emission_prob > 0:
            for symbol in parents:
                emit_words(symbol, spec.emission_prob)
    for symbol in levels[-1]:
        emit_words(symbol, 1.0)
    return make_grammar(binary, emit, start=0)


def length_distribution(grammar: Grammar, max_len: int) -> np.ndarray:
    r"""Probability that the grammar generates a sentence of each length up to ``max_len``.

    The inside algorithm with the words summed out: with ``e_A = sum_w emit[A, w]``,

    .. math::

      a_A(1) = e_A, \qquad
      a_A(\ell) = \sum_{k=1}^{\ell-1} \sum_{B, C} \mathrm{binary}[A, B, C]\, a_B(k)\, a_C(\ell-k).

    Args:
      grammar: the grammar.
      max_len: longest length to report, >= 1.

    Returns:
      ``[max_len + 1]`` float64 array ``p`` with ``p[l] = P(len = l)`` (``p[0] = 0``).
    """
    if not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len: expected a positive integer, got {max_len!r}")
    by_length = np.zeros((max_len + 1, grammar.num_nonterminals))
    by_length[1] = grammar.emit.sum(axis=1)
    for length in range(2, max_len + 1):
        left, right = by_length[1:length], by_length[length - 1 : 0 : -1]
        by_length[length] = np.einsum("abc,kb,kc->a", grammar.binary, left, right)
    return by_length[:, grammar.start]


def _check_length_bounds(grammar: Grammar, min_len: int, max_len: int) -> None:
    """Raises ValueError unless sentences with length in [min_len, max_len] are feasible."""
    for name, value in (("min_len", min_len), ("max_len", max_len)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if min_len > max_len:
        raise ValueError(
            f"min_len, max_len: expected min_len <= max_len, got {min_len} > {max_len}"
        )
    probs = length_distribution(grammar, max_len)
    accept = probs[min_len:].sum()
    if accept < _MIN_ACCEPT_PROBABILITY:
        possible = np.flatnonzero(probs > 0).tolist()
        raise ValueError(
            f"min_len, max_len: sentences with length in [{min_len}, {max_len}] have probability "
            f"{accept:.3g}; expected bounds the grammar can meet (lengths up to {max_len} with "
            f"positive probability: {possible})"
        )


class Sentences(NamedTuple):
    """Sampled sentences with their parse trees.

    Attributes:
      tokens: ``[num, max_len]`` int32 word ids, padded with ``grammar.pad_id``.
      lengths: ``[num]`` int32 sentence lengths.
      constituents: ``[num, max_len + 1, max_len + 1]`` int32; ``constituents[s, i, j]`` is the
        non-terminal of the sampled tree's node spanning words ``i..j-1``, or -1 where no node does.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    constituents: np.ndarray


class _SamplingTable(NamedTuple):
    """Per-symbol cumulative rule probabilities and outcomes for top-down sampling."""

    cumulative: list[list[float]]
    outcomes: list[list[tuple[int, int]]]  # (left, right) child symbols, or (-1, word)


def _sampling_table(grammar: Grammar) -> _SamplingTable:
    n = grammar.num_nonterminals
    cumulative, outcomes = [], []
    for symbol in range(n):
        probs = np.concatenate([grammar.binary[symbol].ravel(), grammar.emit[symbol]])
        support = np.flatnonzero(probs)
        cumulative.append(np.cumsum(probs[support] / probs[support].sum()).tolist())
        outcomes.append([divmod(int(k), n) if k < n * n else (-1, int(k) - n * n) for k in support])
    return _SamplingTable(cumulative, outcomes)


def _derive(
    table: _SamplingTable,
    symbol: int,
    budget: int,
    rng: np.random.Generator,
    words: list[int],
    spans: list[tuple[int, int, int]],
) -> bool:
    """Appends a derivation of ``symbol`` to ``words``; False once it must pass ``budget`` words."""
    first = len(words)
    cumulative = table.cumulative[symbol]
    index = min(bisect.bisect_right(cumulative, rng.random()), len(cumulative) - 1)
    left, right = table.outcomes[symbol][index]
    if left < 0:
        words.append(right)
    else:
        # Every pending symbol yields at least one word, so reserve one for the right child.
        if budget < 2 or not _derive(table, left, budget - 1, rng, words, spans):
            return False
        if not _derive(table, right, budget - (len(words) - first), rng, words, spans):
            return False
    spans.append((first, len(words), symbol))
    return True


def sample_sentences(
    grammar: Grammar, num: int, *, seed: Seed, min_len: int = 4, max_len: int = 16
) -> Sentences:
    """Samples sentences and their parse trees, keeping lengths in ``[min_len, max_len]``.

    Derivations are drawn top-down from the start symbol and rejected when their length falls
    outside the bounds (a derivation is abandoned as soon as it must exceed ``max_len``), so the
    sentences follow ``p(w | min_len <= |w| <= max_len)``.

    Args:
      grammar: the grammar.
      num: number of sentences, >= 0.
      seed: anything ``np.random.default_rng`` accepts; the same seed gives the same sentences.
      min_len: shortest admissible length.
      max_len: longest admissible length; also the padded width of ``tokens``.

    Returns:
      :class:`Sentences`.

    Raises:
      ValueError: if ``num`` is negative, or no sentence (or only a fraction below 1e-6 of them)
        has a length in ``[min_len, max_len]``.
    """
    if not isinstance(num, int | np.integer) or num < 0:
        raise ValueError(f"num: expected a non-negative integer, got {num!r}")
    _check_length_bounds(grammar, min_len, max_len)
    table = _sampling_table(grammar)
    rng = np.random.default_rng(seed)
    tokens = np.full((num, max_len), grammar.pad_id, dtype=np.int32)
    lengths = np.zeros(num, dtype=np.int32)
    constituents = np.full((num, max_len + 1, max_len + 1), -1, dtype=np.int32)
    count = 0
    while count < num:
        words: list[int] = []
        spans: list[tuple[int, int, int]] = []
        if not _derive(table, grammar.start, max_len, rng, words, spans) or len(words) < min_len:
            continue
        tokens[count, : len(words)] = words
        lengths[count] = len(words)
        first, last, label = np.array(spans).T
        constituents[count, first, last] = label
        count += 1
    return Sentences(tokens, lengths, constituents)
