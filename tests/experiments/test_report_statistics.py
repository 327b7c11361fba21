"""Tests for the report's statistics: exact tests, Holm, Kendall tau with run weights, and the rule
that every interval resamples independent units (seeds or runs), never checkpoints of one run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from experiments.analysis import comparisons, correlation, inference, primary, results, settings

BOOTSTRAP = inference.Bootstrap(num_resamples=400, seed=0)


def test_sign_test_is_exact_and_drops_zeros():
    assert inference.sign_test([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert inference.sign_test([1.0, -1.0]) == pytest.approx(1.0)
    assert inference.sign_test([0.0, 1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert math.isnan(inference.sign_test([0.0, 0.0]))
    # 9 positives of 10: 2 * P(X >= 9) = 2 * 11 / 1024.
    assert inference.sign_test([1.0] * 9 + [-1.0]) == pytest.approx(22 / 1024)


def test_wilcoxon_agrees_with_scipy_without_ties_and_with_enumeration_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 9):
        differences = rng.normal(size=n) + 0.5
        exact = stats.wilcoxon(differences, method="exact").pvalue
        assert inference.wilcoxon_signed_rank(differences) == pytest.approx(exact)
    tied = np.array([1.0, 1.0, -1.0, 2.0, 2.0, 3.0, 0.0])
    ranks = stats.rankdata(np.abs(tied[tied != 0]))
    observed = ranks[tied[tied != 0] > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=6)]
    centre = ranks.sum() / 2
    expected = np.mean([abs(t - centre) >= abs(observed - centre) for t in sums])
    assert inference.wilcoxon_signed_rank(tied) == pytest.approx(expected)  # 8 / 64


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_smallest_p_value_is_what_unanimous_units_give(n):
    unanimous = np.arange(1.0, n + 1)
    floor = inference.smallest_p_value(n)
    assert inference.sign_test(unanimous) == pytest.approx(floor)
    assert inference.wilcoxon_signed_rank(unanimous) == pytest.approx(floor)


def test_holm_adjusts_step_down_and_keeps_the_order():
    adjusted = inference.holm([0.01, 0.04, 0.03, math.nan, 0.5])
    # m = 4: 4 * 0.01, then max(0.04, 3 * 0.03), max(0.09, 2 * 0.04), 1 * 0.5.
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, math.nan, 0.5])
    assert inference.holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def test_kendall_tau_is_tau_b_and_weights_repeat_rows():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, 12).astype(float)  # Ties included.
    y = rng.normal(size=12)
    assert correlation.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    weights = rng.integers(0, 3, 12)
    repeated = np.repeat(np.arange(12), weights)
    expected = stats.kendalltau(x[repeated], y[repeated]).statistic
    assert correlation.kendall_tau(x, y, weights[None, :])[0] == pytest.approx(expected)


def test_no_tau_over_two_rows():
    with pytest.raises(ValueError, match="3 or more rows"):
        correlation.kendall_tau(np.array([1.0, 2.0]), np.array([2.0, 1.0]))


def test_partial_tau_removes_what_the_control_explains():
    z = np.arange(10.0)
    x = z + np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]) * 0.5  # Ordered by z but for pairs.
    y = z.copy()
    taus = [correlation.kendall_tau(a, b) for a, b in ((x, y), (x, z), (y, z))]
    assert taus[0] > 0.9
    assert math.isnan(correlation.partial_tau(*taus))  # y = z: nothing is left once z is known.
    assert correlation.partial_tau(0.5, 0.0, 0.0) == pytest.approx(0.5)
    assert correlation.partial_tau(0.25, 0.5, 0.5) == pytest.approx(0.0)


def disagreeing_seeds(num_checkpoints=10, copies=1, num_seeds=4):
    """Width 16 and 32, 4 seeds, 10 checkpoints per run. Within each run the checkpoints move
    together perfectly (statistic and score both rise with the step), but the seeds disagree:
    width 32's trace is 1 above width 16's in seeds 0 and 2, 1 below in seeds 1 and 3, at every
    checkpoint, and the score falls with the statistic in seeds 2 and 3."""
    rows = []
    for seed in range(num_seeds):
        direction = 1 if seed < num_seeds // 2 else -1
        for width in (16, 32):
            for step in range(num_checkpoints):
                offset = (1 if seed % 2 == 0 else -1) * (width == 32)
                row = {
                    "objective": "adamw",
                    "model": f"m{width}",
                    "width": width,
                    "seed": seed,
                    "step": step,
                    "trace": step + offset + 100 * seed,
                    "linear_probe_acc": direction * step + 0.1 * width,
                }
                rows += [row] * copies
    return results.ResultsTable.from_rows(rows)


def test_a_comparison_interval_is_as_wide_as_the_seeds_spread():
    table = disagreeing_seeds()
    pairs = comparisons.configuration_pairs(table, "width", (16, 32), {})
    result = comparisons.seed_differences(table, "trace", pairs, BOOTSTRAP)
    assert [d for _, d in result.per_seed] == [1.0, -1.0, 1.0, -1.0]
    # Ten perfectly correlated checkpoints per run add nothing: the interval is the Student-t
    # interval of the 4 seeds' differences, wider than their spread (a bootstrap gave the range).
    half_width = 3.182446 * np.std([1.0, -1.0, 1.0, -1.0], ddof=1) / 2
    assert result.interval == pytest.approx((-half_width, half_width), rel=1e-5)
    assert result.sign_p == pytest.approx(1.0)
    along = comparisons.checkpoint_pairs(table, {})[0]
    assert sorted(along) == ["0", "1", "2", "3"] and all(len(p) == 2 for p in along.values())


def test_within_run_taus_are_summarised_over_runs_not_checkpoints():
    table = disagreeing_seeds()
    summary = correlation.within_run(table, "trace", "linear_probe_acc", BOOTSTRAP)
    assert sorted(summary.taus) == [-1.0] * 4 + [1.0] * 4
    assert summary.mean == pytest.approx(0.0)
    assert summary.interval[0] <= -0.5 and summary.interval[1] >= 0.5
    assert summary.sign_p == pytest.approx(1.0)


def test_repeating_checkpoints_does_not_narrow_a_pooled_interval():
    # 6 seeds: a cluster bootstrap needs 5 or more.
    once = correlation.association(disagreeing_seeds(num_seeds=6), "trace", "linear_probe_acc", BOOTSTRAP)
    tenfold = correlation.association(
        disagreeing_seeds(copies=10, num_seeds=6), "trace", "linear_probe_acc", BOOTSTRAP
    )
    assert (once.num_runs, tenfold.num_runs) == (12, 12)
    assert tenfold.value == pytest.approx(once.value)
    assert tenfold.interval == pytest.approx(once.interval)
    # Resampling rows as if they were independent would have made it far narrower.
    rows = np.arange(once.num_rows)
    x, y = (disagreeing_seeds(num_seeds=6).values(c) for c in ("trace", "linear_probe_acc"))
    drawn = BOOTSTRAP.rng().integers(0, len(rows), size=(400, len(rows)))
    naive = np.stack([np.bincount(d, minlength=len(rows)) for d in drawn])
    naive_interval = inference.percentile_interval(correlation.kendall_tau(x, y, naive), 0.95)
    assert np.ptp(once.interval) > 2 * np.ptp(naive_interval)


def test_an_interval_needs_three_units():
    assert all(math.isnan(v) for v in inference.mean_interval([1.0, 2.0], BOOTSTRAP))
    table = results.ResultsTable.from_rows(
        [
            {"seed": s, "step": t, "trace": t + 10 * s, "linear_probe_acc": t + 10 * s}
            for s in (0, 1)
            for t in range(4)
        ]
    )
    two_runs = correlation.association(table, "trace", "linear_probe_acc", BOOTSTRAP)
    assert two_runs.value == pytest.approx(1.0) and all(math.isnan(v) for v in two_runs.interval)
    assert "needs 5 or more seeds, has 2" in two_runs.note


def test_runs_that_share_a_seed_are_one_unit():
    """Two configurations x 2 seeds: 4 runs, but 2 independent units, so no interval; the
    within-run summary averages each seed's runs before its sign test."""
    table = results.ResultsTable.from_rows(
        [
            {"width": w, "seed": s, "step": t, "trace": t * (1 + s), "linear_probe_acc": t}
            for w in (16, 32)
            for s in (0, 1)
            for t in range(4)
        ]
    )
    pooled = correlation.association(table, "trace", "linear_probe_acc", BOOTSTRAP)
    assert (pooled.num_runs, pooled.num_units) == (4, 2)
    assert all(math.isnan(v) for v in pooled.interval) and "needs 5 or more seeds" in pooled.note
    summary = correlation.within_run(table, "trace", "linear_probe_acc", BOOTSTRAP)
    assert len(summary.taus) == 4 and summary.num_units == 2
    assert summary.sign_p == pytest.approx(0.5)  # 2 seeds, both positive: 2 / 2^2.


