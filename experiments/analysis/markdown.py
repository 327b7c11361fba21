"""The markdown report of a study: ``results.csv`` in; ``report.md`` and ``plots/*.png`` out.

:func:`write_report` reads the results (`results`) and the report's settings (`settings`), runs the
pre-registered primary tests first (`primary`), and writes in order: the primary tests with their
Holm-adjusted p-values, the plots a reader looks at first, the missing and non-finite cells, and the
exploratory sections (`exploratory`) with the critics' questions (`critics`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.analysis import critics, exploratory, quality, settings
from experiments.analysis.baselines_section import baselines_section
from experiments.analysis.formatting import code, count, estimate, markdown_table, p_value, signed
from experiments.analysis.inference import (
    MIN_CLUSTERS,
    MIN_UNITS,
    minimum_detectable_effect,
    smallest_p_value,
)
from experiments.analysis.plots import write_plots
from experiments.analysis.primary import (
    Hypothesis,
    Sensitivity,
    run_primary_tests,
    sensitivity_analyses,
)
from experiments.analysis.quality_sections import cost_section, duplicates_note, row_label, trace_sections
from experiments.analysis.results import (
    CONFIGURATION_COLUMNS,
    LABEL_COLUMNS,
    RUN_COLUMNS,
    ResultsTable,
    column_role,
    format_number,
    loss_column,
    predictor_columns,
    pretraining_runs,
    read_results_csv,
    score_columns,
)

DEFAULT_DENSITY_PATTERN = "hessian/{model}/{objective}/seed{seed}/step{step}/density.npz"
REPORT_FILE = "report.md"
REPORT_SCHEMA = settings.SCHEMA  # The fields of `config.report` (see `settings`).
MAX_ROWS_LISTED = 5
# The roles of the columns whose missing cells the report lists (bookkeeping is not analysed).
_ANALYSED_ROLES = ("axis", "indicator", "score", "baseline", "statistic")
POWER = 0.8  # Of the minimum detectable effects.
PLATEAU_RECORD = "plateau.json"  # Each language run's plateau criterion, with its threshold.


def _introduction(table: ResultsTable, source: str, report: settings.ReportSettings) -> list[str]:
    """Title, the study's shape, the units and the method."""
    runs = table.groups(RUN_COLUMNS)
    configurations = table.groups(CONFIGURATION_COLUMNS)
    seeds = exploratory.seeds_of(table)
    steps = sorted({s for s in table.values("step") if math.isfinite(s)})
    bootstrap = report.bootstrap
    trained = pretraining_runs(table)
    series = f" — {trained} trained, a series of runs over increasing budgets counting as one —"
    per = len(runs) == len(configurations) * len(seeds)  # Every configuration has every seed.
    return [
        "# Do Hessian statistics predict transfer?",
        "",
        f"{table.num_rows} rows of `results.csv`: {count(len(runs), 'pretraining run')}"
        f"{series if trained > len(runs) else ''} "
        f"({count(len(configurations), 'configuration')} {'×' if per else 'over'} "
        f"{count(len(seeds), 'seed')}: {', '.join(seeds) or '—'}), "
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


def _mde(differences, alpha: float) -> float:
    return minimum_detectable_effect([d for _, d in differences.per_seed], alpha, POWER)


def _reading(h: Hypothesis, alpha: float) -> str:
    """A tested row in words: detected, or not detected and what the test could have detected."""
    if h.role == "loss":
        return "context"
    if h.holm_p <= alpha:
        return f"detected (Holm p ≤ {alpha:g})"
    mde = _mde(h.differences, alpha)
    n = h.differences.num_seeds
    could = f"about ±{format_number(mde)}" if math.isfinite(mde) else "— (too few seeds to say)"
    if smallest_p_value(n) > alpha:
        return (
            f"not detectable: with {n} seeds the declared test's smallest p is "
            f"{p_value(smallest_p_value(n))} > {alpha:g} (a t-test could detect {could})"
        )
    if not math.isfinite(mde):
        return f"not detected; too few seeds to say what the test could detect (needs {MIN_UNITS})"
    return f"not detected; the test could detect about ±{format_number(mde)}"


def _primary_rows(hypotheses: Sequence[Hypothesis], alpha: float) -> list[list[str]]:
    rows = []
    for h in hypotheses:
        d = h.differences
        context = h.role == "loss"
        mde = _mde(d, alpha)
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
                format_number(mde) if math.isfinite(mde) else "—",
                _reading(h, alpha),
            ]
        )
    return rows


