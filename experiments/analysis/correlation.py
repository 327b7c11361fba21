"""Rank correlations of statistics with transfer, with intervals over seeds, never over checkpoints or runs.

Two kinds of association, each resampled over units that are independent of each other:

* **pooled** (:func:`association`): Kendall's tau-b over all rows of the study (every checkpoint of
  every run), optionally *partial* on the pretraining loss. Its interval is a cluster bootstrap:
  whole seeds are drawn with replacement, each bringing every run of that seed with all its
  checkpoints (runs that share a seed share their initialisation and data order, so they are not
  independent). Adding checkpoints to a run (more points of the same trajectory) therefore cannot
  narrow the interval.
  :func:`compare_associations` is the paired version for ``|tau(a)| - |tau(b)|``.
* **within a run** (:func:`within_run`): tau-b over one run's checkpoints, computed per run and
  summarised across seeds (each seed's mean tau is one unit: their mean, a Student-t interval, an
  exact sign test across seeds). A
  run with fewer than 3 usable checkpoints gives no tau: over two rows tau is +-1 by construction.

A draw of runs is a vector of multiplicities; tau-b of the rows repeated that many times is computed
exactly, for all draws at once, as quadratic forms of the pair-sign matrices (``tau_b = S /
sqrt(P_x P_y)``, ``S`` the weighted sum of concordant minus discordant pairs, ``P_x`` the weighted
number of pairs not tied in ``x``), so repeated copies of a row count as tied pairs, as they would
in :func:`scipy.stats.kendalltau`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.analysis.inference import (
    MIN_CLUSTERS,
    Bootstrap,
    mean_interval,
    percentile_interval,
    sign_test,
)
from experiments.analysis.results import RUN_COLUMNS, ResultsTable

# Fewer rows than this give no rank correlation: over two rows Kendall's tau is +-1 by construction.
MIN_ROWS = 3
Interval = tuple[float, float]
UNDEFINED: Interval = (math.nan, math.nan)


def kendall_tau(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Kendall's tau-b of ``x`` and ``y``, for one or many integer row multiplicities.

    Args:
        x: values, shape ``(n,)``.
        y: values, shape ``(n,)``.
        weights: ``(n,)`` or ``(resamples, n)`` row multiplicities (a bootstrap draw); ``None``:
            every row once.

    Returns:
        tau-b, shape ``weights.shape[:-1]``; NaN where ``x`` or ``y`` is constant among the rows
        with a positive weight.

    Raises:
        ValueError: with fewer than :data:`MIN_ROWS` rows.
    """
    if len(x) < MIN_ROWS:
        raise ValueError(f"a rank correlation needs {MIN_ROWS} or more rows; got {len(x)}")
    weights = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=float)
    sign_x = np.sign(x[:, None] - x[None, :])
    sign_y = np.sign(y[:, None] - y[None, :])

    def pairs(matrix: np.ndarray) -> np.ndarray:
        return np.einsum("...i,...i->...", weights @ matrix, weights) / 2

    concordance, untied_x, untied_y = (pairs(sign_x * sign_y), pairs(np.abs(sign_x)), pairs(np.abs(sign_y)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt(untied_x * untied_y)


def partial_tau(tau_xy: np.ndarray, tau_xz: np.ndarray, tau_yz: np.ndarray) -> np.ndarray:
    """Kendall's (1942) partial tau of ``x`` and ``y`` given ``z``, from the three pairwise taus.

    .. math:: \\tau_{xy \\cdot z} = \\frac{\\tau_{xy} - \\tau_{xz}\\tau_{yz}}
              {\\sqrt{(1 - \\tau_{xz}^2)(1 - \\tau_{yz}^2)}}

    NaN where ``z`` orders ``x`` or ``y`` perfectly (nothing is left once ``z`` is known).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tau_xy - tau_xz * tau_yz) / np.sqrt((1 - tau_xz**2) * (1 - tau_yz**2))


def cluster_weights(clusters: np.ndarray, bootstrap: Bootstrap) -> np.ndarray:
    """Row multiplicities of a cluster bootstrap: clusters drawn with replacement, whole.

    Args:
        clusters: the cluster index (0, 1, ...) of each row.
        bootstrap: resamples and seed.

    Returns:
        ``(num_resamples, num_rows)``: how often each row's cluster was drawn.
    """
    count = int(clusters.max()) + 1
    drawn = bootstrap.rng().integers(0, count, size=(bootstrap.num_resamples, count))
    multiplicity = np.stack([np.bincount(row, minlength=count) for row in drawn])
    return multiplicity[:, clusters].astype(float)


@dataclasses.dataclass(frozen=True)
class Association:
    """Pooled rank correlation of one predictor with one transfer score.

    Attributes:
        statistic: the predictor column.
        score: the transfer-score column.
        control: the column partialled out (the loss), or ``None`` for plain tau-b.
        value: tau-b, or the partial tau given ``control``.
        interval: cluster-bootstrap interval over seeds (each draw takes every run of a seed,
            with all its checkpoints); NaN with fewer than 5 seeds (`MIN_CLUSTERS`).
        num_rows: rows used (every needed column finite).
        num_runs: pretraining runs among them.
        note: why the value is NaN, or which rows were left out and why.
        num_units: the resampled units among them (seeds; runs without a ``seed`` column).
    """

    statistic: str
    score: str
    control: str | None
    value: float
    interval: Interval
    num_rows: int
    num_runs: int
    note: str = ""
    num_units: int = 0


def _usable_rows(table: ResultsTable, columns: list[str]) -> tuple[np.ndarray, str]:
    """Rows where every column is finite, and a note on the others (``""`` when none)."""
    finite = {c: np.isfinite(table.values(c)) for c in columns}
    notes = [f"`{c}`: {why}" for c, ok in finite.items() if (why := table.nan_reason(c, ~ok))]
    return np.flatnonzero(np.logical_and.reduce(list(finite.values()))), "; ".join(notes)


def _clusters(table: ResultsTable, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """The resampling unit (0, 1, ...) of each of ``rows``, and how many runs they come from.

    The unit is the seed where results.csv has one: runs that share a seed share their
    initialisation and data order, so only seeds are independent. Without a ``seed`` column each
    run is its own unit.
    """
    key = ("seed",) if "seed" in table.columns else RUN_COLUMNS
    clusters = np.empty(len(rows), dtype=int)
    position = {row: i for i, row in enumerate(rows)}
    for index, group in enumerate(table.groups(key, rows)):
        clusters[[position[row] for row in group]] = index
    return clusters, len(table.groups(RUN_COLUMNS, rows))


def _taus(
    table: ResultsTable,
    rows: np.ndarray,
    statistic: str,
    score: str,
    control: str | None,
    weights: np.ndarray | None,
) -> np.ndarray:
    """tau-b of ``statistic`` and ``score`` on ``rows``, partial on ``control`` when given."""
    x, y = table.values(statistic)[rows], table.values(score)[rows]
    tau_xy = kendall_tau(x, y, weights)
    if control is None:
        return tau_xy
    z = table.values(control)[rows]
    return partial_tau(tau_xy, kendall_tau(x, z, weights), kendall_tau(y, z, weights))


def association(
    table: ResultsTable,
    statistic: str,
    score: str,
    bootstrap: Bootstrap,
    *,
    control: str | None = None,
) -> Association:
    """Pooled (partial) Kendall tau of a predictor and a score, resampling whole runs.

    Args:
        table: the results.
        statistic: predictor column.
        score: transfer-score column.
        bootstrap: resamples, level and seed of the interval.
        control: a column to partial out (the pretraining loss), or ``None``.

    Returns:
        The :class:`Association`; NaN with a note when fewer than 3 rows have every value.
    """
    columns = [statistic, score] + ([control] if control else [])
    rows, dropped = _usable_rows(table, columns)
    note = f"left out: {dropped}" if dropped else ""
    clusters, num_runs = _clusters(table, rows)
    num_units = len(set(clusters))
    if len(rows) < MIN_ROWS:
        why = f"{len(rows)} rows with every value; a rank correlation needs {MIN_ROWS}"
        note = "; ".join(filter(None, [why, note]))
        return Association(
            statistic, score, control, math.nan, UNDEFINED, len(rows), num_runs, note, num_units
        )
    value = float(_taus(table, rows, statistic, score, control, None))
    interval = UNDEFINED
    if num_units >= MIN_CLUSTERS:
        resampled = _taus(table, rows, statistic, score, control, cluster_weights(clusters, bootstrap))
        interval = percentile_interval(resampled, bootstrap.confidence_level)
    else:
        why = f"no interval: a cluster bootstrap needs {MIN_CLUSTERS} or more seeds, has {num_units}"
        note = "; ".join(filter(None, [why, note]))
    return Association(statistic, score, control, value, interval, len(rows), num_runs, note, num_units)


@dataclasses.dataclass(frozen=True)
class AssociationDifference:
    """``|tau(first)| - |tau(second)|`` against one score, on the rows where both are measured.

    Attributes:
        first: the challenger predictor.
        second: the reference predictor (usually ``trace``).
        score: the transfer score.
        control: the column partialled out of both, or ``None``.
        first_value: tau of ``first`` on the shared rows.
        second_value: tau of ``second`` on the shared rows.
        difference: ``|first_value| - |second_value|``.
        interval: its cluster-bootstrap interval at the bootstrap's level (runs drawn once for
            both, so the difference is paired).
        equivalence_interval: the same at level ``1 - 2 (1 - level)`` (90% for 95%): inside
            ``(-margin, +margin)`` it is the two one-sided tests (TOST) of equivalence at
            ``1 - level``.
        num_rows: rows with every value.
        num_runs: runs among them.
        num_units: the resampled units (seeds) among them.
    """

    first: str
    second: str
    score: str
    control: str | None
    first_value: float
    second_value: float
    difference: float
    interval: Interval
    equivalence_interval: Interval
    num_rows: int
    num_runs: int
    num_units: int = 0


def compare_associations(
    table: ResultsTable,
    first: str,
    second: str,
    score: str,
    bootstrap: Bootstrap,
    *,
    control: str | None = None,
) -> AssociationDifference:
    """Which of two predictors is more strongly associated with a score, resampling seeds.

    Args:
        table: the results.
        first: the challenger predictor.
        second: the reference predictor.
        score: the transfer score.
        bootstrap: resamples, level and seed.
        control: a column partialled out of both taus, or ``None``.

    Returns:
        The :class:`AssociationDifference` (NaN when fewer than 3 rows have every value; NaN
        intervals with fewer than 3 runs).
    """
    columns = [first, second, score] + ([control] if control else [])
    rows, _ = _usable_rows(table, columns)
    clusters, num_runs = _clusters(table, rows)
    num_units = len(set(clusters))
    if len(rows) < MIN_ROWS:
        nan = math.nan
        return AssociationDifference(
            first, second, score, control, nan, nan, nan, UNDEFINED, UNDEFINED, len(rows), num_runs,
            num_units,
        )
    tau_first = float(_taus(table, rows, first, score, control, None))
    tau_second = float(_taus(table, rows, second, score, control, None))
    interval = equivalence = UNDEFINED
    if num_units >= MIN_CLUSTERS:
        weights = cluster_weights(clusters, bootstrap)
        samples = np.abs(_taus(table, rows, first, score, control, weights)) - np.abs(
            _taus(table, rows, second, score, control, weights)
        )
        interval = percentile_interval(samples, bootstrap.confidence_level)
        equivalence = percentile_interval(samples, 1 - 2 * (1 - bootstrap.confidence_level))
    return AssociationDifference(
        first,
        second,
        score,
        control,
        tau_first,
        tau_second,
        abs(tau_first) - abs(tau_second),
        interval,
        equivalence,
        len(rows),
        num_runs,
        num_units,
    )


@dataclasses.dataclass(frozen=True)
class WithinRun:
    """Kendall tau along the checkpoints of each run, summarised across runs.

    Attributes:
        statistic: the predictor column.
        score: the transfer-score column.
        taus: one tau per usable run (3 or more checkpoints with both values, both varying).
        mean: the mean over seeds of each seed's mean tau (runs of one seed are not independent).
        interval: Student-t interval of that mean over seeds, clipped to [-1, 1].
        sign_p: exact sign test across seeds of "a seed's mean tau > 0 and < 0 are equally
            likely".
        num_skipped: runs without a tau (fewer than 3 usable checkpoints, or a constant column).
        num_units: the seeds (units) among the usable runs.
    """

    statistic: str
    score: str
    taus: tuple[float, ...]
    mean: float
    interval: Interval
    sign_p: float
    num_skipped: int
    num_units: int = 0


def within_run(
    table: ResultsTable,
    statistic: str,
    score: str,
    bootstrap: Bootstrap,
    rows: np.ndarray | None = None,
) -> WithinRun:
    """Per-run Kendall tau of a predictor and a score along the run's checkpoints.

    Args:
        table: the results.
        statistic: predictor column.
        score: transfer-score column.
        bootstrap: the level of the interval over seeds.
        rows: the checkpoints to use (index or mask; e.g. those on the loss plateau); default all.

    Returns:
        The :class:`WithinRun`; NaN summaries when no run is usable.
    """
    x, y = table.values(statistic), table.values(score)
    seeds = table.text("seed") if "seed" in table.columns else None
    taus, by_seed, skipped = [], {}, 0
    for index, run in enumerate(table.groups(RUN_COLUMNS, rows)):
        run = run[np.isfinite(x[run]) & np.isfinite(y[run])]
        tau = float(kendall_tau(x[run], y[run])) if len(run) >= MIN_ROWS else math.nan
        if math.isfinite(tau):
            taus.append(tau)
            by_seed.setdefault(seeds[run[0]] if seeds is not None else index, []).append(tau)
        else:
            skipped += 1
    if not taus:
        return WithinRun(statistic, score, (), math.nan, UNDEFINED, math.nan, skipped)
    # Runs of one seed share its initialisation and data order: the unit is the seed.
    units = [float(np.mean(values)) for values in by_seed.values()]
    return WithinRun(
        statistic,
        score,
        tuple(taus),
        float(np.mean(units)),
        tuple(float(np.clip(v, -1.0, 1.0)) for v in mean_interval(units, bootstrap)),  # A tau's range.
        sign_test(units),
        skipped,
        len(units),
    )
