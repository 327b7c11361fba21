"""The critics' three questions, each answered with a test and a number, or "not measured".

1. *Does the trace need the pretraining data?* Each pretraining-free statistic present
   (:func:`pretraining_free`) against the pretraining-data ``trace``: the difference of their
   ``|tau|`` with transfer, a cluster-bootstrap interval over seeds, and an equivalence test (TOST,
   as interval inclusion) against ``config.report.equivalence_margin``.
2. *Does it need many probes?* The products needed for 5% and 1% relative standard error
   (:func:`probe_budget`), and where measured, how stable the checkpoints' ranking is at smaller
   budgets (``trace_at_<N>``, ``trace_rank_agreement_*``).
3. *Is it only a summary?* Every other statistic against the trace, both partial on the loss.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from experiments.analysis import correlation
from experiments.analysis.correlation import AssociationDifference
from experiments.analysis.formatting import code, estimate, markdown_table, rows_and_runs, signed
from experiments.analysis.inference import MIN_CLUSTERS, Bootstrap, mean_interval
from experiments.analysis.results import (
    RUN_COLUMNS,
    ResultsTable,
    column_role,
    format_number,
    loss_column,
)
from experiments.analysis.settings import ReportSettings

PRETRAINING_FREE = ("trace_downstream", "trace_other_data", "fisher_trace_other_data")
# Rank agreement with the trace that counts as standing in for it (critic 1), and the rank
# agreement of a smaller probe budget with the full one that counts as stable (critic 2).
SUBSTITUTE_TAU = 0.9
STABLE_TAU = 0.9
_MEANING = {
    "trace_downstream": "the Hessian trace of a downstream task's loss (a fitted linear head) on "
    "that task's data",
    "trace_other_data": "the Hessian trace of the pretraining loss on data of another distribution "
    "(`Setting.other_data`: in the language setting, text of the grammar with its rule "
    "probabilities perturbed)",
    "fisher_trace_other_data": "the Fisher trace with labels sampled from the model (label-free) on "
    "that other data (in the vision setting, the target task's images)",
}


def pretraining_free(table: ResultsTable) -> list[str]:
    """Statistics computed without the pretraining data: those of :data:`PRETRAINING_FREE` and
    every column ending in ``_ood`` (out-of-distribution inputs), where numeric."""
    names = [n for n in table.columns if n in PRETRAINING_FREE or n.endswith("_ood")]
    return [n for n in names if column_role(n) == "statistic" and table.is_numeric(n)]


def _verdict(result: AssociationDifference, margin: float | None, level: float) -> str:
    """What an ``|tau|`` difference shows: a difference, equivalence within ``margin``, both or
    neither."""
    low, high = result.interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"not assessable: no interval (a cluster bootstrap needs {MIN_CLUSTERS} or more seeds)"
    shown = []
    if low > 0 or high < 0:
        stronger = result.first if low > 0 else result.second
        shown.append(f"{code(stronger)} is more strongly associated")
    if margin is not None:
        if -margin < result.equivalence_interval[0] and result.equivalence_interval[1] < margin:
            shown.append(f"equivalent within ±{margin:g}")
        elif not shown:
            return f"inconclusive: neither a difference nor equivalence within ±{margin:g} shown"
    return "; ".join(shown) or f"no difference shown at {level:.0%}"


def _difference_rows(
    results: Sequence[AssociationDifference], margin: float | None, level: float
) -> list[list[str]]:
    rows = []
    for r in results:
        equivalence = [estimate(r.difference, r.equivalence_interval)] if margin is not None else []
        rows.append(
            [code(r.first), code(r.score), signed(r.first_value), signed(r.second_value)]
            + [estimate(r.difference, r.interval), *equivalence, _verdict(r, margin, level)]
            + [rows_and_runs(r.num_rows, r.num_runs, r.num_units)]
        )
    return rows


def _table_or_reason(
    header: list[str], rows: list[list[str]], results: Sequence[AssociationDifference]
) -> list[str]:
    """The table, or one line when no row has a value."""
    if any(math.isfinite(r.difference) for r in results):
        return markdown_table(header, rows)
    most = max((r.num_rows for r in results), default=0)
    return [
        f"Not computable: at most {most} rows have every value; a rank correlation needs "
        f"{correlation.MIN_ROWS}.",
        "",
    ]


def critic_pretraining_data(
    table: ResultsTable, scores: Sequence[str], settings: ReportSettings
) -> list[str]:
    """Critic 1: pretraining-free statistics against the pretraining-data trace."""
    lines = ["### Critic 1: does the trace need the pretraining data?", ""]
    rivals = pretraining_free(table)
    if not table.is_numeric("trace") or not rivals:
        absent = "`trace`" if not table.is_numeric("trace") else "no pretraining-free statistic"
        return lines + [
            f"Not measured: {absent} in results.csv (pretraining-free statistics: "
            f"{', '.join(map(code, PRETRAINING_FREE))} or any column ending in `_ood`).",
            "",
        ]
    bootstrap, margin = settings.bootstrap, settings.equivalence_margin
    level = bootstrap.confidence_level
    results = [
        correlation.compare_associations(table, rival, "trace", score, bootstrap)
        for rival in rivals
        for score in scores
    ]
    header = ["statistic", "score", "τ(statistic)", "τ(`trace`)", f"|τ| difference [{level:.0%}]"]
    header += [f"[{1 - 2 * (1 - level):.0%}] for TOST", "verdict", "rows (runs, seeds)"]
    return lines + [
        "Pooled Kendall τ-b with transfer of each statistic that needs no pretraining data, "
        "against the trace on pretraining data, on the rows where all are measured. The |τ| "
        "difference is resampled over seeds (both τ from the same draw). Equivalence (two one-sided "
        f"tests at {1 - level:.0%}): the {1 - 2 * (1 - level):.0%} interval lies within "
        f"±{margin:g} (`config.report.equivalence_margin`).",
        "",
        *(f"- {code(r)}: {_MEANING[r]}." for r in rivals if r in _MEANING),
        "",
        *_agreement_lines(table, rivals, bootstrap),
        "Which is more strongly associated with transfer (|τ| compares strength, whatever the "
        "sign: read the two τ columns for the direction):",
        "",
        *_table_or_reason(header, _difference_rows(results, margin, level), results),
    ]


def _agreement_lines(table: ResultsTable, rivals: Sequence[str], bootstrap: Bootstrap) -> list[str]:
    """Does each pretraining-free statistic rank the checkpoints as the trace does?"""
    rows = []
    for rival in rivals:
        agreement = correlation.association(table, rival, "trace", bootstrap)
        substitutes = agreement.interval[0] >= SUBSTITUTE_TAU  # NaN (no interval) compares False.
        rows.append(
            [
                code(rival),
                estimate(agreement.value, agreement.interval),
                "yes" if substitutes else "not shown",
                rows_and_runs(agreement.num_rows, agreement.num_runs, agreement.num_units),
            ]
        )
    return [
        "Does it stand in for the trace? Kendall τ-b of each with `trace` over the checkpoints "
        f"(cluster bootstrap over seeds): a substitute ranks them alike, τ ≥ {SUBSTITUTE_TAU:g} "
        "with the whole interval.",
        "",
        *markdown_table(
            ["statistic", "τ with `trace` [CI]", f"substitute (τ ≥ {SUBSTITUTE_TAU:g})"]
            + ["rows (runs, seeds)"],
            rows,
        ),
    ]


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


def _budget_lines(table: ResultsTable) -> list[str]:
    budget = probe_budget(table)
    if budget is None:
        return [
            "Products for a relative error: not measured (no `matvecs_5pct`/`matvecs_1pct`, "
            "nor `trace`, `trace_stderr` and `matvecs`).",
            "",
        ]
    how = (
        "as recorded by the measurement stage (`matvecs_5pct`, `matvecs_1pct`: extrapolated "
        "there from the per-probe variance at the products the trace stopped at, as "
        "stderr ∝ 1/√products; stopping once the error looks small makes them optimistic)"
        if budget.method == "measured"
        else "extrapolated from `trace_stderr` at `matvecs`, assuming stderr ∝ 1/√matvecs "
        "(exact for Hutchinson; pessimistic for Hutch++/XTrace)"
    )
    rows = [
        ["5%", format_number(budget.median_5pct), format_number(budget.max_5pct)],
        ["1%", format_number(budget.median_1pct), format_number(budget.max_1pct)],
    ]
    return [
        f"Matrix-vector products for a relative standard error of the trace, {how}, over "
        f"{budget.num_rows} checkpoints (a description of the checkpoints, not an inference):",
        "",
        *markdown_table(["target", "median", "max"], rows),
    ]


def _relative_error(table: ResultsTable) -> str:
    """The reference trace's median relative standard error, in words."""
    if not table.is_numeric("trace_stderr"):
        return "its error not recorded"
    relative = np.abs(table.values("trace_stderr") / table.values("trace"))
    relative = relative[np.isfinite(relative)]
    if not relative.size:
        return "its error not recorded"
    return f"median relative standard error {np.median(relative):.0%}, up to {relative.max():.0%}"


