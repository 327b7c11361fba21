"""The exploratory sections of the report: associations, within-run trends, paired comparisons.

Exploratory means: not declared before the run, not adjusted for the many comparisons, so a
single interval that excludes 0 here is a lead, not a finding. Every interval still resamples
independent units (runs or seeds), never the checkpoints of one run.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from experiments.analysis import comparisons, correlation
from experiments.analysis.formatting import (
    code,
    count,
    estimate,
    markdown_table,
    p_value,
    rows_and_runs,
    signed,
)
from experiments.analysis.inference import MIN_CLUSTERS, Bootstrap
from experiments.analysis.results import (
    RUN_COLUMNS,
    TRACE_STATISTICS,
    ResultsTable,
    loss_column,
    plateau_known,
)

# The columns the paired comparisons show: the loss, the traces, the top eigenvalue, the scores.
COMPARED_STATISTICS = (*TRACE_STATISTICS, "top_eigenvalue")
MAX_SEEDS_LISTED = 10


def seeds_of(table: ResultsTable) -> list[str]:
    """The seeds of the study, in numeric order."""
    seeds = [table.text("seed")[group[0]] for group in table.groups(["seed"])]
    return [seed for seed in seeds if seed]


def loss_section(
    table: ResultsTable, predictors: Sequence[str], scores: Sequence[str], bootstrap: Bootstrap
) -> list[str]:
    """Each predictor's pooled tau with transfer, and its partial tau given the loss."""
    lines = ["### Better than the loss? Association with transfer given the loss", ""]
    loss = loss_column(table)
    if loss is None:
        return lines + [
            "Not measured: results.csv has no numeric `pretrain_loss_gap` or "
            "`pretrain_loss`, so no statistic can be shown to add to the loss.",
            "",
        ]
    lines += [
        f"Pooled Kendall τ-b of each predictor with transfer over all checkpoints of all runs, "
        f"and Kendall's partial τ given the loss ({code(loss)}). Intervals: cluster bootstrap "
        "over seeds (each draw takes every run of a seed). Where the partial τ's interval "
        "excludes 0 the verdict is \"partial τ ≠ 0 (unadjusted)\": a lead that the statistic adds "
        "to the loss, one of many unadjusted intervals, not a finding; no other claim that it "
        "predicts better than the loss is made. Pooled associations mix configurations and "
        "training steps: a statistic that grows with training like transfer does is associated "
        "with it for that reason alone, which the `step` row (training progress as a predictor) "
        "measures.",
        "",
    ]
    header = ["predictor", "τ [CI]", f"partial τ given {code(loss)} [CI]", "verdict", "rows (runs, seeds)"]
    for score in scores:
        rows, computable, why = [], False, ""
        # The step is a baseline too: anything that grows with training tracks transfer that way.
        progress = ["step"] if table.is_numeric("step") and "step" not in predictors else []
        for predictor in [loss, *progress, *(p for p in predictors if p != loss)]:
            plain = correlation.association(table, predictor, score, bootstrap)
            computable |= math.isfinite(plain.value)
            why = why or plain.note
            if predictor == loss:
                rows.append(
                    [
                        code(loss),
                        estimate(plain.value, plain.interval),
                        "(the loss itself)",
                        "—",
                        rows_and_runs(plain.num_rows, plain.num_runs, plain.num_units),
                    ]
                )
                continue
            partial = correlation.association(table, predictor, score, bootstrap, control=loss)
            rows.append(
                [
                    code(predictor),
                    estimate(plain.value, plain.interval),
                    estimate(partial.value, partial.interval),
                    _adds(partial),
                    rows_and_runs(plain.num_rows, plain.num_runs, plain.num_units),
                ]
            )
        lines += [f"#### Transfer score {code(score)}", ""]
        lines += markdown_table(header, rows) if computable else [f"Not computable: {why}.", ""]
    return lines


def _adds(partial: correlation.Association) -> str:
    """Whether a predictor is shown to add to the loss: its partial tau's interval excludes 0."""
    low, high = partial.interval
    if not math.isfinite(partial.value):
        return "— (undefined: the loss orders it completely, or too few rows)"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"not assessable ({partial.num_units} seeds; an interval needs {MIN_CLUSTERS})"
    return "partial τ ≠ 0 (unadjusted)" if low > 0 or high < 0 else "not shown to add"


