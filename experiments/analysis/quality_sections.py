"""The report's data-quality sections: negative trace estimates, the fixed-sample trace against the
fresh-minibatch one, the cost of the measurements and the columns left out as affine copies
(`experiments.analysis.quality` finds them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiments.analysis import quality
from experiments.analysis.formatting import code, markdown_table
from experiments.analysis.results import (
    CONFIGURATION_COLUMNS,
    RUN_COLUMNS,
    ResultsTable,
    format_number,
    label_columns,
)


def row_label(table: ResultsTable, row: int) -> str:
    parts = [table.text(c)[row] for c in label_columns(table)]
    return "/".join(
        filter(None, parts + [f"seed{table.text('seed')[row]}", f"step{table.text('step')[row]}"])
    )


def negative_section(table: ResultsTable) -> list[str]:
    """Negative estimates of the trace-like columns, and those far below zero."""
    lines = ["## Negative trace estimates", ""]
    found = quality.negative_estimates(table)
    if not found:
        return lines + [
            "Not assessable: no trace-like column has a standard error (`<column>_stderr`).",
            "",
        ]
    rows = [
        [code(f.column), str(f.num_rows), str(len(f.negative)), str(len(f.far_below))]
        for f in found
    ]
    lines += [
        "A trace of a Hessian at a minimum is positive; its estimate can still fall below 0 by "
        f"noise. An estimate more than {quality.FAR_BELOW:g} standard errors (`<column>_stderr`) "
        "below 0 is an estimator failure (or a checkpoint far from a minimum), not noise around "
        "a small positive value.",
        "",
        *markdown_table(
            ["column", "rows", "negative", f"> {quality.FAR_BELOW:g} SE below 0"], rows
        ),
    ]
    listed = []
    for f in found:
        far = set(f.far_below)
        value, stderr = table.values(f.column), table.values(f.column + quality.STDERR_SUFFIX)
        for row in f.negative:
            flag = f" (> {quality.FAR_BELOW:g} SE below 0)" if row in far else ""
            listed.append(
                f"- {code(f.column)}: {row_label(table, row)}: "
                f"{format_number(value[row])} ± {format_number(stderr[row])}{flag}"
            )
    if listed:
        lines += ["The negative estimates (configuration/seed/step: estimate ± standard error):", ""]
        lines += [*listed, ""]
    return lines


def fresh_section(table: ResultsTable) -> list[str]:
    """The fixed-sample trace beside the fresh-minibatch trace, per configuration, and the rows
    where they are far apart (`quality.fresh_disagreements`)."""
    lines = ["## The fixed-sample trace against the fresh-minibatch trace", ""]
    found = quality.fresh_disagreements(table)
    if not found:
        return lines + [
            "Not assessable: results.csv has no trace with a fresh-minibatch counterpart "
            "(`<column>_fresh`) and standard errors for both.",
            "",
        ]
    far = quality.FAR_APART
    lines += [
        "The trace is measured on one fixed sample of pretraining data, the same for every "
        "checkpoint: its standard error covers the probes, not the sample. The fresh-minibatch "
        "trace draws new data with every probe, so its standard error covers both. Where they "
        f"differ by more than {far:g} combined standard errors, the fixed sample misstates that "
        "checkpoint's curvature by more than the fixed estimate's error bar says. Where that error "
        "differs from seed to seed it widens the spread over seeds; the part shared by every seed "
        "(one sample for all) is in no interval.",
        "",
    ]
    rows = []
    listed = []
    for f in found:
        fixed, fresh = table.values(f.column), table.values(f.column + quality.FRESH_SUFFIX)
        z_of = dict(zip(f.rows, f.z, strict=True))
        for group in table.groups(CONFIGURATION_COLUMNS, np.asarray(f.rows, dtype=int)):
            difference = fixed[group] - fresh[group]
            spread = format_number(float(np.std(difference, ddof=1))) if group.size > 1 else "—"
            label = "/".join(filter(None, (table.text(c)[group[0]] for c in label_columns(table))))
            apart = sum(abs(z_of[int(r)]) > far for r in group)
            rows.append([code(f.column), label, str(group.size),
                         format_number(float(np.mean(difference))), spread, str(apart)])
        stderr = table.values(f.column + quality.STDERR_SUFFIX)
        fresh_stderr = table.values(f.column + quality.FRESH_SUFFIX + quality.STDERR_SUFFIX)
        listed += [
            f"- {code(f.column)}: {row_label(table, r)}: {format_number(fixed[r])} ± "
            f"{format_number(stderr[r])} against {format_number(fresh[r])} ± "
            f"{format_number(fresh_stderr[r])} (z = {z_of[r]:+.1f})"
            for r in f.far_apart
        ]
    lines += markdown_table(
        ["column", "configuration", "rows", "mean fixed − fresh", "SD of fixed − fresh",
         f"rows > {far:g} SE apart"], rows)
    if listed:
        lines += [f"The rows more than {far:g} combined standard errors apart (configuration/seed/step):",
                  "", *listed, ""]
    return lines


def trace_sections(table: ResultsTable) -> list[str]:
    """The trace estimates' quality: `negative_section`, then `fresh_section`."""
    return negative_section(table) + fresh_section(table)


