"""How the report prints coefficients, intervals, p-values and tables (measured values:
:func:`experiments.analysis.results.format_number`)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def signed(value: float) -> str:
    """A coefficient or difference: its sign and 3 significant digits; ``NaN`` when not finite."""
    return f"{value:+#.3g}" if math.isfinite(value) else "NaN"


def estimate(value: float, interval: tuple[float, float]) -> str:
    """``+0.12 [-0.30, +0.45]``; the interval is replaced by a reason when it is undefined."""
    if not math.isfinite(value):
        return "NaN"
    if not all(math.isfinite(v) for v in interval):
        return f"{signed(value)} [no interval]"
    return f"{signed(value)} [{signed(interval[0])}, {signed(interval[1])}]"


def p_value(value: float) -> str:
    """A p-value to 2 significant digits (``<0.001`` below that); ``—`` when undefined."""
    if not math.isfinite(value):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.2g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table (``|`` in cells escaped), followed by an empty line."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows), ""]


def code(name: str) -> str:
    """A column name as inline code."""
    return f"`{name}`"


def count(number: int, noun: str) -> str:
    """``"1 run"``, ``"3 runs"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def rows_and_runs(num_rows: int, num_runs: int, num_units: int = 0) -> str:
    """How many rows, runs and resampled seeds an estimate used, e.g. ``"20 (4 runs, 2 seeds)"``."""
    seeds = f", {count(num_units, 'seed')}" if num_units else ""
    return f"{num_rows} ({count(num_runs, 'run')}{seeds})"
