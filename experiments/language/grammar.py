r"""Random probabilistic context-free grammars with exact masked-LM optima and span tasks.

The language setting of Liu et al. (2023) pretrains masked language models on sentences drawn
from a known PCFG, so the best achievable masked-LM loss is known exactly, and builds downstream
tasks from the grammar's parses. This module holds the grammar, the sampler and every exact
quantity:

* :class:`Grammar` -- a PCFG in Chomsky normal form as two dense arrays,
  ``binary[A, B, C] = P(A -> B C)`` and ``emit[A, w] = P(A -> w)``; :func:`make_grammar`
  validates user arrays, :func:`random_grammar` draws a seeded layered grammar from a
  :class:`GrammarSpec`.
* :func:`sample_sentences` -- seeded sentences with the labelled spans of their parse trees,
  restricted to lengths in ``[min_len, max_len]`` by rejection.
* :func:`inside` / :func:`outside` -- the inside-outside algorithm (Lari & Young, 1990),
  vectorised over a padded batch and over the sparse rule list; every chart cell is kept as a
  mantissa and a log-scale, so long sentences do not underflow.
* :func:`conditionals` -- the true masked-word distribution ``p(w_i = v | visible words)`` for
  every position at once, and from it :func:`optimal_masked_lm_loss` (the minimal pretraining
  loss) and :func:`masked_lm_gap` (a model's KL gap to it).
* :func:`span_labels`, :func:`left_child_labels`, :func:`downstream_task` -- span classification
  tasks labelled by posterior (max-marginal) decoding.

Masking scheme (the one the masked-LM pretraining uses): for a sentence ``w`` of length ``n``,
exactly one position ``i`` is drawn uniformly from ``{0, ..., n-1}`` and replaced by the mask
token; every other word stays visible. The Bayes-optimal prediction is ``p(w_i | w_{-i})``, so the
minimal loss is

.. math::

  L^\star = \mathbb{E}_{w}\Big[\frac{1}{n}\sum_{i=0}^{n-1} H\big(p(\cdot \mid w_{-i})\big)\Big],

estimated on a fixed evaluation set by averaging over sentences, with the inner average over
positions computed exactly (every position masked in turn). :func:`conditionals` also accepts any
other visibility pattern (e.g. 15% of positions masked at once): masked positions are then
marginalised out exactly.

Token ids: words are ``0 .. V-1``; ``Grammar.pad_id = V`` pads sentences and
``Grammar.mask_id = V + 1`` is reserved for the model's mask token, so a model embeds
``Grammar.model_vocab_size = V + 2`` ids.

Example::

  grammar = random_grammar(GrammarSpec(seed=0))  # 31 non-terminals, 100 words
  sentences = sample_sentences(grammar, 1000, seed=1)  # lengths 4..16
  truth = conditionals(grammar, sentences.tokens, sentences.lengths)  # [1000, 16, 100]
  optimal_masked_lm_loss(truth, sentences.lengths).value  # about 2.35 nats

References:
  K. Lari and S. J. Young, "The estimation of stochastic context-free grammars using the
  Inside-Outside algorithm", Computer Speech & Language 4(1), 1990.
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

_ROW_SUM_TOLERANCE = 1e-6
# Below this probability of an admissible length, rejection sampling would not finish in practice.
_MIN_ACCEPT_PROBABILITY = 1e-6
# Sentences per inside-outside call: bounds the [chunk, T+1, T+1, N] charts to tens of megabytes.
_CHUNK = 256

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


class _Rules(NamedTuple):
    """Binary rules as a sparse list, grouped by the index that a contraction outputs."""

    prob: np.ndarray  # [R]
    x: np.ndarray  # [R] index into the first operand
    y: np.ndarray  # [R] index into the second operand
    segments: np.ndarray  # start of each output's group of rules
    outputs: np.ndarray  # output index of each group


def _rules(output: np.ndarray, x: np.ndarray, y: np.ndarray, prob: np.ndarray) -> _Rules:
    order = np.argsort(output, kind="stable")
    outputs, segments = np.unique(output[order], return_index=True)
    return _Rules(prob[order], x[order], y[order], segments, outputs)


class _RuleRoles(NamedTuple):
    """The rule list arranged for the three contractions of inside-outside."""

    parent: _Rules  # parent A from children (B, C)
    left_child: _Rules  # left child B from (parent A, right sibling C)
    right_child: _Rules  # right child C from (parent A, left sibling B)


def _rule_roles(grammar: Grammar) -> _RuleRoles:
    a, b, c = np.nonzero(grammar.binary)
    prob = grammar.binary[a, b, c]
    return _RuleRoles(_rules(a, b, c, prob), _rules(b, a, c, prob), _rules(c, a, b, prob))


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(values)


class _Chart(NamedTuple):
    """Non-negative chart cells stored as ``mantissa * exp(log_scale)``.

    Each cell's largest mantissa entry is 1, or the cell is zero with ``log_scale = -inf``, so
    products of many small probabilities never underflow, while the contractions stay in linear
    space (transcendental functions are evaluated once per cell, not once per entry).
    """

    mantissa: np.ndarray  # [B, T + 1, T + 1, N]
    log_scale: np.ndarray  # [B, T + 1, T + 1]

    def log(self) -> np.ndarray:
        return _log(self.mantissa) + self.log_scale[..., None]


def _from_log(log_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits log values into (mantissa, log_scale) along the last axis."""
    top = np.max(log_values, axis=-1)
    scale = np.where(np.isfinite(top), top, 0.0)
    mantissa = np.exp(log_values - scale[..., None])
    return mantissa, np.where(np.isfinite(top), top, -np.inf)