def _holm_floor_lines(hypotheses: Sequence[Hypothesis], alpha: float) -> list[str]:
    """Which tested rows cannot pass Holm's first threshold with their seeds' smallest p."""
    lines = []
    tested = [h for h in hypotheses if h.role != "loss"]
    for family in dict.fromkeys(h.test.family for h in tested):
        members = [h for h in tested if h.test.family == family and math.isfinite(h.p_value)]
        first = alpha / len(members) if members else math.nan
        # Holm rejects nothing when no member can pass its first step.
        stuck = all(smallest_p_value(h.differences.num_seeds) > first for h in members)
        for h in members:
            n = h.differences.num_seeds
            floor = smallest_p_value(n)
            if floor <= first:
                continue
            where = f"{h.test.name} ({code(h.differences.column)}, {n} seeds)"
            if floor > alpha:
                lines.append(
                    f"- {where}: its smallest attainable p, 2/2ⁿ = {p_value(floor)}, is above "
                    f"α = {alpha:g}: it cannot be rejected at all."
                )
            else:
                lines.append(
                    f"- {where}: its smallest attainable p, 2/2ⁿ = {p_value(floor)}, is above "
                    f"Holm's first threshold α/{len(members)} = {first:.3g} (family {family!r}, "
                    f"{len(members)} tests)"
                    + (", as is every other test's of its family: none of them can be rejected."
                       if stuck else ": it could only be rejected after another test of its family.")
                )
    if not lines:
        return []
    return ["Attainable p-values against Holm's thresholds:", "", *lines, ""]


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
    header += [f"MDE ({POWER:.0%} power)", "reading"]
    alpha = 1 - level
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
        "difference per seed (the seed is the unit). The statistic's and the score's differences "
        "are tested (two-sided, exact) by the sign test, whose null is a median difference of 0, "
        "and the Wilcoxon signed-rank test, whose null is a pseudo-median of 0 (differences "
        "symmetric about 0); neither tests the mean, which only the t interval describes. Holm's "
        "method adjusts the declared test's p-values within each family. The loss difference is "
        "context, not a test.",
        "",
        f"MDE: the minimum detectable effect, the smallest true mean difference a two-sided "
        f"paired t-test at α = {alpha:g} would detect with {POWER:.0%} power, from the observed "
        "per-seed differences (n seeds, standard deviation s): "
        f"(t_{{{1 - alpha / 2:g}, n−1}} + t_{{{POWER:g}, n−1}}) · s / √n, an approximation that "
        "takes s as the true spread; the exact sign and Wilcoxon tests need somewhat larger "
        "effects. A difference that is not detected is not shown to be absent: the reading says "
        "how large a difference the test could have detected.",
        "",
        *markdown_table(header, _primary_rows(hypotheses, alpha)),
        *notes,
        "",
        f"The smallest p-value an exact two-sided test can give with n seeds is 2/2ⁿ ({floors}).",
        "",
        *_holm_floor_lines(hypotheses, alpha),
    ]


def _per_seed_rows(hypotheses: Sequence[Hypothesis], name: str, on_plateau: Sequence[str] | None):
    """Seed by seed, a test's differences (statistic, score, loss) and whether its pair is on
    the plateau."""
    mine = [h for h in hypotheses if h.test.name == name]
    by_role = [dict(h.differences.per_seed) for h in mine]
    seeds = list(dict.fromkeys(seed for values in by_role for seed in values))
    rows = []
    for seed in seeds:
        row = [seed, *(signed(values[seed]) if seed in values else "—" for values in by_role)]
        if on_plateau is not None:
            row.append("yes" if seed in on_plateau else "no")
        rows.append(row)
    header = ["seed", *(f"Δ{code(h.differences.column)}" for h in mine)]
    header += ["both on the plateau"] if on_plateau is not None else []
    return header, rows


