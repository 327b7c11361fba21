"""The report's "Transfer over the baselines" section: does pretraining beat inputs that need none?

A transfer score means nothing until it beats the same probe on inputs that need no pretraining
(the language setting's one-hot tokens, bag of words and encoder at initialisation,
`baseline_<kind>_<task>_acc`): results.csv then carries each probe's gain over the best of them,
`<probe>_<task>_gain`. For each such column
and configuration, at the configuration's last checkpoint, the section gives the mean gain over
seeds with its Student-t interval and how many seeds gain at least `THRESHOLD`; then the largest
single gain of each column over every checkpoint and seed, with its row — a maximum over many
cells, so an optimistic reading, labelled as such.
"""

from __future__ import annotations

import re

import numpy as np

from experiments.analysis import inference
from experiments.analysis.formatting import code, markdown_table
from experiments.analysis.quality_sections import row_label
from experiments.analysis.results import (
    CONFIGURATION_COLUMNS,
    ResultsTable,
    format_number,
    label_columns,
)

THRESHOLD = 0.10  # Ten points of accuracy: the language study's bar for "needs pretraining".
# Accuracies are counts over a test set, so a gain can equal the threshold exactly, and its float
# difference land a rounding error below it (0.344 - 0.244 = 0.09999999999999998): ties count.
_TIE = 1e-9
_TASK_GAIN = re.compile(r"(.+)_([^_]+)_gain")


def task_gain_columns(table: ResultsTable) -> list[str]:
    """The per-task gain columns `<probe>_<task>_gain` (not the means over tasks, `<probe>_gain`)."""
    result = []
    for name in table.columns:
        match = _TASK_GAIN.fullmatch(name)
        # A task is what the baselines are scored on (`baseline_<kind>_<task>_acc`).
        task_of_baselines = match and any(
            c.startswith("baseline_") and c.endswith(f"_{match[2]}_acc") for c in table.columns
        )
        if task_of_baselines and f"{match[1]}_{match[2]}_acc" in table.columns and table.is_numeric(name):
            result.append(name)
    return sorted(result)


def _points(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{100 * value:+.1f}"


def baselines_section(table: ResultsTable, bootstrap: inference.Bootstrap) -> list[str]:
    """The section's lines (see the module docstring); a note where results.csv has no gains."""
    lines = ["## Transfer over the baselines", ""]
    columns = task_gain_columns(table)
    if not columns or "step" not in table.columns:
        return lines + ["Not assessable: results.csv has no per-task `*_gain` column.", ""]
    steps = table.values("step")
    rows = []
    for configuration in table.groups(CONFIGURATION_COLUMNS):
        finite = configuration[np.isfinite(steps[configuration])]
        if not finite.size:
            continue
        last = finite[steps[finite] == steps[finite].max()]
        head = int(last[0])
        label = "/".join(table.text(c)[head] for c in label_columns(table))
        label += f", step {table.text('step')[head]}"
        for name in columns:
            values = table.values(name)[last]
            values = values[np.isfinite(values)]
            low, high = inference.mean_interval(values, bootstrap)
            rows.append([
                code(name), label, str(values.size),
                _points(float(values.mean())) if values.size else "—",
                f"[{_points(low)}, {_points(high)}]",
                f"{int(np.sum(values >= THRESHOLD - _TIE))} of {values.size}",
            ])
    best = []
    for name in columns:
        values = table.values(name)
        if np.isfinite(values).any():
            row = int(np.nanargmax(values))
            best.append([code(name), _points(float(values[row])), row_label(table, row)])
    level = f"{bootstrap.confidence_level:.0%}"
    return lines + [
        "Each probe's accuracy minus the best of the baselines that need no pretraining, in points "
        f"of accuracy, at each configuration's last checkpoint: the mean over seeds with its "
        f"Student-t {level} interval, and the seeds that gain at least "
        f"{format_number(100 * THRESHOLD)} points.",
        "",
        *markdown_table(
            ["gain", "configuration, last step", "seeds", "mean", f"{level} CI", "seeds ≥ +10"], rows
        ),
        "The largest gain of each column over every checkpoint and seed (a maximum over many "
        "cells: optimistic, not an estimate):",
        "",
        *markdown_table(["gain", "largest", "row"], best),
    ]
