"""Statistics, tables and plots of a study: ``results.csv`` in; ``report.md``, ``plots/*.png`` out.

The question is whether Hessian statistics of a pretrained checkpoint predict how well it
transfers. Every statistic column is rank-correlated (Kendall tau-b and Spearman rho, both from
``scipy.stats``) with every transfer score, over all rows ("pooled") and along each sweep axis
(iterations, objective, size), with percentile-bootstrap 95% confidence intervals.

``results.csv`` conventions (written by the study):

* one row per (configuration, checkpoint, seed); the columns of the contract in ``API.md`` plus any
  extra statistic columns (``trace_per_param``, ``block_trace/<layer>``, ``density_*``, ...);
* an empty cell means "does not apply" and the row is dropped for that column;
* a ``nan`` cell means "computed, but not a number"; why goes in the optional ``nan_reason``
  column as ``"<column>: <reason>"`` items joined by ``"; "``, e.g.
  ``"trace: loss diverged; fisher_trace: out of memory"``.

Spectral densities are optional: per checkpoint, a ``.npz`` file with either ``grid`` and ``pdf``
arrays, or stochastic Lanczos quadrature ``nodes`` and ``weights`` (any shape; flattened), at a path
given by a pattern (:data:`DEFAULT_DENSITY_PATTERN`) formatted with the row's cells.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
import warnings
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Reports are written on headless machines.

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

# Column roles, the one place that says which columns are identifiers, scores, bookkeeping or
# predictors. Every numeric column that is none of the first three is a Hessian statistic.
AXIS_COLUMNS = ("setting", "objective", "model", "width", "depth", "num_params", "seed", "step")
SCORE_COLUMNS = ("linear_probe_acc", "finetune_acc")  # and every other column ending in "_acc"
BOOKKEEPING_COLUMNS = (
    "trace_stderr",
    "matvecs",
    "matvecs_5pct",
    "matvecs_1pct",
    "seconds_hessian",
    "nan_reason",
)  # and every column ending in "_stderr" or starting with "seconds_" or "matvecs"
# Not Hessian statistics, but reported beside them as the obvious rival predictors.
BASELINE_COLUMNS = ("pretrain_loss", "pretrain_loss_gap")
# Statistics that are (normalised) traces; everything else is a "non-trace" statistic.
TRACE_STATISTICS = ("trace", "trace_downstream", "fisher_trace", "trace_per_param")
NAN_REASON_COLUMN = "nan_reason"

DEFAULT_DENSITY_PATTERN = "hessian/{model}/{objective}/seed{seed}/step{step}/density.npz"
REPORT_FILE = "report.md"


def column_role(name: str) -> str:
    """Returns the role of a ``results.csv`` column.

    Args:
        name: the column name.

    Returns:
        ``"axis"`` (identifies a row), ``"score"`` (transfer), ``"bookkeeping"`` (estimator error,
        cost), ``"baseline"`` (non-Hessian predictor) or ``"statistic"`` (Hessian statistic).
    """
    if name in AXIS_COLUMNS:
        return "axis"
    if name in SCORE_COLUMNS or name.endswith("_acc"):
        return "score"
    if (
        name in BOOKKEEPING_COLUMNS
        or name.endswith("_stderr")
        or name.startswith(("seconds_", "matvecs"))
    ):
        return "bookkeeping"
    if name in BASELINE_COLUMNS:
        return "baseline"
    return "statistic"


@dataclasses.dataclass(frozen=True)
class ResultsTable:
    """The cells of ``results.csv``, column by column, as the strings that were written.

    Attributes:
        columns: column name -> one cell per row (stripped strings; ``""`` where empty).
    """

    columns: dict[str, tuple[str, ...]]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, object]]) -> ResultsTable:
        """Builds a table from row mappings (missing keys and ``None`` become empty cells)."""
        names = list(dict.fromkeys(name for row in rows for name in row))
        cells = {n: tuple(_cell(row.get(n)) for row in rows) for n in names}
        return cls(cells)

    @property
    def num_rows(self) -> int:
        """The number of rows."""
        return len(next(iter(self.columns.values()), ()))

    def text(self, name: str) -> np.ndarray:
        """The cells of column ``name`` as strings; all empty when the column is absent."""
        return np.array(self.columns.get(name, ("",) * self.num_rows), dtype=object)

    def values(self, name: str) -> np.ndarray:
        """Column ``name`` as floats, NaN where a cell is empty or ``nan``.

        Raises:
            ValueError: when a non-empty cell is not a number.
        """
        try:
            return np.array([float(c) if c else math.nan for c in self.text(name)], dtype=float)
        except ValueError as error:
            raise ValueError(f"column {name!r} of results.csv is not numeric: {error}") from None

    def is_numeric(self, name: str) -> bool:
        """Whether column ``name`` has at least one non-empty cell and all of them are numbers."""
        cells = [c for c in self.columns.get(name, ()) if c]
        try:
            [float(c) for c in cells]
        except ValueError:
            return False
        return bool(cells)

    def subset(self, rows: np.ndarray) -> ResultsTable:
        """The table restricted to the given row indices (or boolean mask)."""
        rows = np.arange(self.num_rows)[rows]
        return ResultsTable({n: tuple(cells[i] for i in rows) for n, cells in self.columns.items()})

    def nan_reason(self, name: str, rows: np.ndarray | None = None) -> str:
        """Explains the missing values of column ``name`` among ``rows`` (default: all rows).

        Args:
            name: the column.
            rows: row indices or a boolean mask.

        Returns:
            E.g. ``"2 rows NaN (loss diverged x2), 1 row empty (does not apply)"``; ``""`` if none.
        """
        selected = np.arange(self.num_rows) if rows is None else np.arange(self.num_rows)[rows]
        cells, reasons = self.text(name), self.text(NAN_REASON_COLUMN)
        empty = [i for i in selected if not cells[i]]
        nans = [i for i in selected if cells[i] and math.isnan(float(cells[i]))]
        parts = []
        if nans:
            why: dict[str, int] = {}
            for i in nans:
                reason = _parse_nan_reasons(reasons[i]).get(name, "no reason recorded")
                why[reason] = why.get(reason, 0) + 1
            listed = ", ".join(f"{r} x{k}" if k > 1 else r for r, k in why.items())
            parts.append(f"{_plural(len(nans), 'row')} NaN ({listed})")
        if empty:
            parts.append(f"{_plural(len(empty), 'row')} empty (does not apply)")
        return ", ".join(parts)


def _cell(value: object) -> str:
    return "" if value is None else str(value).strip()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _parse_nan_reasons(cell: str) -> dict[str, str]:
    """Parses a ``nan_reason`` cell: ``"col: reason; col2: reason"`` -> ``{col: reason, ...}``."""
    items = (item.partition(":") for item in cell.split(";") if item.strip())
    return {column.strip(): reason.strip() for column, _, reason in items}


def read_results_csv(path: str | os.PathLike[str]) -> ResultsTable:
    """Reads a study's ``results.csv``.

    Args:
        path: the file.

    Returns:
        The :class:`ResultsTable`.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    with open(path, newline="") as stream:
        return ResultsTable.from_rows(list(csv.DictReader(stream)))


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

    rng = np.random.default_rng(seed)
    if len(groups) == 1:
        rows = groups[0]
        resampled = rows[rng.integers(0, len(rows), size=(num_resamples, len(rows)))]
        boot_tau, boot_rho = rank_correlations(x[resampled], y[resampled])
    else:
        resampled = rng.integers(0, len(groups), size=(num_resamples, len(groups)))
        boot_tau = np.asarray(taus)[resampled].mean(axis=1)
        boot_rho = np.asarray(rhos)[resampled].mean(axis=1)
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