def test_configuration_pairs_match_everything_but_the_axis():
    rows = [
        {
            "objective": o,
            "model": f"m{w}_{d}",
            "width": w,
            "depth": d,
            "seed": s,
            "step": t,
            "trace": w + d + s + t,
        }
        for o in ("a", "b")
        for w in (16, 32)
        for d in (1, 2)
        for s in (0, 1)
        for t in (5, 10)
    ]
    rows.append(
        {"objective": "a", "model": "m32_1", "width": 32, "depth": 1, "seed": 2, "step": 5, "trace": 0}
    )  # Seed 2 has no width-16 partner: left out.
    table = results.ResultsTable.from_rows(rows)
    pairs = comparisons.configuration_pairs(table, "width", ("16", 32.0), {"objective": "a"})
    assert sorted(pairs) == ["0", "1"]
    for seed_pairs in pairs.values():
        assert len(seed_pairs) == 2  # Depth 1 and depth 2, each at the last step.
        for first, second in seed_pairs:
            for column in ("objective", "depth", "seed", "step"):
                assert table.text(column)[first] == table.text(column)[second]
            assert table.text("step")[first] == "10"
    result = comparisons.seed_differences(table, "trace", pairs, BOOTSTRAP)
    assert [d for _, d in result.per_seed] == [16.0, 16.0]  # One value per seed.
    early = comparisons.configuration_pairs(table, "width", (16, 32), {}, step=5)
    assert all(table.text("step")[a] == "5" for p in early.values() for a, _ in p)


