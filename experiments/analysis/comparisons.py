"""Paired differences across seeds: the seed is the unit.

Two designs give one difference per seed:

* **two configurations** (:func:`configuration_pairs`): rows of ``axis = levels[0]`` and of
  ``axis = levels[1]`` matched on everything else (the seed, the step, the other configuration
  columns), e.g. width 16 vs 32 at the same objective, seed and step; or at the same held-out
  loss, where the second side can be a :class:`Blend` of two of its checkpoints;
* **two checkpoints of a run** (:func:`checkpoint_pairs`): the first and last checkpoints on the
  loss plateau (``on_plateau``), or of the run when the column is absent, or two declared steps.

When a seed has several matched pairs (say both objectives in a width comparison), its difference
is their mean, so that every seed counts once: configurations that share a seed share its data
order and initialisation and are not independent units. :func:`seed_differences` then gives the
mean over seeds, a bootstrap interval over seeds and exact sign and signed-rank p-values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from experiments.analysis.inference import (
    Bootstrap,
    mean_interval,
    sign_test,
    wilcoxon_signed_rank,
)
from experiments.analysis.results import (
    CONFIGURATION_COLUMNS,
    PLATEAU_COLUMN,
    RUN_COLUMNS,
    SIZE_COLUMNS,
    ResultsTable,
    plateau_known,
)


@dataclasses.dataclass(frozen=True)
class Blend:
    """A point between two checkpoints of one run: ``(1 - weight) * low + weight * high`` of every
    column, with ``0 <= weight <= 1`` (a straight line in the held-out gap, `INTERPOLATED_LOSS`)."""

    low: int
    high: int
    weight: float


Side = int | Blend  # A row of results.csv, or a blend of two rows of one run.
# seed -> the (first, second) pairs of that seed; a difference is second minus first.
Pairs = dict[str, list[tuple[Side, Side]]]


def rows_of(side: Side) -> tuple[int, ...]:
    """The results.csv rows a side reads."""
    return (side.low, side.high) if isinstance(side, Blend) else (side,)


def value_of(values: np.ndarray, side: Side) -> float:
    """A column's value at a side (a blend's weighted mean of its two rows)."""
    if isinstance(side, Blend):
        return float((1 - side.weight) * values[side.low] + side.weight * values[side.high])
    return float(values[side])


def matches(table: ResultsTable, column: str, value: object) -> np.ndarray:
    """Rows whose cell equals ``value``: as text, or as numbers (``16`` matches ``"16.0"``)."""
    cells = table.text(column)
    wanted = str(value)
    try:
        number = float(wanted)
    except ValueError:
        return cells == wanted
    numeric = np.array([_float_or_nan(c) for c in cells])
    return (cells == wanted) | (numeric == number)


def _float_or_nan(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def select(table: ResultsTable, where: Mapping[str, object]) -> np.ndarray:
    """Rows whose cells match ``where``: column -> a value or a tuple/list of accepted values."""
    mask = np.ones(table.num_rows, dtype=bool)
    for column, accepted in where.items():
        values = accepted if isinstance(accepted, (tuple, list)) else (accepted,)
        mask &= np.logical_or.reduce([matches(table, column, v) for v in values])
    return mask


def matching_columns(axis: str) -> tuple[str, ...]:
    """The columns on which a comparison along ``axis`` matches its two sides (seed and step
    included); a size axis drops the columns that follow from it (model label, parameter count)."""
    varied = {axis}
    if axis in SIZE_COLUMNS:
        varied |= {"model", "num_params"} | ({"width", "depth"} if axis == "model" else set())
    return (*[c for c in CONFIGURATION_COLUMNS if c not in varied], "seed")


MATCHED_LOSS = "matched_loss"  # A paired test's `step`: compare at the same held-out loss.
INTERPOLATED_LOSS = "interpolated_loss"  # The same, reading the second side off a line in the gap.


def _matched_loss_pair(
    table: ResultsTable, first: Mapping[float, int], second: Mapping[float, int]
) -> tuple[int, int] | None:
    """The first side's first plateau checkpoint and the second side's nearest-gap checkpoint,
    when their gaps differ by at most the first gap's standard error (else None)."""
    if not (plateau_known(table) and table.is_numeric("pretrain_loss_gap")):
        return None
    plateau = table.flags(PLATEAU_COLUMN) == 1
    on = [row for step, row in sorted(first.items()) if plateau[row]]
    gap = table.values("pretrain_loss_gap")
    stderr = table.values("pretrain_loss_gap_stderr") if "pretrain_loss_gap_stderr" in table.columns else None
    candidates = [row for row in second.values() if np.isfinite(gap[row])]
    if not on or not candidates or stderr is None or not np.isfinite(stderr[on[0]]):
        return None
    reference = on[0]
    nearest = min(candidates, key=lambda row: abs(gap[row] - gap[reference]))
    return (reference, nearest) if abs(gap[nearest] - gap[reference]) <= stderr[reference] else None