def _normalized(mantissa: np.ndarray, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescales cells so their largest mantissa entry is 1."""
    top = mantissa.max(axis=-1)
    positive = top > 0
    top = np.where(positive, top, 1.0)
    return mantissa / top[..., None], np.where(positive, log_scale + np.log(top), -np.inf)


def _accumulate(
    mantissa: np.ndarray, log_scale: np.ndarray, more: np.ndarray, more_log_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Adds two scaled cells on the larger of their scales."""
    common = np.maximum(log_scale, more_log_scale)
    common = np.where(np.isfinite(common), common, 0.0)
    total = mantissa * np.exp(log_scale - common)[..., None]
    return total + more * np.exp(more_log_scale - common)[..., None], common


def _contract(rules: _Rules, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """``sum_r [out_r = a] prob_r x[..., x_r] y[..., y_r]`` for every ``a < size``."""
    total = np.zeros(x.shape[:-1] + (size,))
    if rules.prob.size:
        terms = np.take(x, rules.x, axis=-1)
        terms *= np.take(y, rules.y, axis=-1)
        terms *= rules.prob
        total[..., rules.outputs] = np.add.reduceat(terms, rules.segments, axis=-1)
    return total


def _check_batch(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates a padded batch; returns (tokens, lengths, visible) as numpy arrays."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens: expected a [batch, max_len] integer array, got {tokens.dtype} {tokens.shape}"
        )
    batch, width = tokens.shape
    if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths: expected a [{batch}] integer array, got {lengths.shape}")
    if np.any((lengths < 1) | (lengths > width)):
        raise ValueError(f"lengths: expected values in [1, {width}], got {lengths.tolist()}")
    if visible is None:
        visible = np.ones(tokens.shape, dtype=bool)
    visible = np.asarray(visible)
    if visible.shape != tokens.shape or visible.dtype != bool:
        raise ValueError(f"visible: expected a boolean array of shape {tokens.shape}")
    # Hidden positions may hold any id, e.g. the mask token.
    checked = visible & (np.arange(width) < lengths[:, None])
    bad = checked & ((tokens < 0) | (tokens >= grammar.vocab_size))
    if bad.any():
        where = tuple(int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"tokens: expected word ids in [0, {grammar.vocab_size}) at visible positions within "
            f"each sentence's length, got {int(tokens[where])} at {where}"
        )
    return tokens, lengths, visible


def _cells(chart: _Chart, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mantissas and log-scales of the cells spanning ``(first, last)``, for every sentence."""
    return chart.mantissa[:, first, last], chart.log_scale[:, first, last]


def _inside_chart(
    grammar: Grammar,
    roles: _RuleRoles,
    tokens: np.ndarray,
    lengths: np.ndarray,
    visible: np.ndarray,
) -> _Chart:
    batch, width = tokens.shape
    n = grammar.num_nonterminals
    # Hidden positions and padding take every word: their likelihood is sum_w emit[A, w].
    known = grammar.emit.T[np.clip(tokens, 0, grammar.vocab_size - 1)]
    shown = visible & (np.arange(width) < lengths[:, None])
    leaves = np.where(shown[..., None], known, grammar.emit.sum(axis=1))
    chart = _Chart(
        np.zeros((batch, width + 1, width + 1, n)), np.full((batch, width + 1, width + 1), -np.inf)
    )
    positions = np.arange(width)
    chart.mantissa[:, positions, positions + 1], chart.log_scale[:, positions, positions + 1] = (
        _normalized(leaves, np.zeros((batch, width)))
    )
    for span in range(2, width + 1):
        first = np.arange(width - span + 1)
        total, total_scale = np.zeros((batch, first.size, n)), np.full((batch, first.size), -np.inf)
        for split in range(1, span):
            left, left_scale = _cells(chart, first, first + split)
            right, right_scale = _cells(chart, first + split, first + span)
            total, total_scale = _accumulate(
                total,
                total_scale,
                _contract(roles.parent, left, right, n),
                left_scale + right_scale,
            )
        chart.mantissa[:, first, first + span], chart.log_scale[:, first, first + span] = (
            _normalized(total, total_scale)
        )
    return chart


def _outside_chart(
    grammar: Grammar, roles: _RuleRoles, inside_chart: _Chart, lengths: np.ndarray
) -> _Chart:
    batch, width = inside_chart.log_scale.shape[0], inside_chart.log_scale.shape[1] - 1
    n = grammar.num_nonterminals
    chart = _Chart(
        np.zeros_like(inside_chart.mantissa), np.full_like(inside_chart.log_scale, -np.inf)
    )
    chart.mantissa[np.arange(batch), 0, lengths, grammar.start] = 1.0
    chart.log_scale[np.arange(batch), 0, lengths] = 0.0
    for span in range(width, 0, -1):
        first = np.arange(width - span + 1)
        total, total_scale = _cells(chart, first, first + span)
        for sibling in range(1, width - span + 1):
            as_left = first[first + span + sibling <= width]
            as_right = first[first >= sibling]
            for rules, i, parent, other in (
                # Left child (i, i+span): parent (i, i+span+sibling), right sibling after it.
                (
                    roles.left_child,
                    as_left,
                    (as_left, as_left + span + sibling),
                    (as_left + span, as_left + span + sibling),
                ),
                # Right child (i, i+span): parent (i-sibling, i+span), left sibling before it.
                (
                    roles.right_child,
                    as_right,
                    (as_right - sibling, as_right + span),
                    (as_right - sibling, as_right),
                ),
            ):
                # Parents are wider than their children, so their outside cells are final.
                parent_cells, parent_scale = _cells(chart, *parent)
                other_cells, other_scale = _cells(inside_chart, *other)
                total[:, i], total_scale[:, i] = _accumulate(
                    total[:, i],
                    total_scale[:, i],
                    _contract(rules, parent_cells, other_cells, n),
                    parent_scale + other_scale,
                )
        chart.mantissa[:, first, first + span], chart.log_scale[:, first, first + span] = (
            _normalized(total, total_scale)
        )
    return chart


def inside(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray | None = None
) -> np.ndarray:
    r"""Log inside chart of a padded batch (Lari & Young, 1990).

    .. math::

      \beta(i, i+1, A) = \mathrm{emit}[A, w_i], \qquad
      \beta(i, j, A) = \sum_{i<k<j} \sum_{B,C} \mathrm{binary}[A,B,C]\,\beta(i,k,B)\,\beta(k,j,C),

    so ``beta(0, n, start) = p(w)``. Positions that are not visible (and padding) sum over all
    words, i.e. they are marginalised out. Each chart cell is kept as a mantissa with a log-scale,
    so nothing underflows however long the sentence.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids, padded past each length with anything.
      lengths: ``[B]`` sentence lengths in ``[1, T]``.
      visible: optional ``[B, T]`` booleans; False marks positions whose word is unknown.

    Returns:
      ``[B, T + 1, T + 1, N]`` array of ``log beta(i, j, A)``; entries with ``j <= i`` are -inf.
    """
    tokens, lengths, visible = _check_batch(grammar, tokens, lengths, visible)
    return _inside_chart(grammar, _rule_roles(grammar), tokens, lengths, visible).log()


def outside(grammar: Grammar, log_inside: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    r"""Log outside chart from an inside chart (Lari & Young, 1990).

    ``alpha(0, n, start) = 1`` and, summing over the parents of span ``(i, j)``,

    .. math::

      \alpha(i, j, B) = \sum_{k>j} \sum_{A,C} \alpha(i,k,A)\,\mathrm{binary}[A,B,C]\,\beta(j,k,C)
        + \sum_{k<i} \sum_{A,C} \alpha(k,j,A)\,\mathrm{binary}[A,C,B]\,\beta(k,i,C),

    so ``alpha(i, j, A) beta(i, j, A) = p(w, A spans (i, j))``.

    Args:
      grammar: the grammar.
      log_inside: ``[B, T + 1, T + 1, N]`` chart from :func:`inside`.
      lengths: ``[B]`` sentence lengths.

    Returns:
      ``[B, T + 1, T + 1, N]`` array of ``log alpha(i, j, A)``; -inf outside each sentence.
    """
    log_inside, lengths = np.asarray(log_inside), np.asarray(lengths)
    batch, rows = log_inside.shape[:2]
    if log_inside.shape != (batch, rows, rows, grammar.num_nonterminals):
        raise ValueError(
            f"log_inside: expected shape [batch, T + 1, T + 1, {grammar.num_nonterminals}], "
            f"got {log_inside.shape}"
        )
    if lengths.shape != (batch,) or np.any((lengths < 1) | (lengths >= rows)):
        raise ValueError(f"lengths: expected [{batch}] values in [1, {rows - 1}]")
    inside_chart = _Chart(*_from_log(log_inside))
    return _outside_chart(grammar, _rule_roles(grammar), inside_chart, lengths).log()


def _in_chunks(function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """Applies ``function`` to consecutive chunks of the leading axis and concatenates."""
    size = arrays[0].shape[0]
    parts = [
        function(*(array[first : first + _CHUNK] for array in arrays))
        for first in range(0, max(size, 1), _CHUNK)
    ]
    return np.concatenate(parts, axis=0)


def _root_log_prob(grammar: Grammar, inside_chart: _Chart, lengths: np.ndarray) -> np.ndarray:
    """``log beta(0, n, start)`` of each sentence."""
    rows = np.arange(lengths.size)
    root = inside_chart.mantissa[rows, 0, lengths, grammar.start]
    return _log(root) + inside_chart.log_scale[rows, 0, lengths]


def sentence_log_prob(grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Log-probability ``log p(w)`` of each sentence of a padded batch.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths.

    Returns:
      ``[B]`` float64 array (``-inf`` for sentences the grammar cannot generate).
    """
    tokens, lengths, visible = _check_batch(grammar, tokens, lengths)
    roles = _rule_roles(grammar)

    def chunk(tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray) -> np.ndarray:
        chart = _inside_chart(grammar, roles, tokens, lengths, visible)
        return _root_log_prob(grammar, chart, lengths)

    return _in_chunks(chunk, tokens, lengths, visible)


def conditionals(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray | None = None
) -> np.ndarray:
    r"""True distribution of the word at every position given the other visible words.

    The outside score of the one-word span ``(i, i+1)`` does not depend on ``w_i``, so one
    inside-outside pass gives every position at once:

    .. math::

      p(w_i = v \mid w_{\mathrm{visible} \setminus i}) \propto
        \sum_A \alpha(i, i+1, A)\, \mathrm{emit}[A, v].

    With ``visible=None`` this is ``p(w_i | w_{-i})`` for each ``i``: the Bayes-optimal prediction
    of the single-position masking scheme (see the module docstring). With a visibility mask, the
    words at hidden positions other than ``i`` are marginalised out, which gives the exact optimum
    of masking several positions at once.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids, padded past each length with anything.
      lengths: ``[B]`` sentence lengths in ``[1, T]``.
      visible: optional ``[B, T]`` booleans; False marks masked positions.

    Returns:
      ``[B, T, V]`` float64 probabilities; rows past each sentence's length are zero.

    Raises:
      ValueError: if the visible words around a position have probability zero under the grammar.
    """
    tokens, lengths, visible = _check_batch(grammar, tokens, lengths, visible)
    roles = _rule_roles(grammar)
    emit = grammar.emit

    def chunk(tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray) -> np.ndarray:
        inside_chart = _inside_chart(grammar, roles, tokens, lengths, visible)
        outside_chart = _outside_chart(grammar, roles, inside_chart, lengths)
        positions = np.arange(tokens.shape[1])
        # Scales are per cell, so they cancel in the normalisation over words.
        joint = outside_chart.mantissa[:, positions, positions + 1] @ emit
        total = joint.sum(axis=-1, keepdims=True)
        return np.divide(joint, total, out=np.zeros_like(joint), where=total > 0)

    probs = _in_chunks(chunk, tokens, lengths, visible)
    # A row sums to zero exactly when no word completes the other visible words.
    in_sentence = np.arange(tokens.shape[1]) < lengths[:, None]
    impossible = np.flatnonzero(np.any(in_sentence & (probs.sum(axis=-1) == 0), axis=1))
    if impossible.size:
        raise ValueError(
            "tokens: the visible words around some position of sentences "
            f"{impossible.tolist()} have probability zero under the grammar; expected sentences "
            "the grammar can generate"
        )
    return probs


def masked_conditionals(
    grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """True distribution of the one masked word of each sentence, ``p(w_i = v | w_{-i})``.

    The single-position masking scheme's Bayes-optimal prediction (see :func:`conditionals`).

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids; the id at each masked position is ignored (it may be the mask
        token).
      lengths: ``[B]`` sentence lengths.
      positions: ``[B]`` masked position of each sentence, in ``[0, length)``.

    Returns:
      ``[B, V]`` float64 probabilities.
    """
    tokens, lengths, positions = np.asarray(tokens), np.asarray(lengths), np.asarray(positions)
    if (
        positions.shape != lengths.shape
        or positions.ndim != 1
        or np.any((positions < 0) | (positions >= lengths))
    ):
        raise ValueError(
            f"positions: expected [{lengths.size}] integers with 0 <= position < length, got "
            f"{positions.tolist()}"
        )
    visible = np.arange(tokens.shape[-1]) != positions[:, None]
    return conditionals(grammar, tokens, lengths, visible)[np.arange(lengths.size), positions]


class LossEstimate(NamedTuple):
    """A mean over evaluation sentences and its standard error.

    Attributes:
      value: the mean, in nats.
      stderr: standard error of the mean over sentences.
    """

    value: float
    stderr: float


def _sentence_mean(per_position: np.ndarray, lengths: np.ndarray) -> LossEstimate:
    """Averages ``[B, T]`` values over each sentence's positions, then over sentences."""
    inside_sentence = np.arange(per_position.shape[1]) < lengths[:, None]
    per_sentence = np.where(inside_sentence, per_position, 0.0).sum(axis=1) / lengths
    stderr = per_sentence.std(ddof=1) / np.sqrt(per_sentence.size) if per_sentence.size > 1 else 0.0
    return LossEstimate(float(per_sentence.mean()), float(stderr))


def _check_conditionals(true_conditionals: np.ndarray, lengths: np.ndarray) -> tuple:
    true_conditionals, lengths = np.asarray(true_conditionals), np.asarray(lengths)
    if true_conditionals.ndim != 3 or lengths.shape != true_conditionals.shape[:1]:
        raise ValueError(
            "true_conditionals, lengths: expected [B, T, V] probabilities from conditionals() and "
            f"[B] lengths, got {true_conditionals.shape} and {lengths.shape}"
        )
    if np.any((lengths < 1) | (lengths > true_conditionals.shape[1])):
        raise ValueError(f"lengths: expected values in [1, {true_conditionals.shape[1]}]")
    return true_conditionals, lengths


def optimal_masked_lm_loss(true_conditionals: np.ndarray, lengths: np.ndarray) -> LossEstimate:
    """Bayes-optimal masked-LM loss of the single-position masking scheme (the minimal loss).

    Cross-entropy of the true conditional with itself, i.e. its entropy, averaged over each
    sentence's positions and then over sentences (see the module docstring). Using the entropy
    rather than ``-log p(w_i | w_{-i})`` of the observed word gives the same expectation with less
    variance.

    Args:
      true_conditionals: ``[B, T, V]`` from :func:`conditionals` with ``visible=None``.
      lengths: ``[B]`` sentence lengths.

    Returns:
      :class:`LossEstimate` in nats.
    """
    probs, lengths = _check_conditionals(true_conditionals, lengths)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=-1)
    return _sentence_mean(entropy, lengths)


def masked_lm_gap(
    true_conditionals: np.ndarray, model_log_probs: np.ndarray, lengths: np.ndarray
) -> LossEstimate:
    r"""A model's masked-LM loss minus the optimum, as the exact KL to the true conditionals.

    .. math::

      \mathrm{gap} = \mathbb{E}_w \frac{1}{n} \sum_i
        \mathrm{KL}\big(p(\cdot \mid w_{-i}) \,\|\, q(\cdot \mid w_{-i})\big),

    whose expectation equals the model's expected single-position masked-LM loss minus
    :func:`optimal_masked_lm_loss`.

    Args:
      true_conditionals: ``[B, T, V]`` from :func:`conditionals`.
      model_log_probs: ``[B, T, V']`` model log-probabilities at each position when that position
        is masked, ``V' >= V``; ids past ``V`` (padding, mask) count as wrong predictions.
      lengths: ``[B]`` sentence lengths.

    Returns:
      :class:`LossEstimate` in nats (>= 0 up to rounding).
    """
    probs, lengths = _check_conditionals(true_conditionals, lengths)
    log_q = np.asarray(model_log_probs, dtype=np.float64)
    if log_q.shape[:2] != probs.shape[:2] or log_q.ndim != 3 or log_q.shape[2] < probs.shape[2]:
        raise ValueError(
            f"model_log_probs: expected shape [{probs.shape[0]}, {probs.shape[1]}, >= "
            f"{probs.shape[2]}], got {log_q.shape}"
        )
    log_q = log_q[..., : probs.shape[2]]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(probs > 0, probs * (np.log(probs) - log_q), 0.0).sum(axis=-1)
    return _sentence_mean(kl, lengths)


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


def span_posteriors(grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    r"""Posterior probability that each non-terminal spans each span.

    .. math::

      \mu(i, j, A) = p(A \text{ spans } (i, j) \mid w) = \alpha(i,j,A)\,\beta(i,j,A) / p(w).

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths.

    Returns:
      ``[B, T + 1, T + 1, N]`` float64; zero for spans outside a sentence.
    """
    tokens, lengths, visible = _check_batch(grammar, tokens, lengths)
    roles = _rule_roles(grammar)

    def chunk(tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray) -> np.ndarray:
        inside_chart = _inside_chart(grammar, roles, tokens, lengths, visible)
        outside_chart = _outside_chart(grammar, roles, inside_chart, lengths)
        log_z = _root_log_prob(grammar, inside_chart, lengths)
        log_scale = inside_chart.log_scale + outside_chart.log_scale - log_z[:, None, None]
        with np.errstate(invalid="ignore"):
            scale = np.nan_to_num(np.exp(log_scale), nan=0.0)
        return inside_chart.mantissa * outside_chart.mantissa * scale[..., None]

    return _in_chunks(chunk, tokens, lengths, visible)


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

    Where the split point ``k`` is unknown, this needs a global parse of the sentence.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths, >= 2.

    Returns:
      ``[B]`` int32 labels in ``[0, N)``.
    """
    tokens, lengths, visible = _check_batch(grammar, tokens, lengths)
    if np.any(lengths < 2):
        raise ValueError("lengths: the root has children only in sentences of length >= 2")
    roles = _rule_roles(grammar)
    start_rules = grammar.binary[grammar.start]  # [A, C]

    def chunk(tokens: np.ndarray, lengths: np.ndarray, visible: np.ndarray) -> np.ndarray:
        chart = _inside_chart(grammar, roles, tokens, lengths, visible)
        splits = np.arange(1, tokens.shape[1])
        left, left_scale = _cells(chart, 0, splits)  # [B, K, N], [B, K]
        right = chart.mantissa[np.arange(lengths.size)[:, None], splits, lengths[:, None]]
        right_scale = chart.log_scale[np.arange(lengths.size)[:, None], splits, lengths[:, None]]
        scale = np.where(splits < lengths[:, None], left_scale + right_scale, -np.inf)
        # p(w, root -> A C with A spanning (0, k)), summed over k on a common scale.
        per_split = left * (right @ start_rules.T)
        top = np.max(scale, axis=1, keepdims=True)
        weights = np.exp(scale - np.where(np.isfinite(top), top, 0.0))
        return np.argmax((per_split * weights[..., None]).sum(axis=1), axis=1).astype(np.int32)

    return _in_chunks(chunk, tokens, lengths, visible)


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