def _sensitivity_rows(analyses: Sequence[Sensitivity], alpha: float) -> list[list[str]]:
    rows = []
    for a in analyses:
        seeds = f"{len(a.kept)} of {a.num_seeds}"
        if a.note:
            rows.append([a.restriction, "—", "—", f"not computed: {a.note}", "—", "—", "—"])
            continue
        if not a.results:
            why = f"not computed: {len(a.kept)} seeds kept, a test needs 2"
            rows.append([a.restriction, seeds, "—", why, "—", "—", "—"])
            continue
        for d in a.results:
            p = d.wilcoxon_p if a.test.test == "wilcoxon" else d.sign_p
            mde = minimum_detectable_effect([v for _, v in d.per_seed], alpha, POWER)
            rows.append(
                [
                    a.restriction,
                    seeds,
                    code(d.column),
                    estimate(d.estimate, d.interval),
                    f"{p_value(p)} ({a.test.test})",
                    format_number(mde) if math.isfinite(mde) else "—",
                    ", ".join(seed for seed, _ in d.per_seed),
                ]
            )
    return rows


def _loss_and_plateau_section(
    table: ResultsTable,
    hypotheses: Sequence[Hypothesis],
    analyses: Sequence[Sensitivity],
    report: settings.ReportSettings,
    plateau_threshold: float | None,
) -> list[str]:
    """Per primary test: its per-seed differences beside the loss's, and its reruns on the
    loss-matched seeds and on the pairs on the plateau (exploratory)."""
    if not report.primary_tests:
        return []
    alpha = 1 - report.bootstrap.confidence_level
    loss = loss_column(table)
    threshold = (
        f"the study's plateau threshold, {plateau_threshold:g} (`config.plateau.threshold`)"
        if plateau_threshold is not None
        else "the study's plateau threshold, which is not recorded here (no "
        f"`config.plateau.threshold`, no `{PLATEAU_RECORD}` under the workdir): skipped"
    )
    lines = [
        "### The loss and the plateau beside each primary test",
        "",
        "Each test's differences seed by seed, the loss's "
        + (f"({code(loss)}) " if loss else "(not measured) ")
        + "beside them. Below each, the same test rerun on two subsets of its seeds: those whose "
        f"|Δloss| is below {threshold}; and the pairs whose two checkpoints are both on the loss "
        "plateau (`on_plateau` = 1). These reruns are **exploratory**: chosen after seeing the "
        "data, not part of any Holm family, their p-values unadjusted.",
        "",
    ]
    for test in report.primary_tests:
        mine = [a for a in analyses if a.test.name == test.name]
        plateau = next((a for a in mine if "plateau" in a.restriction and not a.note), None)
        header, rows = _per_seed_rows(hypotheses, test.name, plateau.kept if plateau else None)
        counted = (
            f" {len(plateau.kept)} of {plateau.num_seeds} seeds have a pair with both checkpoints "
            "on the plateau."
            if plateau
            else ""
        )
        lines += [f"#### {test.name}", "", *markdown_table(header, rows)]
        if counted:
            lines += [counted.strip(), ""]
        sensitivity_header = ["subset (exploratory)", "seeds kept", "difference of"]
        sensitivity_header += ["mean over seeds [CI]", "p (declared test, unadjusted)"]
        sensitivity_header += [f"MDE ({POWER:.0%} power)", "seeds"]
        lines += markdown_table(sensitivity_header, _sensitivity_rows(mine, alpha))
    return lines