def test_checkpoint_pairs_use_the_plateau_when_it_is_known():
    rows = [
        {"seed": s, "step": t, "trace": -t, "on_plateau": "true" if t >= 20 else "false"}
        for s in (0, 1)
        for t in (10, 20, 30, 40)
    ]
    table = results.ResultsTable.from_rows(rows)
    pairs, which = comparisons.checkpoint_pairs(table, {})
    assert "on the loss plateau" in which
    assert {(table.text("step")[a], table.text("step")[b]) for p in pairs.values() for a, b in p} == {
        ("20", "40")
    }
    without = results.ResultsTable({k: v for k, v in table.columns.items() if k != "on_plateau"})
    pairs, which = comparisons.checkpoint_pairs(without, {})
    assert "no `on_plateau` column" in which
    assert {(without.text("step")[a], without.text("step")[b]) for a, b in pairs["0"]} == {("10", "40")}
    declared, which = comparisons.checkpoint_pairs(table, {}, steps=(10, 30))
    assert "as declared" in which
    assert {(table.text("step")[a], table.text("step")[b]) for a, b in declared["1"]} == {("10", "30")}


def test_missing_values_are_left_out_with_their_reason():
    table = results.ResultsTable.from_rows(
        [
            {
                "seed": s,
                "width": w,
                "step": 1,
                "trace": "nan" if (s, w) == (2, 32) else s + w,
                "nan_reason": "trace: diverged" if (s, w) == (2, 32) else "",
            }
            for s in range(4)
            for w in (16, 32)
        ]
    )
    pairs = comparisons.configuration_pairs(table, "width", (16, 32), {})
    result = comparisons.seed_differences(table, "trace", pairs, BOOTSTRAP)
    assert [s for s, _ in result.per_seed] == ["0", "1", "3"]
    assert "seed 2: 1 row NaN (diverged)" in result.note


