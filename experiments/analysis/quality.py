"""Data quality beyond missing cells: negative trace estimates, and columns that repeat another.

* :func:`negative_estimates`: a trace-like column (its name contains ``trace`` and results.csv
  has its ``<column>_stderr``) estimates a quantity that is positive for a model at a minimum; a
  negative estimate within 2 standard errors of 0 is noise around a small value, one more than 2
  standard errors below 0 an estimator failure (or a checkpoint far from a minimum).
* :func:`fresh_disagreements`: a trace on one fixed data sample (``trace``) beside the same
  trace with a fresh minibatch for every probe (``trace_fresh``). The fixed estimate's standard
  error covers its probes, not its sample; the fresh one's covers both. Rows where the two differ
  by more than :data:`FAR_APART` combined standard errors are checkpoints whose fixed sample
  misstates the curvature beyond the fixed estimate's error bar.
* :func:`affine_duplicates`: a score or statistic that is an exact affine function of an earlier
  one over every row (``*_gain`` = accuracy minus a constant baseline; ``trace_per_param`` = trace
  over the one model's parameter count), which the exploratory tables would only repeat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from experiments.analysis.results import ResultsTable, column_role

STDERR_SUFFIX = "_stderr"
FAR_BELOW = 2.0  # Standard errors below zero that make a negative estimate an estimator failure.
FRESH_SUFFIX = "_fresh"
FAR_APART = 3.0  # Combined standard errors between a fixed-sample and a fresh-minibatch estimate.
# An affine fit whose largest residual is below this fraction of the column's spread is exact
# (results.csv prints float32 values to about 7 significant digits).
AFFINE_TOLERANCE = 1e-5
MIN_DISTINCT = 3  # Distinct values an affine fit needs: through two points, any line is exact.


@dataclasses.dataclass(frozen=True)
class NegativeEstimates:
    """The negative estimates of one trace-like column.

    Attributes:
        column: e.g. ``"trace"``.
        num_rows: rows with a finite estimate and standard error.
        negative: rows with an estimate below 0.
        far_below: those more than :data:`FAR_BELOW` standard errors below 0.
    """

    column: str
    num_rows: int
    negative: tuple[int, ...]
    far_below: tuple[int, ...]


def trace_columns(table: ResultsTable) -> list[str]:
    """The trace-like statistics with a standard error: name contains ``trace``, and
    ``<name>_stderr`` is a numeric column."""
    return [
        name
        for name in table.columns
        if "trace" in name
        and column_role(name) == "statistic"
        and table.is_numeric(name)
        and table.is_numeric(name + STDERR_SUFFIX)
    ]


def negative_estimates(table: ResultsTable) -> list[NegativeEstimates]:
    """Per trace-like column (:func:`trace_columns`), its negative estimates and those more than
    :data:`FAR_BELOW` standard errors below 0."""
    found = []
    for name in trace_columns(table):
        value, stderr = table.values(name), table.values(name + STDERR_SUFFIX)
        finite = np.isfinite(value) & np.isfinite(stderr)
        negative = finite & (value < 0)
        far = negative & (value < -FAR_BELOW * stderr)
        found.append(
            NegativeEstimates(
                name,
                int(finite.sum()),
                tuple(int(r) for r in np.flatnonzero(negative)),
                tuple(int(r) for r in np.flatnonzero(far)),
            )
        )
    return found


@dataclasses.dataclass(frozen=True)
class FreshDisagreement:
    """A fixed-sample trace-like column beside its fresh-minibatch counterpart.

    Attributes:
        column: the fixed-sample column, e.g. ``"trace"`` (its counterpart ``"trace_fresh"``).
        rows: rows where both estimates and both standard errors are finite.
        z: per row of ``rows``, (fixed - fresh) / sqrt(stderr_fixed^2 + stderr_fresh^2).
        far_apart: the rows with ``|z|`` above :data:`FAR_APART`.
    """

    column: str
    rows: tuple[int, ...]
    z: tuple[float, ...]
    far_apart: tuple[int, ...]


def fresh_disagreements(table: ResultsTable) -> list[FreshDisagreement]:
    """Each trace-like column (:func:`trace_columns`) whose ``<column>_fresh`` is one too, compared
    row by row with it (see the module docstring)."""
    columns = trace_columns(table)
    found = []
    for name in columns:
        fresh = name + FRESH_SUFFIX
        if fresh not in columns:
            continue
        a, b = table.values(name), table.values(fresh)
        se = np.hypot(table.values(name + STDERR_SUFFIX), table.values(fresh + STDERR_SUFFIX))
        usable = np.isfinite(a) & np.isfinite(b) & np.isfinite(se) & (se > 0)
        rows = np.flatnonzero(usable)
        z = (a[rows] - b[rows]) / se[rows]
        far = rows[np.abs(z) > FAR_APART]
        found.append(FreshDisagreement(name, tuple(int(r) for r in rows),
                                       tuple(float(v) for v in z), tuple(int(r) for r in far)))
    return found


@dataclasses.dataclass(frozen=True)
class AffineDuplicate:
    """``column = slope * base + offset`` in every row where both are finite."""

    column: str
    base: str
    slope: float
    offset: float


def _affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """``(slope, offset)`` when ``y`` is exactly affine in ``x`` (non-zero slope), else None."""
    both = np.isfinite(x) & np.isfinite(y)
    # The same rows must be present: a column measured on fewer rows is not a copy.
    if not both.any() or (np.isfinite(x) != np.isfinite(y)).any():
        return None
    x, y = x[both], y[both]
    if len(np.unique(x)) < MIN_DISTINCT:
        return None
    slope, offset = np.polyfit(x, y, 1)
    spread = np.ptp(y)
    if slope == 0 or spread == 0:
        return None
    if np.max(np.abs(y - (slope * x + offset))) > AFFINE_TOLERANCE * spread:
        return None
    if abs(slope - 1) <= 1e-9:
        slope = 1.0
    # A rounding-sized offset is none (e.g. `trace_per_param` = `trace` / a parameter count).
    if abs(offset) <= AFFINE_TOLERANCE * spread:
        offset = 0.0
    return float(slope), float(offset)


def affine_duplicates(
    table: ResultsTable, columns: Sequence[str], keep: Sequence[str] = ()
) -> list[AffineDuplicate]:
    """The ``columns`` that are an exact affine function of an earlier one of the same kind
    (scores of scores, statistics and baselines of statistics and baselines) over all rows.

    Args:
        table: the results.
        columns: candidates, in order: a column is compared with the earlier ones kept.
        keep: columns never reported as duplicates (the loss, the primary tests' columns).

    Returns:
        One :class:`AffineDuplicate` per repeated column.
    """
    kept: list[str] = []
    duplicates = []
    for name in columns:
        if not table.is_numeric(name):
            continue
        kind = column_role(name) == "score"
        found = None
        if name not in keep:
            for base in kept:
                if (column_role(base) == "score") != kind:
                    continue
                fit = _affine_fit(table.values(base), table.values(name))
                if fit is not None:
                    found = AffineDuplicate(name, base, *fit)
                    break
        if found is None:
            kept.append(name)
        else:
            duplicates.append(found)
    return duplicates