def _interpolated_loss_pair(
    table: ResultsTable, first: Mapping[float, int], second: Mapping[float, int]
) -> tuple[int, Side] | None:
    """The first side's last checkpoint (on the loss plateau, where results.csv says which are),
    and the point of the second side's run at the same held-out gap on the straight line between
    two of its consecutive checkpoints whose gaps bracket it (the latest such pair); a checkpoint at
    exactly that gap is used alone. None when the reference is off the plateau or no pair of
    consecutive checkpoints with finite gaps brackets it (nothing is extrapolated)."""
    if not table.is_numeric("pretrain_loss_gap"):
        return None
    gap = table.values("pretrain_loss_gap")
    reference = first[max(first)]
    target = gap[reference]
    if not np.isfinite(target):
        return None
    if plateau_known(table) and table.flags(PLATEAU_COLUMN)[reference] != 1:
        return None
    ordered = [row for _, row in sorted(second.items())]
    for low, high in reversed(list(itertools.pairwise(ordered))):
        if not (np.isfinite(gap[low]) and np.isfinite(gap[high])):
            continue
        if min(gap[low], gap[high]) <= target <= max(gap[low], gap[high]):
            if gap[high] == target:
                return reference, high
            if gap[low] == target:
                return reference, low
            return reference, Blend(low, high, float((target - gap[low]) / (gap[high] - gap[low])))
    return None


def configuration_pairs(
    table: ResultsTable,
    axis: str,
    levels: Sequence[object],
    where: Mapping[str, object],
    step: int | str = "last",
) -> Pairs:
    """Matches the rows of two levels of ``axis`` at the same seed, step and other columns.

    Args:
        table: the results.
        axis: the column that differs, e.g. ``"width"`` or ``"objective"``.
        levels: ``(first, second)``; differences are ``second - first``.
        where: restricts the rows (see :func:`select`).
        step: ``"last"``: the last step both sides of a match have; a step number; or
            ``"matched_loss"``: the first side's first checkpoint on the loss plateau
            (``on_plateau``) and the second side's checkpoint whose held-out gap
            (``pretrain_loss_gap``) is nearest to it, kept only when the two gaps differ by at
            most the first's standard error (``pretrain_loss_gap_stderr``): the paper's comparison
            of algorithms at the same loss. A seed with no such checkpoint gives no pair.
            ``"interpolated_loss"``: the first side's last checkpoint (on the loss plateau, where
            results.csv says) against the second side's run read at the same held-out gap, on
            the straight line between two consecutive checkpoints whose gaps bracket it (a
            :class:`Blend`; the latest such pair where the gap is not monotone). A seed whose
            reference is off the plateau, or whose second run never brackets the gap, gives no
            pair: nothing is extrapolated. The loss difference is then 0 by construction.

    Returns:
        seed -> its pairs (one per match of the other columns).

    Raises:
        ValueError: when a side has two rows for one match and step (results.csv has duplicates).
    """
    keys = list(zip(*(table.text(c) for c in matching_columns(axis)), strict=True))
    steps = table.values("step")
    base = select(table, where)
    sides = []
    for level in levels:
        side: dict[tuple[str, ...], dict[float, int]] = {}
        for row in np.flatnonzero(base & matches(table, axis, level)):
            by_step = side.setdefault(keys[row], {})
            if steps[row] in by_step:
                raise ValueError(f"results.csv has two rows of {keys[row]} at step {steps[row]:g}")
            by_step[steps[row]] = int(row)
        sides.append(side)
    pairs: Pairs = {}
    for key in sorted(set(sides[0]) & set(sides[1])):
        if step in (MATCHED_LOSS, INTERPOLATED_LOSS):
            match = _matched_loss_pair if step == MATCHED_LOSS else _interpolated_loss_pair
            pair = match(table, sides[0][key], sides[1][key])
            if pair is not None:
                pairs.setdefault(key[-1], []).append(pair)
            continue
        common = set(sides[0][key]) & set(sides[1][key])
        chosen = max(common, default=None) if step == "last" else float(step)
        if chosen in common:
            pair = (sides[0][key][chosen], sides[1][key][chosen])
            pairs.setdefault(key[-1], []).append(pair)  # The seed is the key's last cell.
    return pairs


