"""Rank correlations of Hessian statistics with transfer scores, with bootstrap intervals.

The question is whether Hessian statistics of a pretrained checkpoint predict how well it
transfers. Every statistic column is rank-correlated (Kendall tau-b and Spearman rho, both from
``scipy.stats``) with every transfer score, over all rows ("pooled") and along each sweep axis
(iterations, objective, size), with percentile-bootstrap 95% confidence intervals. Pairs of
predictors are compared on shared rows, and the trace's probe budget is summarised.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from experiments.analysis.results import ResultsTable, predictor_columns, score_columns


@dataclasses.dataclass(frozen=True)
class SweepAxis:
    """A slice of the study along which correlations are computed.

    Attributes:
        name: ``"pooled"``, ``"iterations"``, ``"objective"`` or ``"size"``.
        group_by: rows that agree on all these columns form one group; correlations are computed
            within each group, so only the remaining columns vary inside a group.
        description: the definition, as printed in the report.
    """

    name: str
    group_by: tuple[str, ...]
    description: str


SWEEP_AXES = (
    SweepAxis("pooled", (), "all rows form one group."),
    SweepAxis(
        "iterations",
        ("setting", "objective", "model", "width", "depth", "seed"),
        "one group per (setting, objective, model, width, depth, seed); rows in a group differ "
        "only in `step`, so the correlation follows one pretraining run over its checkpoints.",
    ),
    SweepAxis(
        "objective",
        ("setting", "model", "width", "depth", "seed", "step"),
        "one group per (setting, model, width, depth, seed, step); rows in a group differ only in "
        "`objective` (the training algorithm in the language setting).",
    ),
    SweepAxis(
        "size",
        ("setting", "objective", "seed", "step"),
        "one group per (setting, objective, seed, step); rows in a group differ only in "
        "`model` / `width` / `depth` (and so `num_params`).",
    ),
)


def axis_groups(table: ResultsTable, axis: SweepAxis) -> list[np.ndarray]:
    """Splits the rows into the groups of a sweep axis.

    Args:
        table: the results.
        axis: which columns define a group (an absent column counts as one empty value).

    Returns:
        Row indices of each group, groups sorted by their key; groups of one row included.
    """
    keys = list(zip(*(table.text(c) for c in axis.group_by), strict=True)) or [()] * table.num_rows
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return [np.array(groups[key]) for key in sorted(groups)]


def rank_correlations(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b and Spearman rho of ``x`` and ``y`` along their last axis.

    Spearman's rho is computed as scipy's Pearson correlation of scipy's average ranks (the
    definition ``scipy.stats.spearmanr`` uses), because that form is vectorised over bootstrap
    resamples while ``spearmanr`` treats a 2-D input as many variables.

    Args:
        x: values, shape ``(..., n)`` with ``n >= 2``.
        y: values of the same shape.

    Returns:
        ``(tau, rho)`` of shape ``x.shape[:-1]``; NaN where ``x`` or ``y`` is constant.
    """
    with warnings.catch_warnings():
        # Constant resamples are expected (they yield NaN, which the caller discards).
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = stats.kendalltau(x, y, axis=-1).statistic
        rho = stats.pearsonr(
            stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1), axis=-1
        ).statistic
    return np.asarray(tau, dtype=float), np.asarray(rho, dtype=float)


