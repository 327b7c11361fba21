"""The markdown report of a study: ``results.csv`` in; ``report.md`` and ``plots/*.png`` out.

:func:`write_report` reads the results (:mod:`experiments.analysis.results`) and the report's
settings (:mod:`experiments.analysis.settings`), runs the pre-registered primary tests first
(:mod:`experiments.analysis.primary`), and writes, in this order: the primary tests with their
Holm-adjusted p-values, the plots a reader looks at first, the missing and non-finite cells, and
the exploratory sections (:mod:`experiments.analysis.exploratory`) with the critics' questions
(:mod:`experiments.analysis.critics`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.analysis import critics, exploratory, settings
from experiments.analysis.formatting import code, count, estimate, markdown_table, p_value
from experiments.analysis.inference import MIN_CLUSTERS, MIN_UNITS, smallest_p_value
from experiments.analysis.plots import write_plots
from experiments.analysis.primary import Hypothesis, run_primary_tests
from experiments.analysis.results import (
    CONFIGURATION_COLUMNS,
    RUN_COLUMNS,
    ResultsTable,
    column_role,
    predictor_columns,
    read_results_csv,
    score_columns,
)

DEFAULT_DENSITY_PATTERN = "hessian/{model}/{objective}/seed{seed}/step{step}/density.npz"
REPORT_FILE = "report.md"
REPORT_SCHEMA = settings.SCHEMA  # The fields of `config.report` (see `settings`).
MAX_ROWS_LISTED = 5
# The roles of the columns whose missing cells the report lists (bookkeeping is not analysed).
_ANALYSED_ROLES = ("axis", "indicator", "score", "baseline", "statistic")
_LABEL_COLUMNS = ("setting", "objective", "model")


def _introduction(table: ResultsTable, source: str, report: settings.ReportSettings) -> list[str]:
    """Title, the study's shape, the units and the method."""
    runs = table.groups(RUN_COLUMNS)
    configurations = table.groups(CONFIGURATION_COLUMNS)
    seeds = exploratory.seeds_of(table)
    steps = sorted({s for s in table.values("step") if math.isfinite(s)})
    bootstrap = report.bootstrap
    return [
        "# Do Hessian statistics predict transfer?",
        "",
        f"{table.num_rows} rows of `results.csv`: {count(len(runs), 'pretraining run')} "
        f"({count(len(configurations), 'configuration')} × {count(len(seeds), 'seed')}: "
        f"{', '.join(seeds) or '—'}), "
        f"checkpoints at steps {', '.join(f'{s:g}' for s in steps) or '—'}. Report settings: "
        f"{source}.",
        "",
        "**Units.** The checkpoints of one run are one trajectory, not independent samples, and "
        "runs that share a seed share its initialisation and data order: the *seed* is the unit. "
        "Comparisons of configurations and changes along training give one difference per seed; "
        "means over seeds get Student-t intervals (a bootstrap of 3 seeds would only return their "
        "range). Correlations pooled over the study are resampled by a cluster bootstrap over "
        "seeds (each draw takes every run of a seed with all its checkpoints), "
        f"{bootstrap.num_resamples} resamples (seed {bootstrap.seed}); per-run correlations along "
        "training are averaged per seed. Rank correlations are Kendall's τ-b and Kendall's "
        "partial τ; p-values are exact (sign test, Wilcoxon signed-rank). Intervals are "
        f"{bootstrap.confidence_level:.0%}; a t interval needs {MIN_UNITS} or more seeds, a "
        f"cluster-bootstrap interval {MIN_CLUSTERS} (with 3 seeds it has only 10 distinct "
        "resamples): below that a correlation is printed without an interval and judged not "
        "assessable.",
        "",
    ]


def _primary_rows(hypotheses: Sequence[Hypothesis]) -> list[list[str]]:
    rows = []
    for h in hypotheses:
        d = h.differences
        context = h.role == "loss"
        rows.append(
            [
                h.test.family,
                h.test.name,
                f"{code(d.column)}" + (" (context, untested)" if context else ""),
                estimate(d.estimate, d.interval),
                str(d.num_seeds),
                p_value(d.sign_p),
                p_value(d.wilcoxon_p),
                "—" if context else f"{p_value(h.holm_p)} ({h.test.test})",
            ]
        )
    return rows