def cost_section(table: ResultsTable) -> list[str]:
    """Seconds per checkpoint of each timed part (`seconds_*` columns), the first checkpoint of
    each run apart: it compiles what the later ones reuse."""
    names = sorted(name for name in table.columns if name.startswith("seconds_"))
    lines = ["## Cost of the measurements", ""]
    if not names:
        return lines + ["Not assessable: the results have no `seconds_*` column.", ""]
    keys = [name for name in RUN_COLUMNS if name in table.columns]
    runs_of = [tuple(table.text(name)[row] for name in keys) for row in range(table.num_rows)]
    steps = table.values("step") if "step" in table.columns else np.zeros(table.num_rows)
    first_step: dict[tuple[str, ...], float] = {}
    for run, step in zip(runs_of, steps):
        first_step[run] = min(first_step.get(run, np.inf), step)
    first = np.array([step == first_step[run] for run, step in zip(runs_of, steps)])

    def median(values: np.ndarray) -> str:
        values = values[np.isfinite(values)]
        return format_number(float(np.median(values))) if values.size else "—"

    rows = []
    for name in names:
        values = table.values(name)
        finite = values[np.isfinite(values)]
        rows.append([
            code(name), str(finite.size), median(values), median(values[first]),
            median(values[~first]), format_number(float(finite.max())) if finite.size else "—",
            format_number(float(finite.sum()) / 60) if finite.size else "—",
        ])
    return lines + [
        "Wall seconds of each timed part of a checkpoint's jobs, as the stages recorded them "
        "(`seconds_hessian`: the whole measurement stage; `seconds_probe`: the transfer stage). "
        "A checkpoint compiles only what no earlier checkpoint of the same process (or the "
        "persistent compilation cache) compiled: the largest value is typically the first "
        "checkpoint measured, and the medians of a run's first and later checkpoints differ only "
        "where runs do not share programs.",
        "",
        *markdown_table(
            ["part", "checkpoints", "median", "median, first of a run", "median, later", "max",
             "total (minutes)"],
            rows,
        ),
    ]


def duplicates_note(duplicates: Sequence[quality.AffineDuplicate]) -> list[str]:
    if not duplicates:
        return []
    def formula(d: quality.AffineDuplicate) -> str:
        scaled = code(d.base) if d.slope == 1 else f"{d.slope:.4g} · {code(d.base)}"
        shift = f" {'+' if d.offset > 0 else '−'} {abs(d.offset):.4g}" if d.offset else ""
        return f"{code(d.column)} = {scaled}{shift}"

    listed = ", ".join(formula(d) for d in duplicates)
    return [
        "Left out of the exploratory tables below as exact affine functions of another column in "
        f"every row (they would repeat its rows, rescaled): {listed}.",
        "",
    ]