def within_run_section(
    table: ResultsTable, predictors: Sequence[str], scores: Sequence[str], bootstrap: Bootstrap
) -> list[str]:
    """Per-run tau along checkpoints, summarised across runs (all checkpoints; plateau ones)."""
    lines = [
        "### Along training iterations: Kendall τ within each run",
        "",
        "τ-b of a predictor and a score over the checkpoints of one pretraining run, computed per "
        "run, averaged over the runs of each seed (runs that share a seed share its "
        "initialisation and data order, so the seed is the unit) and summarised across seeds: "
        "the mean, a Student-t interval, and an exact sign test across seeds (are positive and "
        "negative mean τ equally likely?). Runs with "
        f"fewer than {correlation.MIN_ROWS} checkpoints with both values give no τ (over two "
        "checkpoints it is ±1 by construction).",
        "",
    ]
    selections = [("all checkpoints", None)]
    if plateau_known(table):
        selections.append(("checkpoints on the loss plateau", table.flags("on_plateau") == 1))
    header = ["predictor", "mean τ [CI over seeds]", "runs (+, −)", "seeds", "sign test p (seeds)"]
    header += ["runs without τ"]
    for score in scores:
        for label, rows in selections:
            results = [correlation.within_run(table, p, score, bootstrap, rows) for p in predictors]
            lines += [f"#### {code(score)}, {label}", ""]
            if not any(r.taus for r in results):
                runs = len(table.groups(RUN_COLUMNS, rows))
                lines += [
                    f"Not computable: none of the {count(runs, 'run')} has "
                    f"{correlation.MIN_ROWS} or more such checkpoints with both values.",
                    "",
                ]
                continue
            lines += markdown_table(header, [_within_run_row(r) for r in results])
    return lines


def _within_run_row(result: correlation.WithinRun) -> list[str]:
    positive = sum(t > 0 for t in result.taus)
    negative = sum(t < 0 for t in result.taus)
    return [
        code(result.statistic),
        estimate(result.mean, result.interval),
        f"{len(result.taus)} ({positive} +, {negative} −)",
        str(result.num_units),
        p_value(result.sign_p),
        str(result.num_skipped),
    ]


def paired_section(
    table: ResultsTable,
    scores: Sequence[str],
    bootstrap: Bootstrap,
    left_out: Collection[str] = (),
) -> list[str]:
    """Configuration comparisons as paired differences across seeds, at the last common step
    (``left_out``: columns not shown, e.g. exact copies of another)."""
    lines = ["### Paired comparisons of configurations across seeds", ""]
    seeds = seeds_of(table)
    if len(seeds) < 2:
        return lines + [
            f"Needs ≥ 2 seeds: this study has {len(seeds)} (seed {', '.join(seeds) or 'none'}). "
            "Comparing two configurations needs a difference per seed; within one seed, the "
            "checkpoints of a run are not independent replicates.",
            "",
        ]
    loss = loss_column(table)
    columns = [
        c
        for c in (loss, *COMPARED_STATISTICS, *scores)
        if c and table.is_numeric(c) and c not in left_out
    ]
    lines += [
        "Each comparison matches the two configurations on seed and step (the last step both "
        "have) and every other column; the unit is the seed. Mean difference (second − first) "
        "over seeds with a Student-t interval over seeds, exact two-sided sign and "
        "Wilcoxon signed-rank p-values (not adjusted for multiplicity).",
        "",
    ]
    for axis, levels, where in comparisons.comparisons_of(table):
        pairs = comparisons.configuration_pairs(table, axis, levels, where)
        if not pairs:
            continue
        fixed = ", ".join(f"{c}={v}" for c, v in where.items() if v)
        lines += [f"#### {axis}: {levels[1]} − {levels[0]}" + (f" ({fixed})" if fixed else ""), ""]
        if len(pairs) < 2:
            lines += [f"Needs ≥ 2 seeds with both configurations; has {len(pairs)}.", ""]
            continue
        rows = [_difference_row(comparisons.seed_differences(table, c, pairs, bootstrap)) for c in columns]
        header = ["column", "mean difference [CI]", "seeds", "sign p", "Wilcoxon p", "per seed"]
        lines += markdown_table(header, rows)
    return lines


def _difference_row(result: comparisons.SeedDifferences) -> list[str]:
    listed = ", ".join(f"{seed}: {signed(d)}" for seed, d in result.per_seed[:MAX_SEEDS_LISTED])
    more = f", … ({result.num_seeds - MAX_SEEDS_LISTED} more)" if result.num_seeds > MAX_SEEDS_LISTED else ""
    note = f" ({result.note})" if result.note else ""
    return [
        code(result.column),
        estimate(result.estimate, result.interval),
        str(result.num_seeds),
        p_value(result.sign_p),
        p_value(result.wilcoxon_p),
        listed + more + note,
    ]