def _primary_section(
    hypotheses: Sequence[Hypothesis], rules: Mapping[str, str], report: settings.ReportSettings
) -> list[str]:
    lines = ["## Primary tests (pre-registered)", ""]
    if not report.primary_tests:
        return lines + [
            "None declared (`config.report.primary_tests` is empty): everything in this report "
            "is exploratory.",
            "",
        ]
    level = report.bootstrap.confidence_level
    header = ["family", "test", "difference of", f"mean over seeds [{level:.0%} CI]", "seeds"]
    header += ["sign p", "Wilcoxon p", "Holm-adjusted p (declared test)"]
    counts = sorted({h.differences.num_seeds for h in hypotheses})
    floors = ", ".join(f"{n} seeds: {p_value(smallest_p_value(n))}" for n in counts)
    notes = [
        f"- **{name}**: {rule}."
        + "".join(
            f" Left out: {h.differences.note}."
            for h in hypotheses
            if h.test.name == name and h.differences.note
        )
        for name, rule in rules.items()
    ]
    return lines + [
        "Declared in `config.report.primary_tests` before the run. Each test gives one "
        "difference per seed (the seed is the unit); the statistic's and the score's mean "
        "differences are tested (two-sided, exact), and Holm's method adjusts the declared test's "
        "p-values within each family. The loss difference is context, not a test.",
        "",
        *markdown_table(header, _primary_rows(hypotheses)),
        *notes,
        "",
        f"The smallest p-value an exact two-sided test can give with n seeds is 2/2ⁿ ({floors}).",
        "",
    ]


def _cell_kinds(table: ResultsTable, name: str) -> dict[str, np.ndarray]:
    """The rows of column ``name`` that are empty, NaN, infinite or not a number at all (the
    last only in columns of numbers: labels such as ``objective`` are text, ``on_plateau`` a
    flag)."""
    kinds: dict[str, list[int]] = {"empty": [], "NaN": [], "infinite": [], "text": []}
    for row, cell in enumerate(table.text(name)):
        if not cell:
            kinds["empty"].append(row)
        elif name not in _LABEL_COLUMNS and column_role(name) != "indicator":
            try:
                value = float(cell)
            except ValueError:
                kinds["text"].append(row)
                continue
            if not math.isfinite(value):
                kinds["NaN" if math.isnan(value) else "infinite"].append(row)
    return {kind: np.array(rows, dtype=int) for kind, rows in kinds.items()}


def _row_label(table: ResultsTable, row: int) -> str:
    parts = [table.text(c)[row] for c in ("objective", "model")]
    return "/".join(
        filter(None, parts + [f"seed{table.text('seed')[row]}", f"step{table.text('step')[row]}"])
    )


def _missing_section(table: ResultsTable) -> list[str]:
    """Every empty, NaN, infinite or non-numeric cell of an analysed column, counted and listed."""
    lines = ["## Missing and non-finite cells", ""]
    rows, never = [], []
    for name in table.columns:
        if column_role(name) not in _ANALYSED_ROLES:
            continue
        kinds = _cell_kinds(table, name)
        if len(kinds["empty"]) == table.num_rows:
            never.append(code(name))
            continue
        bad = np.concatenate(list(kinds.values()))
        if not bad.size:
            continue
        listed = ", ".join(_row_label(table, r) for r in sorted(bad)[:MAX_ROWS_LISTED])
        more = f", … ({bad.size - MAX_ROWS_LISTED} more)" if bad.size > MAX_ROWS_LISTED else ""
        why = table.nan_reason(name) or "—"
        excluded = " (not numeric: the column is left out)" if kinds["text"].size else ""
        rows.append([code(name) + excluded, *(str(v.size) for v in kinds.values()), why, listed + more])
    if rows:
        lines += [
            "Cells that are not finite numbers. Each analysis uses the rows where every value it "
            'needs is finite and says how many; empty means "does not apply" (e.g. the Fisher '
            "trace of a non-categorical objective).",
            "",
            *markdown_table(["column", "empty", "NaN", "infinite", "text", "why", "rows"], rows),
        ]
    else:
        lines += ["None: every analysed column that applies is finite in every row.", ""]
    if never:
        lines += [f"Empty in every row (not measured in this study): {', '.join(never)}.", ""]
    return lines


def _columns_section(table: ResultsTable) -> list[str]:
    roles: dict[str, list[str]] = {}
    for name in table.columns:
        numeric = table.is_numeric(name) or column_role(name) in ("axis", "indicator")
        roles.setdefault(column_role(name) if numeric else "empty", []).append(code(name))
    return ["## Columns", "", *(f"- {r}: {', '.join(n)}" for r, n in sorted(roles.items())), ""]


