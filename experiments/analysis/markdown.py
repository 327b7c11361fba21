"""The markdown report of a study: ``results.csv`` in; ``report.md`` and ``plots/*.png`` out.

:func:`write_report` reads the results (:mod:`experiments.analysis.results`), correlates every
predictor with every transfer score (:mod:`experiments.analysis.statistics`), draws the plots
(:mod:`experiments.analysis.plots`) and writes the tables, the answers to the critics' three
questions and links to the plots into ``report.md``.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence

from experiments.analysis.plots import write_plots
from experiments.analysis.results import (
    TRACE_STATISTICS,
    ResultsTable,
    column_role,
    format_number,
    read_results_csv,
    score_columns,
)
from experiments.analysis.statistics import (
    SWEEP_AXES,
    Comparison,
    Correlation,
    SweepAxis,
    compare_predictors,
    correlation_table,
    probe_budget,
    rank_predictors,
)

DEFAULT_DENSITY_PATTERN = "hessian/{model}/{objective}/seed{seed}/step{step}/density.npz"
REPORT_FILE = "report.md"


def _format_coefficient(value: float, interval: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "NaN"
    low, high = (format_number(v) if math.isnan(v) else f"{v:+.2f}" for v in interval)
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
    return [
        "## The critics' three questions",
        "",
        *_pretraining_data_question(table, present, scores, bootstrap),
        *_probes_question(table),
        *_summary_question(table, correlations, present, scores, bootstrap),
        "",
    ]


def _pretraining_data_question(
    table: ResultsTable, present: set[str], scores: Sequence[str], bootstrap: Mapping[str, float]
) -> list[str]:
    lines = ["### 1. Does the trace need the pretraining data?", ""]
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
    return lines + [""]


def _probes_question(table: ResultsTable) -> list[str]:
    lines = ["### 2. How many probes?", ""]
    budget = probe_budget(table)
    if budget is None:
        return lines + ["Not answerable: no `matvecs_5pct`/`matvecs_1pct` nor `trace_stderr`."]
    how = (
        "as recorded by the Hessian stage (`matvecs_5pct`, `matvecs_1pct`; see its docs for "
        "how it obtains them)"
        if budget.method == "measured"
        else "extrapolated from `trace_stderr` at `matvecs`, assuming stderr ∝ 1/√matvecs "
        "(exact for Hutchinson; pessimistic for Hutch++/XTrace)"
    )
    return lines + [
        f"Matrix-vector products for a relative standard error of the trace, {how}, "
        f"over {budget.num_rows} rows:",
        "",
        *_markdown_table(
            ["target", "median", "max"],
            [
                ["5%", format_number(budget.median_5pct), format_number(budget.max_5pct)],
                ["1%", format_number(budget.median_1pct), format_number(budget.max_1pct)],
            ],
        ),
    ]


def _summary_question(
    table: ResultsTable,
    correlations: Sequence[Correlation],
    present: set[str],
    scores: Sequence[str],
    bootstrap: Mapping[str, float],
) -> list[str]:
    lines = ["### 3. Is the trace only a summary?", ""]
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
    return lines


def _introduction(table: ResultsTable, csv_name: str, bootstrap: Mapping[str, float]) -> list[str]:
    """The report's title, method, columns and sweep axes, up to the correlation tables."""
    roles: dict[str, list[str]] = {}
    for name in table.columns:
        role = (
            column_role(name) if table.is_numeric(name) or column_role(name) == "axis" else "empty"
        )
        roles.setdefault(role, []).append(f"`{name}`")
    return [
        "# Do Hessian statistics predict transfer?",
        "",
        f"{table.num_rows} rows from `{csv_name}`. Kendall τ-b and Spearman ρ "
        "(`scipy.stats`), percentile-bootstrap "
        f"{bootstrap['confidence_level']:.0%} intervals from {bootstrap['num_resamples']} "
        f"resamples (seed {bootstrap['seed']}).",
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
    plots = write_plots(table, predictors, scores, workdir, density_pattern)

    lines = _introduction(table, csv_path.name, bootstrap)
    for score in scores:
        lines += _correlation_section(correlations, score, SWEEP_AXES)
    lines += ["## Which statistic predicts transfer best", ""]
    lines += _ranking_section(correlations, scores, SWEEP_AXES)
    lines += _questions_section(table, correlations, scores, bootstrap)
    lines += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})" for p in plots), ""]
    report = workdir / REPORT_FILE
    report.write_text("\n".join(lines))
    return report