def checkpoint_pairs(
    table: ResultsTable, where: Mapping[str, object], steps: Sequence[int] | None = None
) -> tuple[Pairs, str]:
    """Pairs the first and last checkpoint of every run (continued training).

    Args:
        table: the results.
        where: restricts the runs (see :func:`select`).
        steps: two declared steps; ``None``: the first and last checkpoints on the loss plateau
            when results.csv has ``on_plateau``, else the run's first and last checkpoints.

    Returns:
        ``(pairs, which)``: seed -> one pair per run with two such checkpoints, and which
        checkpoints, in words, for the report (e.g. "the checkpoints on the loss plateau").
    """
    step = table.values("step")
    candidates = select(table, where) & np.isfinite(step)
    if steps is not None:
        candidates &= np.isin(step, np.asarray(steps, dtype=float))
        which = f"steps {steps[0]} and {steps[-1]} of each run, as declared"
    elif plateau_known(table):
        candidates &= table.flags(PLATEAU_COLUMN) == 1
        which = f"the checkpoints on the loss plateau (`{PLATEAU_COLUMN}`) of each run"
    else:
        which = (
            f"all the checkpoints of each run (results.csv has no `{PLATEAU_COLUMN}` column, so "
            "the plateau is not known)"
        )
    pairs: Pairs = {}
    for run in table.groups(RUN_COLUMNS, candidates):
        if len(set(step[run])) >= 2:
            first, last = run[np.argmin(step[run])], run[np.argmax(step[run])]
            pairs.setdefault(table.text("seed")[first], []).append((int(first), int(last)))
    return pairs, which


@dataclasses.dataclass(frozen=True)
class SeedDifferences:
    """Paired differences of one column, one per seed, and what they show.

    Attributes:
        column: the column differenced.
        per_seed: ``(seed, difference)``; a seed's difference is the mean over its pairs.
        estimate: the mean over seeds.
        interval: Student-t interval of the mean over seeds (NaN below 3 seeds).
        sign_p: exact two-sided sign test across seeds.
        wilcoxon_p: exact two-sided Wilcoxon signed-rank test across seeds.
        note: seeds left out and why.
    """

    column: str
    per_seed: tuple[tuple[str, float], ...]
    estimate: float
    interval: tuple[float, float]
    sign_p: float
    wilcoxon_p: float
    note: str = ""

    @property
    def num_seeds(self) -> int:
        """The seeds with a difference: the units."""
        return len(self.per_seed)


def seed_differences(table: ResultsTable, column: str, pairs: Pairs, bootstrap: Bootstrap) -> SeedDifferences:
    """The differences ``second - first`` of ``column`` over ``pairs``, one per seed.

    Args:
        table: the results.
        column: e.g. ``"trace"``.
        pairs: from :func:`configuration_pairs` or :func:`checkpoint_pairs`.
        bootstrap: resamples, level and seed of the interval.

    Returns:
        The :class:`SeedDifferences`; pairs with a missing value are left out (said in ``note``).
    """
    values = table.values(column)
    per_seed, left_out = [], []
    for seed in sorted(pairs, key=_float_or_nan):
        differences = [value_of(values, b) - value_of(values, a) for a, b in pairs[seed]]
        finite = [d for d in differences if math.isfinite(d)]
        if finite:
            per_seed.append((seed, float(np.mean(finite))))
        if len(finite) < len(differences):
            rows = np.array([r for pair in pairs[seed] for side in pair for r in rows_of(side)])
            left_out.append(f"seed {seed}: {table.nan_reason(column, rows[~np.isfinite(values[rows])])}")
    differences = [d for _, d in per_seed]
    estimate = float(np.mean(differences)) if differences else math.nan
    return SeedDifferences(
        column,
        tuple(per_seed),
        estimate,
        mean_interval(differences, bootstrap),
        sign_test(differences),
        wilcoxon_signed_rank(differences),
        f"left out: {'; '.join(left_out)}" if left_out else "",
    )


def comparisons_of(table: ResultsTable) -> list[tuple[str, tuple[str, str], dict[str, str]]]:
    """The configuration comparisons a study's design offers, for the exploratory section.

    Along ``objective`` and along size (``model``): every pair of levels, once for each setting
    of the columns that are held fixed (e.g. width 16 vs 32 under each objective).

    Returns:
        ``(axis, (first, second), where)`` triples.
    """
    result = []
    for axis in ("objective", "model"):
        levels = sorted(set(table.text(axis)) - {""})
        fixed = [c for c in matching_columns(axis) if c not in ("setting", "seed")]
        settings = sorted(set(zip(*(table.text(c) for c in fixed), strict=True)))
        for pair in itertools.combinations(levels, 2):
            result += [(axis, pair, dict(zip(fixed, values, strict=True))) for values in settings]
    return result
