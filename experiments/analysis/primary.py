"""The pre-registered primary tests (``config.report.primary_tests``): run, then Holm-adjusted.

Each test (:class:`~experiments.analysis.settings.PrimaryTest`) pairs rows, one difference per seed
(:mod:`experiments.analysis.comparisons`), and tests two hypotheses: the differences of its
statistic are centred on 0, and those of its score. The declared test is the exact Wilcoxon
signed-rank test (by default: its pseudo-median, for differences symmetric about it) or the exact
sign test (the median); neither is a test of the mean, which only the t interval describes. Within
a family, the declared test's p-values are adjusted by Holm's method. The loss is differenced too
and printed as context, outside the family.

:func:`sensitivity_analyses` reruns each test on a subset of its seeds (those whose loss moved by
less than the plateau threshold; those whose two checkpoints are both on the loss plateau): rows
that are exploratory, never part of a Holm family.

A test that cannot be run as declared is an error (:class:`ReportError`), not a quiet omission: a
column it names is absent, a level of its axis is absent, or fewer than 2 seeds can be paired.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.analysis import comparisons
from experiments.analysis.comparisons import Pairs, SeedDifferences
from experiments.analysis.inference import Bootstrap, holm
from experiments.analysis.results import PLATEAU_COLUMN, ResultsTable, loss_column, plateau_known
from experiments.analysis.settings import PrimaryTest
from experiments.core.config_utils import ConfigError


class ReportError(ConfigError):
    """A report that cannot be computed as its config declares (a user error, like a bad field)."""


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One tested (or context) difference of a primary test.

    Attributes:
        test: the declared test.
        role: ``"statistic"``, ``"score"`` or ``"loss"`` (context: not tested, not adjusted).
        differences: the per-seed differences and their inference.
        p_value: the declared test's p-value (NaN for context rows).
        holm_p: the Holm-adjusted p-value within the test's family (NaN for context rows).
    """

    test: PrimaryTest
    role: str
    differences: SeedDifferences
    p_value: float
    holm_p: float


def describe(test: PrimaryTest, which: str = "") -> str:
    """The test's design in words, e.g. ``width 32 − 16 at the last common step, matched on seed;
    rows where objective=adamw``; ``which``: the checkpoints a ``delta_along_steps`` test used."""
    where = ", ".join(f"{c}={v}" for c, v in test.where)
    if test.kind == "paired_difference":
        # Named by level: the difference reads second − first, so "the first" would mislead.
        reference, other = (f"{test.axis} {level}" for level in test.levels)
        at = {
            "last": "the last common step",
            "matched_loss": f"matched loss ({reference}'s first plateau checkpoint, {other}'s of "
            "the nearest held-out gap, within one standard error)",
            "interpolated_loss": f"the same held-out gap ({reference}'s last checkpoint, on the "
            f"plateau; {other} read off a straight line in the gap between its two consecutive "
            "checkpoints that bracket it; the loss difference is 0 by construction)",
        }.get(str(test.step), f"step {test.step}")
        text = f"{test.axis} {test.levels[1]} − {test.levels[0]} at {at}, matched on seed"
    else:
        text = f"last − first of {which or 'the checkpoints of each run'}"
    return text + (f"; rows where {where}" if where else "")


def _check_columns(table: ResultsTable, test: PrimaryTest) -> None:
    named = [test.statistic, test.score, *(c for c, _ in test.where)]
    named += [test.axis] if test.kind == "paired_difference" else []
    missing = [c for c in named if c not in table.columns]
    if missing:
        raise ReportError(
            f"primary test {test.name!r} names {missing}, not columns of results.csv "
            f"(its columns: {', '.join(table.columns)})."
        )
    for level in test.levels:
        if not comparisons.matches(table, test.axis, level).any():
            present = sorted(set(table.text(test.axis)) - {""})
            raise ReportError(
                f"primary test {test.name!r}: no row has {test.axis} = {level!r} "
                f"(results.csv has {test.axis} {present})."
            )


def _seeds(table: ResultsTable, rows: np.ndarray) -> list[str]:
    return sorted(set(table.text("seed")[rows]), key=lambda s: (len(s), s))


def pairs_of(table: ResultsTable, test: PrimaryTest) -> tuple[Pairs, str]:
    """The declared test's pairs (seed -> pairs of rows) and the rule that chose them, in words.

    Raises:
        ReportError: when a column or level is absent, or fewer than 2 seeds can be paired (the
            message names the test and counts the seeds of each side).
    """
    _check_columns(table, test)
    where = dict(test.where)
    selected = comparisons.select(table, where)
    if test.kind == "paired_difference":
        pairs = comparisons.configuration_pairs(table, test.axis, test.levels, where, test.step)
        rule = describe(test)
        sides = [selected & comparisons.matches(table, test.axis, level) for level in test.levels]
        counts = [
            f"{test.axis} {level}: seeds {_seeds(table, side)}"
            for level, side in zip(test.levels, sides, strict=True)
        ]
        unpaired = sorted(set(_seeds(table, sides[0])) & set(_seeds(table, sides[1])) - set(pairs),
                          key=lambda s: (len(s), s))
        if unpaired:  # E.g. no checkpoint at the same loss: said, not silently dropped.
            rule += f"; seeds with both configurations but no pair: {', '.join(unpaired)}"
    else:
        pairs, which = comparisons.checkpoint_pairs(table, where, test.steps)
        rule = describe(test, which)
        counts = [f"runs of seeds {_seeds(table, selected)} in the selected rows"]
    if len(pairs) < 2:
        raise ReportError(
            f"primary test {test.name!r} compares across seeds and needs 2 or more paired seeds; "
            f"it has {len(pairs)} ({'; '.join(counts)}). Run more seeds (config.sweep.seeds) or "
            "declare the test only in studies with several seeds."
        )
    return pairs, rule