def _read_settings(
    workdir: pathlib.Path, report: Mapping[str, Any] | None, overrides: Mapping[str, int | None]
) -> tuple[settings.ReportSettings, str]:
    """The report's settings and where they come from, in words; records ``report`` if given."""
    if report is not None:
        source = "the study's `config.report`"
    elif (recorded := settings.recorded(workdir)) is not None:
        report, source = recorded, f"`{settings.RECORD_FILE}` (the study's `config.report`)"
    else:
        source = f"defaults (no `{settings.RECORD_FILE}` in the workdir)"
    parsed = settings.read_settings(report)
    changed = {k: v for k, v in overrides.items() if v is not None}
    if changed:
        parsed = dataclasses.replace(parsed, bootstrap=dataclasses.replace(parsed.bootstrap, **changed))
        source += ", with " + ", ".join(f"{k} = {v}" for k, v in changed.items())
    return parsed, source


def write_report(
    workdir: str | os.PathLike[str],
    report: Mapping[str, Any] | None = None,
    *,
    statistics: Sequence[str] | None = None,
    num_resamples: int | None = None,
    seed: int | None = None,
    density_pattern: str = DEFAULT_DENSITY_PATTERN,
) -> pathlib.Path:
    """Reads ``<workdir>/results.csv`` and writes ``<workdir>/report.md`` and ``<workdir>/plots``.

    Args:
        workdir: the study's working directory.
        report: the study's ``config.report`` (see :mod:`experiments.analysis.settings`); it is
            recorded in ``<workdir>/report_config.json``. ``None``: the recorded one, else defaults.
        statistics: predictor columns; default: every statistic and baseline column.
        num_resamples: overrides the settings' bootstrap resamples, for this report only.
        seed: overrides the settings' bootstrap seed, for this report only.
        density_pattern: where spectral densities are, relative to ``workdir``.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: when ``workdir`` has no ``results.csv``.
        ConfigError: a malformed setting (e.g. ``equivalence_margin <= 0``); ``ReportError`` (a
            ``ConfigError``): a primary test that names an absent column or level, or that has
            fewer than 2 paired seeds. Nothing is written then but ``report_config.json``.
        ValueError: a requested statistic is not a numeric column of results.csv.
    """
    workdir = pathlib.Path(workdir)
    csv_path = workdir / "results.csv"
    if not csv_path.exists():
        raise FileNotFoundError(
            f"{csv_path} does not exist: run `python -m experiments.study --workdir={workdir}` first"
        )
    overrides = {"num_resamples": num_resamples, "seed": seed}
    report_settings, source = _read_settings(workdir, report, overrides)
    if report is not None:
        settings.record(workdir, report)
    table = read_results_csv(csv_path)
    predictors = predictor_columns(table) if statistics is None else list(statistics)
    unusable = [name for name in predictors if not table.is_numeric(name)]
    if unusable:
        raise ValueError(f"statistics {unusable} are not numeric columns of results.csv")
    bootstrap = report_settings.bootstrap
    hypotheses, rules = run_primary_tests(table, report_settings.primary_tests, bootstrap)
    scores = score_columns(table)
    first_plots, more_plots = write_plots(table, predictors, scores, workdir, density_pattern)

    def images(paths: Sequence[pathlib.Path]) -> list[str]:
        return [*(f"![{p.stem}](plots/{p.name})" for p in paths), ""]

    lines = _introduction(table, source, report_settings)
    lines += _primary_section(hypotheses, rules, report_settings)
    lines += ["## Plots", "", *images(first_plots)]
    lines += _missing_section(table)
    lines += [
        "## Exploratory analyses",
        "",
        "Everything below is exploratory: not declared before the run and not adjusted for the "
        "many comparisons it makes. An interval that excludes 0 here is a lead for a future "
        "primary test, not a finding.",
        "",
        *exploratory.loss_section(table, predictors, scores, bootstrap),
        *exploratory.within_run_section(table, predictors, scores, bootstrap),
        *exploratory.paired_section(table, scores, bootstrap),
        "## The critics' three questions (exploratory)",
        "",
        *critics.critic_pretraining_data(table, scores, report_settings),
        *critics.critic_probes(table, scores, report_settings),
        *critics.critic_summary(table, predictors, scores, report_settings),
    ]
    lines += _columns_section(table)
    lines += ["## More plots", "", *images(more_plots)]
    path = workdir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path