def predictor_columns(table: ResultsTable) -> list[str]:
    """The default predictors: numeric columns whose role is ``statistic`` or ``baseline``."""
    return [
        name
        for name in table.columns
        if column_role(name) in ("statistic", "baseline") and table.is_numeric(name)
    ]


def score_columns(table: ResultsTable) -> list[str]:
    """The transfer scores present in the table (numeric columns whose role is ``score``)."""
    return [n for n in table.columns if column_role(n) == "score" and table.is_numeric(n)]


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


def _format_number(value: float) -> str:
    return "NaN" if not math.isfinite(value) else f"{value:.3g}"


def _format_coefficient(value: float, interval: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "NaN"
    low, high = (_format_number(v) if math.isnan(v) else f"{v:+.2f}" for v in interval)
    return f"{value:+.2f} [{low}, {high}]"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows), ""]


def _correlation_section(
    correlations: Sequence[Correlation], score: str, axes: Sequence[SweepAxis]
) -> list[str]:
    lookup = {(c.statistic, c.axis): c for c in correlations if c.score == score}
    statistics = list(dict.fromkeys(c.statistic for c in correlations if c.score == score))
    header = ["statistic"]
    for axis in axes:
        header += [f"{axis.name} τ [95% CI]", f"{axis.name} ρ [95% CI]", f"{axis.name} n"]
    rows, notes = [], []
    for statistic in statistics:
        row = [f"`{statistic}`"]
        for axis in axes:
            c = lookup[statistic, axis.name]
            groups = f" ({c.num_groups} groups)" if c.num_groups > 1 else ""
            row += [
                _format_coefficient(c.tau, c.tau_interval),
                _format_coefficient(c.rho, c.rho_interval),
                f"{c.num_rows}{groups}",
            ]
            if c.note:
                prefix = "NaN: " if not math.isfinite(c.tau) else ""
                notes.append(f"- `{statistic}`, {axis.name}: {prefix}{c.note}")
        rows.append(row)
    lines = [f"### Transfer score `{score}`", "", *_markdown_table(header, rows)]
    return lines + (["Notes:", "", *notes, ""] if notes else [])


