"""Tests for what the report says beside its primary tests: minimum detectable effects, Holm's
attainable thresholds, the loss and the plateau of each test's pairs, negative trace estimates and
columns that only repeat another."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
from scipy import stats

from experiments.analysis import (
    baselines_section,
    inference,
    markdown,
    primary,
    quality,
    quality_sections,
    results,
    settings,
)
from tests.experiments import report_tables
from tests.experiments.test_report import FAST, section, write_study

ALGORITHM = report_tables.LANGUAGE_TESTS[2]  # adversarial - adamw at width 32, the last step.


@pytest.mark.parametrize("n", [3, 5, 8, 20])
def test_minimum_detectable_effect_is_the_t_test_s_at_80_percent_power(n):
    differences = np.random.default_rng(n).normal(0.3, 2.0, n)
    s = differences.std(ddof=1)
    expected = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * s / math.sqrt(n)
    mde = inference.minimum_detectable_effect(differences, alpha=0.05, power=0.8)
    assert mde == pytest.approx(expected, rel=1e-12)
    # The approximation: the exact (noncentral t) power of the t-test at that effect is near 80%.
    critical, noncentrality = stats.t.ppf(0.975, n - 1), mde / (s / math.sqrt(n))
    power = stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.cdf(-critical, n - 1, noncentrality)
    assert 0.75 < power < 0.81
    assert inference.minimum_detectable_effect(differences, alpha=0.01) > mde
    assert math.isnan(inference.minimum_detectable_effect(differences[:2]))


def _primary_table(report: str) -> list[list[str]]:
    text = section(report, "## Primary tests (pre-registered)")
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| primary |")
    ]


def test_primary_rows_print_the_mde_and_say_what_was_not_detected(tmp_path):
    rows = report_tables.language_rows(seeds=range(6))
    for row in rows:  # No width effect on the probes: the size test's score is not detected.
        if row["width"] == 32:
            row["linear_probe_acc"] -= 0.05
    write_study(tmp_path, rows)
    config = dict(FAST, primary_tests=report_tables.LANGUAGE_TESTS)
    report = markdown.write_report(tmp_path, config).read_text()
    table = results.read_results_csv(tmp_path / "results.csv")
    hypotheses, _ = primary.run_primary_tests(
        table, settings.read_settings(config).primary_tests, inference.Bootstrap(200)
    )
    printed = {(r[1], r[2]): r for r in _primary_table(report)}
    for h in hypotheses:
        key = (
            h.test.name,
            f"`{h.differences.column}`" + (" (context, untested)" if h.role == "loss" else ""),
        )
        mde = inference.minimum_detectable_effect([d for _, d in h.differences.per_seed])
        assert printed[key][8] == results.format_number(mde)
    size_score = printed["size", "`linear_probe_acc`"]
    assert size_score[9].startswith("not detected; the test could detect about ±")
    assert size_score[9].endswith(size_score[8])
    assert "mean differences are tested" not in report
    assert "pseudo-median" in section(report, "## Primary tests (pre-registered)")


@pytest.mark.parametrize(
    ("num_seeds", "expected"),
    [
        (7, None),  # 2/2^7 = 0.0156 <= 0.05/2.
        # 0.031 > 0.025, and the family's other test has 6 seeds too: Holm can reject neither.
        (6, "as is every other test's of its family: none of them can be rejected"),
        (5, "cannot be rejected at all"),  # 0.0625 > 0.05.
    ],
)
def test_holm_s_first_threshold_against_the_smallest_attainable_p(tmp_path, num_seeds, expected):
    write_study(tmp_path, report_tables.language_rows(seeds=range(num_seeds)))
    report = markdown.write_report(tmp_path, dict(FAST, primary_tests=[ALGORITHM])).read_text()
    text = section(report, "## Primary tests (pre-registered)")
    readings = [row[9] for row in _primary_table(report) if "context" not in row[2]]
    if num_seeds == 5:  # 2/2^5 > 0.05: no exact test can reject, whatever the effect.
        assert all(
            r.startswith("not detectable: with 5 seeds the declared test's smallest p is 0.062")
            for r in readings
        )
    else:
        assert not any(r.startswith("not detectable") for r in readings)
    if expected is None:
        assert "Holm's thresholds" not in text
    else:
        lines = [line for line in text.splitlines() if expected in line]
        assert len(lines) == 2  # The statistic and the score.
        assert f"{num_seeds} seeds" in lines[0]


def test_holm_floor_lines_tell_a_stuck_family_from_one_another_test_can_open():
    """Holm's first step needs p <= alpha/m: with 6 seeds (smallest p 2/2^6 = 0.031) and m = 2 a
    test can still be rejected once a family member with 8 seeds (0.0078) is; a family whose every
    member has 6 seeds can reject nothing."""

    def hypothesis(name, family, num_seeds):
        return types.SimpleNamespace(
            role="statistic", p_value=0.5, test=types.SimpleNamespace(name=name, family=family),
            differences=types.SimpleNamespace(num_seeds=num_seeds, column="trace"),
        )

    mixed = markdown._holm_floor_lines([hypothesis("a", "f", 6), hypothesis("b", "f", 8)], 0.05)
    stuck = markdown._holm_floor_lines([hypothesis("a", "g", 6), hypothesis("b", "g", 6)], 0.05)
    assert [line for line in mixed if line.startswith("- ")] == [
        "- a (`trace`, 6 seeds): its smallest attainable p, 2/2ⁿ = 0.031, is above Holm's first "
        "threshold α/2 = 0.025 (family 'f', 2 tests): it could only be rejected after another "
        "test of its family."
    ]
    assert len([line for line in stuck if "none of them can be rejected" in line]) == 2


def _algorithm_rows(loss_deltas, off_plateau=()):
    """Five seeds whose adversarial loss gap at the last step differs from AdamW's by
    ``loss_deltas[seed]``; the adversarial last checkpoint of ``off_plateau`` seeds is off it."""
    rows = report_tables.language_rows(seeds=range(len(loss_deltas)))
    last = max(report_tables.STEPS)
    reference = {
        (r["seed"], r["width"]): r["pretrain_loss_gap"]
        for r in rows
        if r["objective"] == "adamw" and r["step"] == last
    }
    for row in rows:
        if row["objective"] == "adversarial" and row["step"] == last:
            row["pretrain_loss_gap"] = reference[row["seed"], row["width"]] + loss_deltas[row["seed"]]
            if row["seed"] in off_plateau:
                row["on_plateau"] = "false"
    return rows


def _trace_differences(table, seeds):
    pairs = primary.pairs_of(table, settings.read_settings({"primary_tests": [ALGORITHM]}).primary_tests[0])[
        0
    ]
    trace = table.values("trace")
    return [trace[b] - trace[a] for seed in seeds for a, b in pairs[seed]]


def test_reruns_on_loss_matched_seeds_and_on_plateau_pairs():
    rows = _algorithm_rows([0.001, -0.002, 0.02, 0.003, -0.03], off_plateau=(1,))
    table = results.ResultsTable.from_rows(rows)
    tests = settings.read_settings({"primary_tests": [ALGORITHM]}).primary_tests
    loss_matched, plateau = primary.sensitivity_analyses(table, tests, inference.Bootstrap(200), 0.005)
    assert loss_matched.kept == ("0", "1", "3") and loss_matched.num_seeds == 5
    trace, score = loss_matched.results
    assert (trace.column, score.column) == ("trace", "linear_probe_acc")
    assert trace.num_seeds == score.num_seeds == 3
    assert trace.estimate == pytest.approx(np.mean(_trace_differences(table, ["0", "1", "3"])))
    assert plateau.kept == ("0", "2", "3", "4")
    assert plateau.results[0].num_seeds == 4
    assert plateau.results[0].estimate == pytest.approx(
        np.mean(_trace_differences(table, ["0", "2", "3", "4"]))
    )
    # Without a recorded threshold the loss-matched rerun is skipped and says why.
    skipped, _ = primary.sensitivity_analyses(table, tests, inference.Bootstrap(200), None)
    assert not skipped.results and "config.plateau.threshold" in skipped.note
    # One seed kept: no test.
    one, _ = primary.sensitivity_analyses(table, tests, inference.Bootstrap(200), 0.0015)
    assert one.kept == ("0",) and not one.results


def test_the_report_prints_per_seed_loss_and_the_reruns(tmp_path):
    write_study(tmp_path, _algorithm_rows([0.001, -0.002, 0.02, 0.003, -0.03], off_plateau=(1,)))
    record = tmp_path / "runs" / "some_model" / "seed0" / markdown.PLATEAU_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"threshold": 0.005, "start": 2000, "pairs": []}))
    report = markdown.write_report(tmp_path, dict(FAST, primary_tests=[ALGORITHM])).read_text()
    text = section(report, "### The loss and the plateau beside each primary test")
    assert "| seed | Δ`trace` | Δ`linear_probe_acc` | Δ`pretrain_loss_gap` | both on the plateau |" in text
    assert "| 2 |" in text and "+0.0200 | yes |" in text and "| no |" in text
    assert "4 of 5 seeds have a pair with both checkpoints on the plateau" in text
    assert "seeds with \\|Δ`pretrain_loss_gap`\\| < 0.005 | 3 of 5 | `trace`" in text
    assert "pairs with both checkpoints on the plateau | 4 of 5 | `trace`" in text
    assert "exploratory" in text and "0.005 (`config.plateau.threshold`)" in text
    # An explicit threshold overrides the recorded one; none anywhere skips with a sentence.
    report = markdown.write_report(
        tmp_path, dict(FAST, primary_tests=[ALGORITHM]), plateau_threshold=0.0025
    ).read_text()
    assert "< 0.0025 | 2 of 5 |" in report
    record.unlink()
    report = markdown.write_report(tmp_path, dict(FAST, primary_tests=[ALGORITHM])).read_text()
    assert "not computed: no plateau threshold recorded" in report


def test_negative_trace_estimates_are_counted_and_those_far_below_zero_listed(tmp_path):
    rows = report_tables.language_rows(seeds=(0, 1, 2))
    rows[0].update(trace=-5.0, trace_stderr=1.0)  # 5 standard errors below 0: a failure.
    rows[1].update(trace=-0.5, trace_stderr=1.0)  # Noise around a small value.
    rows[2].update(trace=-3.0, trace_stderr=1.0)
    rows[3].update(trace=-1.0, trace_stderr="")  # No standard error: not counted.
    for row in rows:
        row["trace_fresh"], row["trace_fresh_stderr"] = 1.0 + row["seed"], 0.1
    rows[4].update(trace_downstream=-100.0)  # No `trace_downstream_stderr`: not assessed.
    write_study(tmp_path, rows)
    table = results.read_results_csv(tmp_path / "results.csv")
    found = {f.column: f for f in quality.negative_estimates(table)}
    assert set(found) == {"trace", "trace_fresh"}
    assert found["trace"].negative == (0, 1, 2) and found["trace"].far_below == (0, 2)
    assert found["trace"].num_rows == len(rows) - 1
    assert found["trace_fresh"].negative == ()
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert report.index("## Missing and non-finite cells") < report.index("## Negative trace estimates")
    text = section(report, "## Negative trace estimates")
    assert f"| `trace` | {len(rows) - 1} | 3 | 2 |" in text
    assert "| `trace_fresh` | 60 | 0 | 0 |" in text
    assert "- `trace`: adamw/text_transformer_w16_d2/seed0/step250: -5 ± 1 (> 2 SE below 0)" in text
    assert "seed0/step1000: -0.5 ± 1\n" in text


def test_fixed_sample_traces_far_from_the_fresh_minibatch_trace_are_counted_and_listed(tmp_path):
    rows = report_tables.language_rows(seeds=(0, 1, 2))
    for row in rows:
        row.update(trace=5.0, trace_stderr=0.3, trace_fresh=5.5, trace_fresh_stderr=0.4)  # z = -1.
    rows[0].update(trace=7.0)  # (7 - 5.5) / 0.5 = +3: at the bar, not over it.
    rows[1].update(trace=3.0)  # (3 - 5.5) / 0.5 = -5: far apart.
    rows[2].update(trace_fresh_stderr="")  # No standard error: not compared.
    write_study(tmp_path, rows)
    table = results.read_results_csv(tmp_path / "results.csv")
    (found,) = quality.fresh_disagreements(table)
    assert found.column == "trace" and found.far_apart == (1,)
    assert len(found.rows) == len(rows) - 1 and 2 not in found.rows
    assert found.z[:2] == pytest.approx((3.0, -5.0))
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert report.index("## Negative trace estimates") < report.index("## The fixed-sample trace")
    text = section(report, "## The fixed-sample trace against the fresh-minibatch trace")
    table_rows = [line for line in text.splitlines() if line.startswith("| `trace` |")]
    assert sum(int(line.split("|")[3]) for line in table_rows) == len(rows) - 1
    assert sum(int(line.split("|")[6]) for line in table_rows) == 1
    listed = "- `trace`: adamw/text_transformer_w16_d2/seed0/step1000: 3 ± 0.3 against 5.5 ± 0.4"
    assert listed + " (z = -5.0)" in text
    no_fresh = results.ResultsTable.from_rows([{"seed": "0", "step": "1", "trace": "1"}])
    assert "Not assessable" in "\n".join(quality_sections.fresh_section(no_fresh))


def test_affine_copies_of_a_column_are_left_out_of_the_exploratory_tables(tmp_path):
    rows = report_tables.language_rows(seeds=(0, 1, 2))
    for row in rows:
        row["linear_probe_gain"] = row["linear_probe_acc"] - 0.3
        row["trace_per_param"] = row["trace"] / 3200
        row["trace_squared"] = row["trace"] ** 2  # Monotone, not affine: kept.
        row["few_values_acc"] = float(row["width"])  # Two values: any line fits, kept.
        row["width_acc"] = 2.0 * row["width"] + 1  # Affine in a two-valued column: kept.
    table = results.ResultsTable.from_rows(rows)
    columns = [*results.score_columns(table), *results.predictor_columns(table)]
    # The fixture's gap is its loss minus 2: a copy too, unless kept (the report keeps the loss).
    assert "pretrain_loss_gap" in {d.column for d in quality.affine_duplicates(table, columns)}
    found = {d.column: d for d in quality.affine_duplicates(table, columns, keep=("pretrain_loss_gap",))}
    assert set(found) == {"linear_probe_gain", "trace_per_param"}
    assert found["linear_probe_gain"].base == "linear_probe_acc"
    assert (found["linear_probe_gain"].slope, found["linear_probe_gain"].offset) == (1.0, pytest.approx(-0.3))
    assert found["trace_per_param"].slope == pytest.approx(1 / 3200) and found["trace_per_param"].offset == 0
    kept = ("pretrain_loss_gap", "linear_probe_gain", "trace_per_param")
    assert not quality.affine_duplicates(table, columns, keep=kept)
    write_study(tmp_path, rows)
    report = markdown.write_report(tmp_path, FAST).read_text()
    exploratory = report[report.index("## Exploratory analyses") : report.index("## Columns")]
    assert "`linear_probe_gain` = `linear_probe_acc` − 0.3" in exploratory
    assert "`trace_per_param` = 0.0003125 · `trace`" in exploratory
    assert "| `trace_per_param` |" not in exploratory and "`linear_probe_gain`," not in exploratory
    assert "| `trace_squared` |" in exploratory


def test_the_cost_section_gives_seconds_per_checkpoint_with_each_run_s_first_apart():
    rows = []
    for seed in (0, 1):
        for step, seconds in ((100, 10.0 + seed), (200, 2.0), (400, 4.0)):
            rows.append({"setting": "s", "objective": "adamw", "model": "m", "width": "8",
                         "depth": "2", "seed": str(seed), "step": str(step),
                         "seconds_hessian": str(seconds), "seconds_probe": ""})
    table = results.ResultsTable.from_rows(rows)
    lines = quality_sections.cost_section(table)
    assert lines[0] == "## Cost of the measurements"
    hessian = next(line for line in lines if line.startswith("| `seconds_hessian`"))
    cells = [cell.strip() for cell in hessian.strip("|").split("|")]
    # 6 checkpoints; median of all (2, 2, 4, 4, 10, 11) 4; of the runs' first checkpoints (10, 11)
    # 10.5; of the later ones (2, 4, 2, 4) 3; max 11; total 33 s = 0.55 min.
    assert cells[1:] == ["6", "4", "10.5", "3", "11", "0.55"]
    probe = next(line for line in lines if line.startswith("| `seconds_probe`"))
    probe_cells = [cell.strip() for cell in probe.strip("|").split("|")]
    assert probe_cells[1:] == ["0", "—", "—", "—", "—", "—"]
    table = results.ResultsTable.from_rows([{"seed": "0", "step": "1", "trace": "1"}])
    assert "Not assessable" in "\n".join(quality_sections.cost_section(table))


def test_the_baselines_section_gives_each_gain_at_the_last_step_over_seeds():
    rows = []
    gains = {0: 0.12, 1: 0.08, 2: 0.16}
    for seed, gain in gains.items():
        for step, scale in ((100, 0.5), (200, 1.0)):
            rows.append({"setting": "s", "objective": "adamw", "schedule": "warmup_constant",
                         "model": "m", "width": "8", "depth": "2", "seed": str(seed),
                         "step": str(step), "linear_probe_a_acc": str(0.3 + scale * gain),
                         "linear_probe_a_gain": str(scale * gain), "linear_probe_gain": "0",
                         "linear_probe_masked_gain": "0", "linear_probe_masked_acc": "0.3",
                         "baseline_onehot_a_acc": "0.3"})
    table = results.ResultsTable.from_rows(rows)
    bootstrap = settings.read_settings(None).bootstrap
    lines = baselines_section.baselines_section(table, bootstrap)
    assert lines[0] == "## Transfer over the baselines"
    # The per-task column only (`linear_probe_gain` and `linear_probe_masked_gain` are means over
    # tasks), at step 200.
    assert not [line for line in lines if "probe_gain`" in line or "masked_gain`" in line]
    (row,) = [line for line in lines if line.startswith("| `linear_probe_a_gain` | adamw/m, step 200")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    low, high = inference.mean_interval(list(gains.values()), bootstrap)
    assert cells[2:] == ["3", "+12.0", f"[{100 * low:+.1f}, {100 * high:+.1f}]", "2 of 3"]
    best = [line for line in lines if line.startswith("| `linear_probe_a_gain` | +16.0 |")]
    assert best == ["| `linear_probe_a_gain` | +16.0 | adamw/m/seed2/step200 |"]
    table = results.ResultsTable.from_rows([{"seed": "0", "step": "1", "linear_probe_acc": "1"}])
    assert "Not assessable" in "\n".join(baselines_section.baselines_section(table, bootstrap))


def test_a_gain_of_exactly_ten_points_counts_though_its_float_difference_rounds_below():
    # Seed 19 of docs/pcfg_size_plateau, width 32, task B: 0.344 - 0.244, which is 0.09999999999999998.
    gain = 0.344 - 0.244
    assert gain < baselines_section.THRESHOLD
    rows = [{"setting": "s", "objective": "adamw", "schedule": "warmup_constant", "model": "m",
             "width": "8", "depth": "2", "seed": str(seed), "step": "100",
             "linear_probe_b_acc": "0.344", "linear_probe_b_gain": repr(value),
             "baseline_onehot_b_acc": "0.244"}
            for seed, value in enumerate((gain, 0.0999, 0.2))]
    table = results.ResultsTable.from_rows(rows)
    lines = baselines_section.baselines_section(table, settings.read_settings(None).bootstrap)
    (row,) = [line for line in lines if line.startswith("| `linear_probe_b_gain` | adamw/m, step 100")]
    assert row.rstrip(" |").endswith("2 of 3")
