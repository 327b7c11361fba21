"""A study's ``results.csv``: the roles of its columns and its cells as a :class:`ResultsTable`.

``results.csv`` conventions (written by the study):

* one row per (configuration, checkpoint, seed); the columns of the contract in ``API.md`` plus any
  extra statistic columns (``trace_per_param``, ``block_trace/<layer>``, ``density_*``, ...);
* an empty cell means "does not apply" and the row is dropped for that column;
* a ``nan`` cell means "computed, but not a number"; why goes in the optional ``nan_reason``
  column as ``"<column>: <reason>"`` items joined by ``"; "``, e.g.
  ``"trace: loss diverged; fisher_trace: out of memory"``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

# Column roles, the one place that says which columns are identifiers, scores, bookkeeping or
# predictors. Every numeric column that is none of the first three is a Hessian statistic.
AXIS_COLUMNS = ("setting", "objective", "model", "width", "depth", "num_params", "seed", "step")
# and every other column ending in "_acc", or in "_gain" (a score minus the best baseline's)
SCORE_COLUMNS = ("linear_probe_acc", "finetune_acc")
BOOKKEEPING_COLUMNS = (
    "trace_stderr",
    "matvecs",
    "matvecs_5pct",
    "matvecs_1pct",
    "seconds_hessian",
    "nan_reason",
)  # and every column ending in "_stderr" or starting with "seconds_" or "matvecs"
# Not Hessian statistics, but reported beside them as the obvious rival predictors.
BASELINE_COLUMNS = ("pretrain_loss", "pretrain_loss_gap", "pretrain_loss_gap_train")
# Statistics that are (normalised) traces; everything else is a "non-trace" statistic.
TRACE_STATISTICS = ("trace", "trace_downstream", "fisher_trace", "trace_per_param")
NAN_REASON_COLUMN = "nan_reason"


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
    if name in SCORE_COLUMNS or name.endswith(("_acc", "_gain")):
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


def format_number(value: float) -> str:
    """How the report and the plots print a number: 3 significant digits, ``NaN`` if not finite."""
    return "NaN" if not math.isfinite(value) else f"{value:.3g}"