def _ranking_section(
    correlations: Sequence[Correlation], scores: Sequence[str], axes: Sequence[SweepAxis]
) -> list[str]:
    rows = []
    for score in scores:
        for axis in axes:
            ranked = rank_predictors(correlations, score, axis.name)
            best = [f"`{c.statistic}` ({c.tau:+.2f})" for c in ranked if math.isfinite(c.tau)]
            rows.append([f"`{score}`", axis.name, ", ".join(best[:3]) or "none defined"])
    return _markdown_table(["score", "axis", "strongest |τ| first (top 3)"], rows)


def _comparison_line(c: Comparison) -> str:
    if not math.isfinite(c.difference):
        return f"- `{c.first}` vs `{c.second}` on `{c.score}`: NaN (only {c.num_rows} shared rows)"
    low, high = c.interval
    if low > 0:
        verdict = f"`{c.first}` predicts better"
    elif high < 0:
        verdict = f"`{c.second}` predicts better"
    else:
        verdict = "no difference at this confidence (the interval contains 0)"
    return (
        f"- `{c.score}`: τ(`{c.first}`) = {c.tau_first:+.2f}, τ(`{c.second}`) = "
        f"{c.tau_second:+.2f}; |τ| difference {c.difference:+.2f} [{low:+.2f}, {high:+.2f}], "
        f"n = {c.num_rows}: {verdict}."
    )