def _budget_number(name: str) -> float:
    found = re.search(r"(\d+)$", name)
    return float(found.group(1)) if found else math.inf


def _stability_lines(table: ResultsTable, scores: Sequence[str], bootstrap: Bootstrap) -> list[str]:
    """Rank stability at smaller budgets: ``trace_at_<N>`` and ``trace_rank_agreement_*``."""
    at_budget = sorted(
        (n for n in table.columns if n.startswith("trace_at_") and table.is_numeric(n)),
        key=_budget_number,
    )
    agreements = [n for n in table.columns if n.startswith("trace_rank_agreement_") and table.is_numeric(n)]
    if not at_budget and not agreements:
        return [
            "Rank stability at smaller budgets: not measured (no `trace_at_<N>` or "
            "`trace_rank_agreement_*` columns): whether fewer probes would rank the checkpoints "
            "the same way is not known from this study.",
            "",
        ]
    lines = []
    if at_budget and table.is_numeric("trace_fresh"):
        at_budget.append("trace_fresh")  # Every fresh probe: the same estimator at its full budget.
    if at_budget:
        score = scores[0] if scores else None
        rows, stable = [], []
        for name in at_budget:
            agreement = correlation.association(table, name, "trace", bootstrap)
            if agreement.value >= STABLE_TAU:
                stable.append(f"{code(name)} (τ {signed(agreement.value)})")
            with_score = correlation.association(table, name, score, bootstrap) if score else None
            rows.append(
                [code(name), estimate(agreement.value, agreement.interval)]
                + ([estimate(with_score.value, with_score.interval)] if score else [])
                + [rows_and_runs(agreement.num_rows, agreement.num_runs, agreement.num_units)]
            )
        header = ["trace at budget", "τ with full-budget `trace`"]
        header += [f"τ with `{score}`"] if score else []
        lines += [
            "Kendall τ-b of the trace after N products with the full-budget trace (rank "
            "agreement of the checkpoints) and with transfer; intervals resample seeds:",
            "",
            *markdown_table(header + ["rows (runs, seeds)"], rows),
            f"Stable ranking (τ ≥ {STABLE_TAU:g} with the full-budget trace): "
            + (
                f"first reached by {stable[0]}."
                if stable
                else f"not reached at any budget measured (up to {code(at_budget[-1])})."
            )
            + " The `trace_at_<N>` and `trace_fresh` estimates draw a fresh minibatch per probe; the "
            "reference `trace` uses one fixed subset (a different estimand) and is itself an "
            f"estimate ({_relative_error(table)}), which caps the agreement any budget can show; "
            "agreement pooled over checkpoints of very different traces is easier than among "
            "checkpoints of one step.",
            "",
        ]
    for name in agreements:
        values = table.values(name)
        per_run = [
            float(np.mean(values[run])) for run in table.groups(RUN_COLUMNS) if np.isfinite(values[run]).all()
        ]
        mean = float(np.mean(per_run)) if per_run else math.nan
        lines.append(
            f"- {code(name)}: mean over {len(per_run)} runs "
            f"{estimate(mean, mean_interval(per_run, bootstrap))}, "
            f"lowest {format_number(min(per_run, default=math.nan))}."
        )
    return lines + [""]