def plateau_threshold_of(workdir: pathlib.Path) -> float | None:
    """The plateau threshold the study's runs recorded (``runs/**/plateau.json``), or ``None``
    when none did or they disagree."""
    thresholds = set()
    for path in sorted(workdir.glob(f"runs/**/{PLATEAU_RECORD}")):
        try:
            thresholds.add(float(json.loads(path.read_text())["threshold"]))
        except (ValueError, KeyError, TypeError):
            continue
    return thresholds.pop() if len(thresholds) == 1 else None


def _cell_kinds(table: ResultsTable, name: str) -> dict[str, np.ndarray]:
    """The rows of column ``name`` that are empty, NaN, infinite or not a number at all (the
    last only in columns of numbers: labels such as ``objective`` are text, ``on_plateau`` a
    flag)."""
    kinds: dict[str, list[int]] = {"empty": [], "NaN": [], "infinite": [], "text": []}
    for row, cell in enumerate(table.text(name)):
        if not cell:
            kinds["empty"].append(row)
        elif name not in LABEL_COLUMNS and column_role(name) != "indicator":
            try:
                value = float(cell)
            except ValueError:
                kinds["text"].append(row)
                continue
            if not math.isfinite(value):
                kinds["NaN" if math.isnan(value) else "infinite"].append(row)
    return {kind: np.array(rows, dtype=int) for kind, rows in kinds.items()}


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
        listed = ", ".join(row_label(table, r) for r in sorted(bad)[:MAX_ROWS_LISTED])
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
    plateau_threshold: float | None = None,
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
        plateau_threshold: the study's ``config.plateau.threshold`` (nats), for the primary tests'
            loss-matched reruns; ``None``: the one the runs recorded (:func:`plateau_threshold_of`),
            else those reruns are skipped.

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
    if plateau_threshold is None:
        plateau_threshold = plateau_threshold_of(workdir)
    analyses = sensitivity_analyses(
        table, report_settings.primary_tests, bootstrap, plateau_threshold
    )
    scores = score_columns(table)
    # Exact affine copies of another column (e.g. `*_gain`) only repeat its exploratory rows.
    protected = [loss_column(table) or "", "trace"]
    protected += [c for t in report_settings.primary_tests for c in (t.statistic, t.score)]
    duplicates = quality.affine_duplicates(table, [*scores, *predictors], protected)
    repeated = {d.column for d in duplicates}
    exploratory_scores = [c for c in scores if c not in repeated]
    exploratory_predictors = [c for c in predictors if c not in repeated]
    first_plots, more_plots, plot_notes = write_plots(table, predictors, scores, workdir, density_pattern)

    def images(paths: Sequence[pathlib.Path]) -> list[str]:
        return [*(f"![{p.stem}](plots/{p.name})" for p in paths), ""]

    lines = _introduction(table, source, report_settings)
    lines += _primary_section(hypotheses, rules, report_settings)
    lines += _loss_and_plateau_section(
        table, hypotheses, analyses, report_settings, plateau_threshold
    )
    lines += ["## Plots", "", *images(first_plots), *(f"{note}\n" for note in plot_notes)]
    lines += _missing_section(table)
    lines += trace_sections(table)
    lines += cost_section(table)
    lines += baselines_section(table, bootstrap)
    lines += [
        "## Exploratory analyses",
        "",
        "Everything below is exploratory: not declared before the run and not adjusted for the "
        "many comparisons it makes. An interval that excludes 0 here is a lead for a future "
        "primary test, not a finding.",
        "",
        *duplicates_note(duplicates),
        *exploratory.loss_section(table, exploratory_predictors, exploratory_scores, bootstrap),
        *exploratory.within_run_section(
            table, exploratory_predictors, exploratory_scores, bootstrap
        ),
        *exploratory.paired_section(table, exploratory_scores, bootstrap, repeated),
        "## The critics' three questions (exploratory)",
        "",
        *critics.critic_pretraining_data(table, exploratory_scores, report_settings),
        *critics.critic_probes(table, exploratory_scores, report_settings),
        *critics.critic_summary(
            table, exploratory_predictors, exploratory_scores, report_settings
        ),
    ]
    lines += _columns_section(table)
    lines += ["## More plots", "", *images(more_plots)]
    path = workdir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path