def _questions_section(
    table: ResultsTable,
    correlations: Sequence[Correlation],
    scores: Sequence[str],
    bootstrap: Mapping[str, float],
) -> list[str]:
    present = {c.statistic for c in correlations}
    lines = ["## The critics' three questions", ""]

    lines += ["### 1. Does the trace need the pretraining data?", ""]
    rivals = [s for s in ("trace_downstream", "fisher_trace") if s in present]
    if "trace" in present and rivals:
        lines += [
            "Pooled Kendall τ of the trace on downstream data (`trace_downstream`) and of the "
            "Fisher trace against the trace on pretraining data, on the rows where all are present "
            "(difference of |τ| with a paired row bootstrap):",
            "",
        ]
        for rival in rivals:
            lines += [
                _comparison_line(compare_predictors(table, rival, "trace", score, **bootstrap))
                for score in scores
            ]
    else:
        lines.append("Not answerable: `trace` and `trace_downstream`/`fisher_trace` are needed.")
    lines.append("")

    lines += ["### 2. How many probes?", ""]
    budget = probe_budget(table)
    if budget is None:
        lines.append("Not answerable: no `matvecs_5pct`/`matvecs_1pct` nor `trace_stderr`.")
    else:
        how = (
            "as recorded by the Hessian stage (`matvecs_5pct`, `matvecs_1pct`; see its docs for "
            "how it obtains them)"
            if budget.method == "measured"
            else "extrapolated from `trace_stderr` at `matvecs`, assuming stderr ∝ 1/√matvecs "
            "(exact for Hutchinson; pessimistic for Hutch++/XTrace)"
        )
        lines += [
            f"Matrix-vector products for a relative standard error of the trace, {how}, "
            f"over {budget.num_rows} rows:",
            "",
            *_markdown_table(
                ["target", "median", "max"],
                [
                    ["5%", _format_number(budget.median_5pct), _format_number(budget.max_5pct)],
                    ["1%", _format_number(budget.median_1pct), _format_number(budget.max_1pct)],
                ],
            ),
        ]

    lines += ["### 3. Is the trace only a summary?", ""]
    others = [s for s in present if column_role(s) == "statistic" and s not in TRACE_STATISTICS]
    if "trace" in present and others:
        lines += [
            "The non-trace statistic (top eigenvalue, per-layer traces, density summaries, ...) "
            "with the largest pooled |τ| per score, against the trace:",
            "",
        ]
        for score in scores:
            ranked = [
                c for c in rank_predictors(correlations, score, "pooled") if c.statistic in others
            ]
            best = ranked[0].statistic
            lines.append(
                _comparison_line(compare_predictors(table, best, "trace", score, **bootstrap))
            )
    else:
        lines.append("Not answerable: `trace` and at least one non-trace statistic are needed.")
    return lines + [""]


