r"""The inside-outside algorithm on a PCFG and the exact quantities it gives.

* :func:`inside` / :func:`outside` -- the inside-outside algorithm (Lari & Young, 1990),
  vectorised over a padded batch and over the sparse rule list; every chart cell is kept as a
  mantissa and a log-scale, so long sentences do not underflow.
* :func:`sentence_log_prob` -- ``log p(w)`` of each sentence.
* :func:`conditionals` -- the true masked-word distribution ``p(w_i = v | visible words)`` for
  every position at once (the Bayes-optimal masked-LM prediction, see
  :mod:`experiments.language.loss_gap`); :func:`masked_conditionals` at one masked position per
  sentence.
* :func:`span_posteriors` and :func:`left_child_scores` -- posteriors of the parse (the latter
  up to a factor per sentence), from which :mod:`experiments.language.span_tasks` decodes task
  labels.

References:
  K. Lari and S. J. Young, "The estimation of stochastic context-free grammars using the
  Inside-Outside algorithm", Computer Speech & Language 4(1), 1990.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from experiments.language.grammar import Grammar

# Sentences per inside-outside call: bounds the [chunk, T+1, T+1, N] charts to tens of megabytes.
_CHUNK = 256


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
    of the single-position masking scheme (see :mod:`experiments.language.loss_gap`). With a
    visibility mask, the words at hidden positions other than ``i`` are marginalised out, which
    gives the exact optimum of masking several positions at once.

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


def left_child_scores(grammar: Grammar, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    r"""Joint probability of each sentence and each non-terminal as the root's left child.

    .. math::

      s(A) \propto \sum_{0<k<n} \sum_C \mathrm{binary}[S, A, C]\,eta(0, k, A)\,eta(k, n, C)
        = p(w, 	ext{the root's left child is } A),

    summed over the unknown split point ``k`` on the chart's common scale: each sentence's row is
    the joint divided by a positive factor of that sentence, so a row's argmax and ratios are those
    of the posterior ``p(left child = A | w)``, while long sentences do not underflow.

    Args:
      grammar: the grammar.
      tokens: ``[B, T]`` word ids.
      lengths: ``[B]`` sentence lengths, >= 2.

    Returns:
      ``[B, N]`` float64, non-negative; zero rows for sentences the grammar cannot generate.
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
        return (per_split * weights[..., None]).sum(axis=1)

    return _in_chunks(chunk, tokens, lengths, visible)