def run_primary_tests(
    table: ResultsTable, tests: tuple[PrimaryTest, ...], bootstrap: Bootstrap
) -> tuple[list[Hypothesis], dict[str, str]]:
    """Runs every declared test and Holm-adjusts each family.

    Args:
        table: the results.
        tests: the declared tests, in order.
        bootstrap: resamples, level and seed of the intervals over seeds.

    Returns:
        ``(hypotheses, rules)``: per test its statistic, score and (context) loss rows, in the
        declared order; and test name -> the rule that chose its pairs, in words.

    Raises:
        ReportError: see :func:`pairs_of` (every test is checked before any is computed).
    """
    paired = {test.name: pairs_of(table, test) for test in tests}
    loss = loss_column(table)
    rows = []
    for test in tests:
        pairs = paired[test.name][0]
        for role, column in (("statistic", test.statistic), ("score", test.score), ("loss", loss)):
            if column is None or (role == "loss" and column in (test.statistic, test.score)):
                continue
            result = comparisons.seed_differences(table, column, pairs, bootstrap)
            p_value = math.nan
            if role != "loss":
                p_value = result.wilcoxon_p if test.test == "wilcoxon" else result.sign_p
            rows.append((test, role, result, p_value))
    adjusted = np.full(len(rows), math.nan)
    for family in dict.fromkeys(test.family for test in tests):
        members = [i for i, (test, role, _, _) in enumerate(rows) if test.family == family and role != "loss"]
        adjusted[members] = holm([rows[i][3] for i in members])
    hypotheses = [Hypothesis(*row, float(p)) for row, p in zip(rows, adjusted, strict=True)]
    return hypotheses, {name: rule for name, (_, rule) in paired.items()}


def on_plateau_pairs(table: ResultsTable, pairs: Pairs) -> Pairs:
    """The pairs whose two rows are both on the loss plateau (``on_plateau`` = 1); seeds left
    with none are dropped. Empty when results.csv does not say which checkpoints are on it."""
    if not plateau_known(table):
        return {}
    plateau = table.flags(PLATEAU_COLUMN) == 1
    def on(side: comparisons.Side) -> bool:
        return all(plateau[row] for row in comparisons.rows_of(side))

    kept = {seed: [(a, b) for a, b in rows if on(a) and on(b)] for seed, rows in pairs.items()}
    return {seed: rows for seed, rows in kept.items() if rows}


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """A primary test rerun on a subset of its seeds: exploratory, outside every Holm family.

    Attributes:
        test: the declared test.
        restriction: the subset, in words (e.g. ``|Δ`pretrain_loss_gap`| < 0.005``).
        num_seeds: the seeds of the declared test.
        kept: the seeds in the subset.
        results: the statistic's and the score's differences over the subset (empty when fewer
            than 2 seeds are kept, or when ``note`` says why the subset is not defined).
        note: why the rerun is not computed (e.g. no plateau threshold recorded); ``""`` if it is.
    """

    test: PrimaryTest
    restriction: str
    num_seeds: int
    kept: tuple[str, ...]
    results: tuple[SeedDifferences, ...]
    note: str = ""


def sensitivity_analyses(
    table: ResultsTable,
    tests: tuple[PrimaryTest, ...],
    bootstrap: Bootstrap,
    plateau_threshold: float | None,
) -> list[Sensitivity]:
    """Per declared test: its rerun on the seeds whose loss difference is below
    ``plateau_threshold`` in absolute value, and on the pairs whose checkpoints are both on the
    loss plateau.

    Args:
        table: the results.
        tests: the declared tests (already checked by :func:`run_primary_tests`).
        bootstrap: the intervals' level.
        plateau_threshold: the study's ``config.plateau.threshold`` (nats); ``None``: not
            recorded, and the loss-matched rerun is skipped with a note.

    Returns:
        Two :class:`Sensitivity` per test (loss-matched, then on the plateau), in declared order.
    """
    loss = loss_column(table)
    rows = []
    for test in tests:
        pairs = pairs_of(table, test)[0]

        def rerun(restriction: str, kept_pairs: Pairs, note: str = "") -> Sensitivity:
            results = ()
            if not note and len(kept_pairs) >= 2:
                results = tuple(
                    comparisons.seed_differences(table, column, kept_pairs, bootstrap)
                    for column in (test.statistic, test.score)
                )
            kept = tuple(s for s in pairs if s in kept_pairs)
            return Sensitivity(test, restriction, len(pairs), kept, results, note)

        if loss is None:
            rows.append(rerun("loss-matched seeds", {}, "results.csv has no loss column"))
        elif plateau_threshold is None:
            note = "no plateau threshold recorded (`config.plateau.threshold`)"
            rows.append(rerun(f"seeds with |Δ`{loss}`| below the plateau threshold", {}, note))
        else:
            per_seed = dict(comparisons.seed_differences(table, loss, pairs, bootstrap).per_seed)
            kept = {s: p for s, p in pairs.items() if abs(per_seed.get(s, math.inf)) < plateau_threshold}
            rows.append(rerun(f"seeds with |Δ`{loss}`| < {plateau_threshold:g}", kept))
        if plateau_known(table):
            rows.append(rerun("pairs with both checkpoints on the plateau", on_plateau_pairs(table, pairs)))
        else:
            note = f"results.csv has no `{PLATEAU_COLUMN}` column"
            rows.append(rerun("pairs with both checkpoints on the plateau", {}, note))
    return rows