def _configuration_label(table: ResultsTable, row: int, columns: Sequence[str]) -> str:
    parts = []
    for column in columns:
        value = table.text(column)[row]
        if value:
            parts.append(
                value if column in ("setting", "objective", "model") else f"{column}{value}"
            )
    return "/".join(parts) or "all"


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def plot_trace_vs_step(table: ResultsTable, path: pathlib.Path) -> bool:
    """Plots the trace against the checkpoint step, one line per configuration (log x axis).

    Args:
        table: the results.
        path: the PNG to write.

    Returns:
        Whether a plot was written (``trace`` and ``step`` must be numeric).
    """
    if not (table.is_numeric("trace") and table.is_numeric("step")):
        return False
    step, trace = table.values("step"), table.values("trace")
    stderr = table.values("trace_stderr")
    iterations = next(a for a in SWEEP_AXES if a.name == "iterations")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for rows in axis_groups(table, iterations):
        rows = rows[np.isfinite(step[rows]) & np.isfinite(trace[rows])]
        if not len(rows):
            continue
        rows = rows[np.argsort(step[rows])]
        label = _configuration_label(table, rows[0], iterations.group_by)
        yerr = np.nan_to_num(stderr[rows])
        axes.errorbar(step[rows], trace[rows], yerr=yerr, marker="o", capsize=2, label=label)
    # symlog: logarithmic beyond step 1 yet able to show the initialisation at step 0.
    axes.set_xscale("symlog", linthresh=1)
    axes.set(xlabel="pretraining step", ylabel="Hessian trace", title="Trace vs step")
    axes.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_statistic_vs_score(
    table: ResultsTable, statistics: Sequence[str], score: str, path: pathlib.Path
) -> bool:
    """Scatter plots of each statistic against one transfer score, with a rank trend line.

    Args:
        table: the results.
        statistics: predictor columns, one panel each.
        score: the transfer score on the y axis.
        path: the PNG to write.

    Returns:
        Whether a plot was written (at least one statistic must be given).
    """
    if not statistics:
        return False
    columns = min(3, len(statistics))
    grid_rows = math.ceil(len(statistics) / columns)
    figure, panels = plt.subplots(
        grid_rows, columns, figsize=(4 * columns, 3.3 * grid_rows), squeeze=False
    )
    y = table.values(score)
    for panel, statistic in zip(panels.flat, statistics, strict=False):
        x = table.values(statistic)
        present = np.isfinite(x) & np.isfinite(y)
        xs, ys = x[present], y[present]
        panel.scatter(xs, ys, s=18)
        tau = math.nan
        if len(xs) >= 2 and np.ptp(xs) > 0:
            tau = float(rank_correlations(xs, ys)[0])
            # The trend is fitted to the ranks (what tau measures) and drawn back in data units
            # through the score's quantiles, so it is monotone and stays within the data.
            x_ranks, y_ranks = stats.rankdata(xs), stats.rankdata(ys)
            slope, intercept, _, _ = stats.theilslopes(y_ranks, x_ranks)
            order = np.argsort(xs)
            trend = np.interp(intercept + slope * x_ranks[order], np.sort(y_ranks), np.sort(ys))
            panel.plot(xs[order], trend, color="C3", label="Theil-Sen fit of ranks")
        panel.set(xlabel=statistic, ylabel=score, title=f"τ = {_format_number(tau)}")
    for panel in panels.flat[len(statistics) :]:
        panel.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def load_density(
    path: str | os.PathLike[str], grid_size: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a spectral density saved by the Hessian stage.

    Args:
        path: an ``.npz`` with ``grid`` and ``pdf``, or with Lanczos-quadrature ``nodes`` and
            ``weights`` (any shape, flattened); the latter are smoothed with Gaussians of width
            1% of the spectral range.
        grid_size: grid points when smoothing nodes and weights.

    Returns:
        ``(grid, pdf)``.

    Raises:
        ValueError: when the file has neither pair of arrays.
    """
    with np.load(path) as data:
        if {"grid", "pdf"} <= set(data.files):
            return np.asarray(data["grid"], float), np.asarray(data["pdf"], float)
        if not {"nodes", "weights"} <= set(data.files):
            raise ValueError(f"{path} has {data.files}; expected 'grid'+'pdf' or 'nodes'+'weights'")
        nodes, weights = np.ravel(data["nodes"]), np.ravel(data["weights"])
    weights = weights / weights.sum()
    span = float(np.ptp(nodes)) or 1.0
    sigma = 0.01 * span
    grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, grid_size)
    pdf = weights @ stats.norm.pdf(grid[None, :], loc=nodes[:, None], scale=sigma)
    return grid, pdf


def plot_densities(
    table: ResultsTable, workdir: pathlib.Path, pattern: str, plots_dir: pathlib.Path
) -> list[pathlib.Path]:
    """Plots the spectral density of the first and last checkpoint of each configuration.

    Args:
        table: the results.
        workdir: density paths are relative to it.
        pattern: a ``str.format`` pattern filled with the row's cells, e.g.
            :data:`DEFAULT_DENSITY_PATTERN`; configurations whose files are absent are skipped.
        plots_dir: where ``density_<configuration>.png`` files go.

    Returns:
        The PNGs written (empty when no density file exists).
    """
    if not table.is_numeric("step"):
        return []
    iterations = next(a for a in SWEEP_AXES if a.name == "iterations")
    step = table.values("step")
    written = []
    for rows in axis_groups(table, iterations):
        rows = rows[np.isfinite(step[rows])]
        if len(rows) < 2:
            continue
        first, last = rows[np.argmin(step[rows])], rows[np.argmax(step[rows])]
        paths = {}
        for row in (first, last):
            cells = {name: table.text(name)[row] for name in table.columns}
            try:
                paths[row] = workdir / pattern.format(**cells)
            except KeyError:  # The pattern names a column this table lacks.
                return []
        if not all(p.exists() for p in paths.values()):
            continue
        label = _configuration_label(table, first, iterations.group_by)
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for row, density_path in paths.items():
            grid, pdf = load_density(density_path)
            axes.plot(grid, np.maximum(pdf, 1e-12), label=f"step {table.text('step')[row]}")
        axes.set_yscale("log")
        axes.set(xlabel="eigenvalue", ylabel="density", title=f"Hessian spectrum: {label}")
        axes.legend()
        figure.tight_layout()
        path = plots_dir / f"density_{_file_name(label)}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_report(
    workdir: str | os.PathLike[str],
    *,
    statistics: Sequence[str] | None = None,
    num_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    density_pattern: str = DEFAULT_DENSITY_PATTERN,
) -> pathlib.Path:
    """Reads ``<workdir>/results.csv`` and writes ``<workdir>/report.md`` and ``<workdir>/plots``.

    Args:
        workdir: the study's working directory.
        statistics: predictor columns; default: every statistic and baseline column.
        num_resamples: bootstrap resamples per interval.
        confidence_level: of every interval.
        seed: of every bootstrap.
        density_pattern: where spectral densities are, relative to ``workdir``.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: when ``workdir`` has no ``results.csv``.
    """
    workdir = pathlib.Path(workdir)
    csv_path = workdir / "results.csv"
    if not csv_path.exists():
        raise FileNotFoundError(
            f"{csv_path} does not exist: run "
            f"`python -m experiments.study --workdir={workdir}` first"
        )
    table = read_results_csv(csv_path)
    bootstrap = dict(num_resamples=num_resamples, confidence_level=confidence_level, seed=seed)
    correlations = correlation_table(table, statistics, **bootstrap)
    scores = score_columns(table)
    predictors = list(dict.fromkeys(c.statistic for c in correlations))

    plots_dir = workdir / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = []
    if plot_trace_vs_step(table, plots_dir / "trace_vs_step.png"):
        plots.append(plots_dir / "trace_vs_step.png")
    for score in scores:
        path = plots_dir / f"scatter_{_file_name(score)}.png"
        if plot_statistic_vs_score(table, predictors, score, path):
            plots.append(path)
    plots += plot_densities(table, workdir, density_pattern, plots_dir)

    roles: dict[str, list[str]] = {}
    for name in table.columns:
        role = (
            column_role(name) if table.is_numeric(name) or column_role(name) == "axis" else "empty"
        )
        roles.setdefault(role, []).append(f"`{name}`")
    lines = [
        "# Do Hessian statistics predict transfer?",
        "",
        f"{table.num_rows} rows from `{csv_path.name}`. Kendall τ-b and Spearman ρ "
        "(`scipy.stats`), percentile-bootstrap "
        f"{confidence_level:.0%} intervals from {num_resamples} resamples (seed {seed}).",
        "",
        "## Columns",
        "",
        *(f"- {role}: {', '.join(names)}" for role, names in sorted(roles.items())),
        "",
        "## Sweep axes",
        "",
        *(f"- **{a.name}**: {a.description}" for a in SWEEP_AXES),
        "",
        "Within each group, rows missing either value (empty or NaN) are dropped per "
        "(statistic, score) pair; groups with fewer than 2 remaining rows, or in which either "
        "column is constant, are not used. The value shown is the unweighted mean over the used "
        "groups; its interval resamples the groups when 2 or more are used and the rows of the "
        "single group otherwise. n is the number of rows used (and of groups, when more than 1).",
        "",
        "## Correlations",
        "",
    ]
    for score in scores:
        lines += _correlation_section(correlations, score, SWEEP_AXES)
    lines += ["## Which statistic predicts transfer best", ""]
    lines += _ranking_section(correlations, scores, SWEEP_AXES)
    lines += _questions_section(table, correlations, scores, bootstrap)
    lines += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})" for p in plots), ""]
    report = workdir / REPORT_FILE
    report.write_text("\n".join(lines))
    return report