def percentile_interval(samples: np.ndarray, confidence_level: float) -> tuple[float, float]:
    """The central percentile interval of bootstrap samples, ignoring NaN (degenerate) resamples.

    Args:
        samples: the bootstrap distribution.
        confidence_level: e.g. 0.95.

    Returns:
        ``(low, high)``; ``(nan, nan)`` if no sample is finite.
    """
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = 50 * (1 - confidence_level)
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Rank correlation of one statistic with one transfer score along one sweep axis.

    Attributes:
        statistic: the predictor column.
        score: the transfer-score column.
        axis: the sweep axis name.
        tau: Kendall tau-b: the mean over usable groups (pooled: the one group's value).
        tau_interval: bootstrap confidence interval of ``tau``.
        rho: Spearman rho, averaged like ``tau``.
        rho_interval: bootstrap confidence interval of ``rho``.
        num_rows: rows used (both values present, in usable groups).
        num_groups: groups used: at least 2 rows, both columns varying within the group.
        note: why the values are NaN, or which rows were dropped and why.
    """

    statistic: str
    score: str
    axis: str
    tau: float
    tau_interval: tuple[float, float]
    rho: float
    rho_interval: tuple[float, float]
    num_rows: int
    num_groups: int
    note: str = ""


def correlate(
    table: ResultsTable,
    statistic: str,
    score: str,
    axis: SweepAxis,
    *,
    num_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Rank-correlates a statistic with a transfer score within the groups of a sweep axis.

    Rows where either value is missing (empty or NaN) are dropped. Within each group with at least
    two remaining rows in which both columns vary, tau and rho are computed; the reported value is
    their unweighted mean over groups. The confidence interval is a percentile bootstrap: over
    groups (resampled with replacement, mean recomputed) when two or more groups are used, and
    over the rows of the single group otherwise (so the pooled axis resamples rows, keeping each
    row's statistic and score paired). Degenerate resamples (a constant column) are discarded.

    Args:
        table: the results.
        statistic: predictor column.
        score: transfer-score column.
        axis: the sweep axis.
        num_resamples: bootstrap resamples.
        confidence_level: of the interval.
        seed: of the bootstrap; the same seed gives the same interval.

    Returns:
        The :class:`Correlation`; NaN values with a ``note`` when no group is usable.
    """
    x, y = table.values(statistic), table.values(score)
    present = np.isfinite(x) & np.isfinite(y)
    groups, taus, rhos = _usable_groups(table, axis, x, y, present)
    dropped = table.nan_reason(statistic, ~np.isfinite(x))
    if not groups:
        note = (
            f"no group with 2 or more rows where both {statistic} and {score} are present and "
            f"vary ({int(present.sum())} rows with both present)"
        )
        note += f"; {statistic}: {dropped}" if dropped else ""
        undefined = (math.nan, math.nan)
        return Correlation(
            statistic, score, axis.name, math.nan, undefined, math.nan, undefined, 0, 0, note
        )
    boot_tau, boot_rho = _bootstrap(x, y, groups, taus, rhos, num_resamples, seed)
    return Correlation(
        statistic,
        score,
        axis.name,
        float(np.mean(taus)),
        percentile_interval(boot_tau, confidence_level),
        float(np.mean(rhos)),
        percentile_interval(boot_rho, confidence_level),
        num_rows=sum(len(rows) for rows in groups),
        num_groups=len(groups),
        note=f"dropped: {dropped}" if dropped else "",
    )


def _usable_groups(
    table: ResultsTable, axis: SweepAxis, x: np.ndarray, y: np.ndarray, present: np.ndarray
) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The groups of ``axis`` with 2 or more ``present`` rows in which ``x`` and ``y`` both vary.

    Returns:
        ``(groups, taus, rhos)``: each usable group's present rows, tau and rho.
    """
    groups, taus, rhos = [], [], []
    for rows in axis_groups(table, axis):
        rows = rows[present[rows]]
        if len(rows) < 2:
            continue
        tau, rho = rank_correlations(x[rows], y[rows])
        if np.isfinite(tau) and np.isfinite(rho):
            groups.append(rows)
            taus.append(float(tau))
            rhos.append(float(rho))
    return groups, taus, rhos


def _bootstrap(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[np.ndarray],
    taus: Sequence[float],
    rhos: Sequence[float],
    num_resamples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap distributions of the mean tau and rho over ``groups`` (see :func:`correlate`).

    Returns:
        ``(tau, rho)``, each of shape ``(num_resamples,)``: the rows of the single group are
        resampled when there is one group, the groups' values otherwise.
    """
    rng = np.random.default_rng(seed)
    if len(groups) == 1:
        rows = groups[0]
        resampled = rows[rng.integers(0, len(rows), size=(num_resamples, len(rows)))]
        return rank_correlations(x[resampled], y[resampled])
    resampled = rng.integers(0, len(groups), size=(num_resamples, len(groups)))
    return np.asarray(taus)[resampled].mean(axis=1), np.asarray(rhos)[resampled].mean(axis=1)


def correlation_table(
    table: ResultsTable,
    statistics: Sequence[str] | None = None,
    *,
    axes: Sequence[SweepAxis] = SWEEP_AXES,
    num_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> list[Correlation]:
    """Correlates every statistic with every transfer score along every axis.

    Args:
        table: the results.
        statistics: predictor columns; default :func:`predictor_columns`.
        axes: the sweep axes.
        num_resamples: bootstrap resamples per entry.
        confidence_level: of the intervals.
        seed: of every bootstrap (each entry restarts from it, so entries do not depend on order).

    Returns:
        One :class:`Correlation` per (statistic, score, axis), in that nesting order.

    Raises:
        ValueError: when a requested statistic is not a column of the table.
    """
    statistics = predictor_columns(table) if statistics is None else list(statistics)
    missing = [name for name in statistics if name not in table.columns]
    if missing:
        raise ValueError(f"statistics {missing} are not columns of results.csv")
    return [
        correlate(
            table,
            statistic,
            score,
            axis,
            num_resamples=num_resamples,
            confidence_level=confidence_level,
            seed=seed,
        )
        for statistic in statistics
        for score in score_columns(table)
        for axis in axes
    ]


def rank_predictors(
    correlations: Sequence[Correlation], score: str, axis: str
) -> list[Correlation]:
    """The correlations of one score and axis, strongest ``|tau|`` first, NaN last."""
    chosen = [c for c in correlations if c.score == score and c.axis == axis]
    return sorted(chosen, key=lambda c: -abs(c.tau) if math.isfinite(c.tau) else math.inf)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Which of two statistics predicts a score better, on the same rows (pooled).

    Attributes:
        first: the challenger statistic.
        second: the reference statistic (usually ``trace``).
        score: the transfer score.
        tau_first: Kendall tau of ``first`` on the shared rows.
        tau_second: Kendall tau of ``second`` on the shared rows.
        difference: ``|tau_first| - |tau_second|``.
        interval: bootstrap confidence interval of ``difference`` (rows resampled jointly).
        num_rows: rows where all three columns are present.
    """

    first: str
    second: str
    score: str
    tau_first: float
    tau_second: float
    difference: float
    interval: tuple[float, float]
    num_rows: int


def compare_predictors(
    table: ResultsTable,
    first: str,
    second: str,
    score: str,
    *,
    num_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compares ``|tau|`` of two statistics against one score with a paired row bootstrap.

    Args:
        table: the results.
        first: the challenger statistic.
        second: the reference statistic.
        score: the transfer score.
        num_resamples: bootstrap resamples.
        confidence_level: of the interval.
        seed: of the bootstrap.

    Returns:
        The :class:`Comparison` (NaN when fewer than 2 rows have all three values).
    """
    a, b, y = table.values(first), table.values(second), table.values(score)
    rows = np.flatnonzero(np.isfinite(a) & np.isfinite(b) & np.isfinite(y))
    if len(rows) < 2:
        undefined = (math.nan, math.nan)
        return Comparison(first, second, score, math.nan, math.nan, math.nan, undefined, len(rows))
    tau_a, _ = rank_correlations(a[rows], y[rows])
    tau_b, _ = rank_correlations(b[rows], y[rows])
    rng = np.random.default_rng(seed)
    resampled = rows[rng.integers(0, len(rows), size=(num_resamples, len(rows)))]
    boot_a, _ = rank_correlations(a[resampled], y[resampled])
    boot_b, _ = rank_correlations(b[resampled], y[resampled])
    return Comparison(
        first,
        second,
        score,
        float(tau_a),
        float(tau_b),
        float(abs(tau_a) - abs(tau_b)),
        percentile_interval(np.abs(boot_a) - np.abs(boot_b), confidence_level),
        len(rows),
    )


@dataclasses.dataclass(frozen=True)
class ProbeBudget:
    """How many matrix-vector products the trace needs for a given relative standard error.

    Attributes:
        method: ``"measured"`` (from ``matvecs_5pct``/``matvecs_1pct``) or ``"extrapolated"``
            (from ``trace_stderr`` and ``matvecs``, assuming stderr is proportional to
            ``1/sqrt(matvecs)``, true of Hutchinson's estimator).
        median_5pct: median over rows of the matvecs needed for 5% relative stderr.
        max_5pct: the maximum over rows.
        median_1pct: the same for 1%.
        max_1pct: the maximum for 1%.
        num_rows: rows that contributed.
    """

    method: str
    median_5pct: float
    max_5pct: float
    median_1pct: float
    max_1pct: float
    num_rows: int


def probe_budget(table: ResultsTable) -> ProbeBudget | None:
    """Summarises the matvecs the trace needs for 5% and 1% relative standard error.

    Args:
        table: the results.

    Returns:
        The :class:`ProbeBudget`, or ``None`` when neither the measured columns nor
        ``trace``/``trace_stderr``/``matvecs`` are present.
    """
    if table.is_numeric("matvecs_5pct") or table.is_numeric("matvecs_1pct"):
        method = "measured"
        at_5, at_1 = table.values("matvecs_5pct"), table.values("matvecs_1pct")
    elif all(table.is_numeric(c) for c in ("trace", "trace_stderr", "matvecs")):
        method = "extrapolated"
        trace, stderr = table.values("trace"), table.values("trace_stderr")
        relative = stderr / np.abs(np.where(trace == 0, math.nan, trace))
        # stderr ~ c / sqrt(m)  =>  m_needed = m * (relative_stderr / target)^2.
        at_5 = table.values("matvecs") * (relative / 0.05) ** 2
        at_1 = table.values("matvecs") * (relative / 0.01) ** 2
    else:
        return None

    def summary(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        return (float(np.median(values)), float(values.max())) if values.size else (math.nan,) * 2

    rows = int((np.isfinite(at_5) | np.isfinite(at_1)).sum())
    return ProbeBudget(method, *summary(at_5), *summary(at_1), rows)
