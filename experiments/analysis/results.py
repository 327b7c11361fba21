"""A study's ``results.csv``: the roles of its columns and its cells as a :class:`ResultsTable`.

``results.csv`` conventions (written by the study):

* one row per (configuration, checkpoint, seed); the columns of the contract in ``API.md`` plus any
  extra statistic columns (``trace_per_param``, ``block_trace/<layer>``, ``density_*``, ...);
* an empty cell means "does not apply" and the row is dropped for that column;
* a ``nan`` cell means "computed, but not a number"; why goes in the optional ``nan_reason``
  column as ``"<column>: <reason>"`` items joined by ``"; "``, e.g.
  ``"trace: loss diverged; fisher_trace: out of memory"``;
* the optional ``on_plateau`` column (``true``/``false``, ``1``/``0``) says whether a checkpoint is
  on the pretraining loss plateau;
* the optional probe-budget columns of the trace, read only by the report's critic 2:
  ``trace_at_<N>`` (the trace estimate after the first ``N`` products of the same probes) and
  ``trace_rank_agreement_<budget>`` (an agreement, in ``[-1, 1]``, of the checkpoints' ranking by
  the trace at that budget with the ranking at the full budget).

Rows are grouped into pretraining *runs* (:data:`RUN_COLUMNS`: a configuration and a seed); the
checkpoints of a run are one trajectory, never independent of each other.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

# The columns that name a configuration (all but the seed of a run), and those that a size
# comparison varies together (the model label and the parameter count follow width and depth).
CONFIGURATION_COLUMNS = ("setting", "objective", "schedule", "model", "width", "depth")
SIZE_COLUMNS = ("model", "width", "depth", "num_params")
RUN_COLUMNS = (*CONFIGURATION_COLUMNS, "seed")
PLATEAU_COLUMN = "on_plateau"
# Column roles, the one place that says which columns are identifiers, scores, bookkeeping or
# predictors. Every numeric column that is none of the first three is a Hessian statistic.
AXIS_COLUMNS = (
    "setting", "objective", "schedule", "model", "width", "depth", "num_params", "seed", "step"
)
# and every other column ending in "_acc", or in "_gain" (a score minus the best baseline's)
SCORE_COLUMNS = ("linear_probe_acc", "finetune_acc")
BOOKKEEPING_COLUMNS = (
    "trace_stderr",
    "matvecs",
    "matvecs_5pct",
    "matvecs_1pct",
    "seconds_hessian",
    "density_file",  # DENSITY_COLUMN
    "nan_reason",
)  # and every column ending in "_stderr" or starting with "seconds_", "matvecs", "baseline_"
# (the transfer scores of inputs that need no pretraining, the same for every checkpoint of a run)
# or one of:
PROBE_BUDGET_PREFIXES = ("trace_at_", "trace_rank_agreement_")  # Critic 2's columns.
# Not Hessian statistics, but reported beside them as the obvious rival predictors.
BASELINE_COLUMNS = ("pretrain_loss", "pretrain_loss_gap", "pretrain_loss_gap_train")
# Statistics that are (normalised) traces; everything else is a "non-trace" statistic.
TRACE_STATISTICS = ("trace", "trace_downstream", "fisher_trace", "trace_per_param")
NAN_REASON_COLUMN = "nan_reason"
# Each checkpoint's spectral density file, relative to the workdir (written by the study).
DENSITY_COLUMN = "density_file"
# The columns whose values name a configuration in labels as they are (others as `<column><value>`).
LABEL_COLUMNS = ("setting", "objective", "schedule", "model")


def label_columns(table: ResultsTable) -> tuple[str, ...]:
    """The columns that label a run in plots and lists: objective and model, and the schedule where
    the study has several (`experiments.sweep.arms`)."""
    several = len(set(table.text("schedule")) - {""}) > 1
    return ("objective", "schedule", "model") if several else ("objective", "model")


def pretraining_runs(table: ResultsTable) -> int:
    """How many pretraining runs the rows come from, by their density files' run directories
    (``density_file``, written by the study): an arm of budgets (`experiments.sweep.arms`) trains
    one run per budget, its rows one group of ``RUN_COLUMNS``. A group without files is one run."""
    files = table.text(DENSITY_COLUMN) if DENSITY_COLUMN in table.columns else ("",) * table.num_rows
    return sum(
        max(1, len({files[r].rsplit("/", 2)[0] for r in rows if files[r]}))
        for rows in table.groups(RUN_COLUMNS)
    )


def column_role(name: str) -> str:
    """Returns the role of a ``results.csv`` column.

    Args:
        name: the column name.

    Returns:
        ``"axis"`` (identifies a row), ``"indicator"`` (``on_plateau``), ``"score"`` (transfer),
        ``"bookkeeping"`` (estimator error, cost, probe budgets), ``"baseline"`` (non-Hessian
        predictor) or ``"statistic"`` (Hessian statistic).
    """
    if name in AXIS_COLUMNS:
        return "axis"
    if name == PLATEAU_COLUMN:
        return "indicator"
    if (
        name in BOOKKEEPING_COLUMNS
        or name.endswith("_stderr")
        or name.startswith(("seconds_", "matvecs", "baseline_", *PROBE_BUDGET_PREFIXES))
    ):
        return "bookkeeping"
    if name in SCORE_COLUMNS or name.endswith(("_acc", "_gain")):
        return "score"
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

    def flags(self, name: str) -> np.ndarray:
        """Column ``name`` as 1.0 (``true``, ``yes``, ``1``) or 0.0 (``false``, ``no``, ``0``).

        Returns:
            Floats, NaN where a cell is empty; all NaN when the column is absent.

        Raises:
            ValueError: when a non-empty cell is none of these.
        """
        values = {"true": 1.0, "yes": 1.0, "1": 1.0, "1.0": 1.0}
        values |= {"false": 0.0, "no": 0.0, "0": 0.0, "0.0": 0.0, "": math.nan}
        cells = [c.lower() for c in self.text(name)]
        unknown = sorted({c for c in cells if c not in values})
        if unknown:
            raise ValueError(f"column {name!r} of results.csv is not true/false: {unknown}")
        return np.array([values[c] for c in cells], dtype=float)

    def groups(self, columns: Sequence[str], rows: np.ndarray | None = None) -> list[np.ndarray]:
        """Splits rows into groups that agree on ``columns`` (an absent column: one empty value).

        Args:
            columns: e.g. :data:`RUN_COLUMNS`: one group per pretraining run.
            rows: row indices or a boolean mask to split (default: all rows).

        Returns:
            The row indices of each group, ascending within it; groups sorted by their key.
        """
        selected = np.arange(self.num_rows) if rows is None else np.arange(self.num_rows)[rows]
        cells = [self.text(c) for c in columns]
        groups: dict[tuple[str, ...], list[int]] = {}
        for row in selected:
            groups.setdefault(tuple(column[row] for column in cells), []).append(int(row))
        return [np.array(groups[key]) for key in sorted(groups, key=_sort_key)]

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
        numbers = {i: _number(cells[i]) for i in selected if cells[i]}
        nans = [i for i, value in numbers.items() if value is not None and math.isnan(value)]
        infinite = [i for i, value in numbers.items() if value is not None and math.isinf(value)]
        parts = []
        if nans:
            why: dict[str, int] = {}
            for i in nans:
                reason = _parse_nan_reasons(reasons[i]).get(name, "no reason recorded")
                why[reason] = why.get(reason, 0) + 1
            listed = ", ".join(f"{r} x{k}" if k > 1 else r for r, k in why.items())
            parts.append(f"{_plural(len(nans), 'row')} NaN ({listed})")
        if infinite:
            parts.append(f"{_plural(len(infinite), 'row')} infinite")
        if empty:
            parts.append(f"{_plural(len(empty), 'row')} empty (does not apply)")
        return ", ".join(parts)


def _number(cell: str) -> float | None:
    """A cell as a float; ``None`` when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def _sort_key(key: tuple[str, ...]) -> tuple[tuple[int, float, str], ...]:
    """Orders keys numerically where cells are finite numbers (seed 2 before seed 10), else as
    text."""
    numbers = [_number(c) for c in key]
    return tuple(
        (0, n, "") if n is not None and math.isfinite(n) else (1, 0.0, c)
        for n, c in zip(numbers, key, strict=True)
    )


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


def loss_column(table: ResultsTable) -> str | None:
    """The loss that statistics must beat: ``pretrain_loss_gap`` where measured, else
    ``pretrain_loss``; ``None`` when neither is numeric."""
    return next((c for c in ("pretrain_loss_gap", "pretrain_loss") if table.is_numeric(c)), None)


def plateau_known(table: ResultsTable) -> bool:
    """Whether results.csv says which checkpoints are on the loss plateau (a non-empty
    ``on_plateau`` cell)."""
    return any(table.text(PLATEAU_COLUMN))


def format_number(value: float) -> str:
    """How the report and the plots print a number: 3 significant digits, ``NaN`` if not finite."""
    return "NaN" if not math.isfinite(value) else f"{value:.3g}"