def critic_probes(table: ResultsTable, scores: Sequence[str], settings: ReportSettings) -> list[str]:
    """Critic 2: the probe budget, and rank stability where measured."""
    return [
        "### Critic 2: does the trace need many probes?",
        "",
        *_budget_lines(table),
        *_stability_lines(table, scores, settings.bootstrap),
    ]


def critic_summary(
    table: ResultsTable, predictors: Sequence[str], scores: Sequence[str], settings: ReportSettings
) -> list[str]:
    """Critic 3: every other statistic against the trace, both partial on the loss."""
    lines = ["### Critic 3: is the trace only a summary?", ""]
    free = set(pretraining_free(table))
    others = [p for p in predictors if column_role(p) == "statistic" and p != "trace" and p not in free]
    if not table.is_numeric("trace") or not others:
        return lines + [
            "Not measured: `trace` and at least one other statistic (top eigenvalue, "
            "per-layer traces, density, flatness, ...) are needed.",
            "",
        ]
    loss = loss_column(table)
    bootstrap = settings.bootstrap
    results = [
        correlation.compare_associations(table, other, "trace", score, bootstrap, control=loss)
        for other in others
        for score in scores
    ]
    given = f"partial Kendall τ given {code(loss)}" if loss else "Kendall τ-b (no loss column)"
    tau = "partial τ" if loss else "τ"
    header = ["statistic", "score", f"{tau}(statistic)", f"{tau}(`trace`)"]
    header += [f"|τ| difference [{bootstrap.confidence_level:.0%}]", "verdict", "rows (runs, seeds)"]
    return lines + [
        f"Each other statistic against the trace by {given} with transfer, on the rows where all "
        "are measured; the |τ| difference is resampled over seeds.",
        "",
        *_table_or_reason(header, _difference_rows(results, None, bootstrap.confidence_level), results),
    ]