def _interpolation_table(second_gaps: dict[int, dict[int, float]], off_plateau: tuple[int, ...] = ()
                         ) -> results.ResultsTable:
    """Width 16 ends at gap 0.010 in every seed (on the plateau but in seeds `off_plateau`); width
    32's gaps per seed and step are given, and its trace and probe are straight lines in its gap
    (trace = 100 * gap, probe = 1 - 10 * gap)."""
    rows = []
    for seed, by_step in second_gaps.items():
        rows += [{"width": 16, "seed": seed, "step": step, "pretrain_loss_gap": gap,
                  "on_plateau": int(seed not in off_plateau), "trace": 5.0, "linear_probe_acc": 0.5}
                 for step, gap in ((8000, 0.014), (16000, 0.010))]
        rows += [{"width": 32, "seed": seed, "step": step, "pretrain_loss_gap": gap,
                  "on_plateau": int(step >= 8000), "trace": 100 * gap, "linear_probe_acc": 1 - 10 * gap}
                 for step, gap in by_step.items()]
    return results.ResultsTable.from_rows(rows)


def test_interpolated_loss_reads_the_second_run_on_a_line_in_the_gap_and_never_extrapolates():
    table = _interpolation_table({
        0: {4000: 0.016, 8000: 0.012, 16000: 0.008},  # brackets 0.010 between 8,000 and 16,000
        1: {4000: 0.011, 8000: 0.009, 16000: 0.0105},  # brackets it twice: the latest pair wins
        2: {4000: 0.009, 8000: 0.008, 16000: 0.007},  # always below 0.010: no pair
        3: {4000: 0.011, 8000: 0.0095, 16000: 0.009},  # between 4,000 (off the plateau) and 8,000
    })
    pairs = comparisons.configuration_pairs(table, "width", (16, 32), {}, "interpolated_loss")
    assert sorted(pairs) == ["0", "1", "3"]
    steps = table.values("step")
    [(first, blend)] = pairs["0"]
    assert steps[first] == 16000 and isinstance(blend, comparisons.Blend)
    assert (steps[blend.low], steps[blend.high]) == (8000, 16000) and blend.weight == pytest.approx(0.5)
    [(_, latest)] = pairs["1"]
    assert (steps[latest.low], steps[latest.high]) == (8000, 16000)
    assert latest.weight == pytest.approx(2 / 3)  # 0.009 + (2/3) * 0.0015 = 0.010.
    # At the same gap, 0.010, width 32's trace is 1.0 and its probe 0.9: differences 1 - 5, 0.9 - 0.5.
    trace = comparisons.seed_differences(table, "trace", pairs, BOOTSTRAP)
    assert [d for _, d in trace.per_seed] == pytest.approx([-4.0, -4.0, -4.0])
    probe = comparisons.seed_differences(table, "linear_probe_acc", pairs, BOOTSTRAP)
    assert [d for _, d in probe.per_seed] == pytest.approx([0.4, 0.4, 0.4])
    loss = comparisons.seed_differences(table, "pretrain_loss_gap", pairs, BOOTSTRAP)
    assert [d for _, d in loss.per_seed] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    # Seed 3's blend reads its 4,000-step checkpoint, off the plateau: not a pair on the plateau.
    assert sorted(primary.on_plateau_pairs(table, pairs)) == ["0", "1"]


def test_interpolated_loss_skips_unusable_checkpoints_and_off_plateau_references():
    table = _interpolation_table({
        0: {4000: 0.016, 8000: math.nan, 16000: 0.008},  # 4,000 and 16,000 are not consecutive
        1: {4000: 0.012, 8000: 0.010, 16000: math.nan},  # exactly at 8,000: that row alone
        2: {4000: 0.016, 8000: 0.012, 16000: 0.008},  # its reference is off the plateau
    }, off_plateau=(2,))
    pairs = comparisons.configuration_pairs(table, "width", (16, 32), {}, "interpolated_loss")
    assert sorted(pairs) == ["1"]
    [(_, exact)] = pairs["1"]
    assert not isinstance(exact, comparisons.Blend) and table.values("step")[exact] == 8000
    trace = comparisons.seed_differences(table, "trace", pairs, BOOTSTRAP)
    assert trace.per_seed == (("1", pytest.approx(-4.0)),) and not trace.note


def test_a_declared_test_at_interpolated_loss_runs_and_says_how_it_matched():
    table = _interpolation_table({seed: {4000: 0.016, 8000: 0.012, 16000: 0.008} for seed in range(3)})
    declared = dict(name="size", kind="paired_difference", statistic="trace", score="linear_probe_acc",
                    axis="width", levels=(16, 32), step="interpolated_loss")
    tests = settings.read_settings({"primary_tests": (declared,)}).primary_tests
    hypotheses, rules = primary.run_primary_tests(table, tests, BOOTSTRAP)
    by_role = {h.role: h.differences for h in hypotheses}
    assert by_role["statistic"].estimate == pytest.approx(-4.0)
    assert by_role["statistic"].num_seeds == 3
    assert "the same held-out gap" in rules["size"] and "straight line" in rules["size"]
    # Each side is named by its level: the reference (16) is the fixed checkpoint, 32 is read off
    # the line, and the difference is printed 32 − 16.
    assert rules["size"].startswith("width 32 − 16 at the same held-out gap (width 16's last "
                                    "checkpoint, on the plateau; width 32 read off a straight line")
    assert "no pair" not in rules["size"]
    # A seed whose width-32 run never reaches width 16's gap is named, not silently dropped.
    table = _interpolation_table({0: {4000: 0.016, 8000: 0.012, 16000: 0.008},
                                  1: {4000: 0.016, 8000: 0.012, 16000: 0.008},
                                  2: {4000: 0.009, 8000: 0.008, 16000: 0.007}})
    _, rules = primary.run_primary_tests(table, tests, BOOTSTRAP)
    assert rules["size"].endswith("seeds with both configurations but no pair: 2")


def test_matched_loss_pairs_the_first_plateau_checkpoint_with_the_nearest_gap():
    """AdamW's first plateau checkpoint against the adversarial checkpoint of the nearest held-out
    gap, within one standard error; seed 2's nearest is too far, so it gives no pair."""
    gaps = {
        "adamw": {1000: 0.05, 2000: 0.020, 4000: 0.0170},
        "adversarial": {1000: 0.08, 2000: 0.021, 4000: 0.0185},
    }
    rows = [
        {
            "objective": objective, "seed": seed, "step": step,
            "pretrain_loss_gap": gap + (0.01 if seed == 2 and objective == "adversarial" else 0),
            "pretrain_loss_gap_stderr": 0.002, "on_plateau": int(step >= 2000),
            "trace": step / 1000 + seed, "linear_probe_acc": 0.5,
        }
        for objective, by_step in gaps.items()
        for seed in (0, 1, 2)
        for step, gap in by_step.items()
    ]
    table = results.ResultsTable.from_rows(rows)
    pairs = comparisons.configuration_pairs(table, "objective", ("adamw", "adversarial"), {}, "matched_loss")
    assert sorted(pairs) == ["0", "1"]
    steps = table.values("step")
    for seed in ("0", "1"):
        [(first, second)] = pairs[seed]
        assert (steps[first], steps[second]) == (2000, 2000)  # |0.021 - 0.020| <= 0.002.
