"""Tests for the study report: rank correlations, sweep-axis groups, NaN handling, the CLI."""

from __future__ import annotations

import csv
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments.analysis import markdown, plots, results, statistics

AXES = {axis.name: axis for axis in statistics.SWEEP_AXES}
REPO = pathlib.Path(__file__).resolve().parents[2]


def small_table(**extra_columns):
    """Six checkpoints of one run: steps 0..5, accuracy rising with the step."""
    rows = [
        {"objective": "xent", "model": "mlp", "seed": 0, "step": step, "finetune_acc": 0.5 + step}
        for step in range(6)
    ]
    for name, values in extra_columns.items():
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return results.ResultsTable.from_rows(rows)


def test_rank_correlations_match_hand_computed_values():
    x = np.arange(1.0, 7.0)
    tau, rho = statistics.rank_correlations(x, 2 * x + 1)
    assert (tau, rho) == pytest.approx((1.0, 1.0))
    tau, rho = statistics.rank_correlations(x, -x)
    assert (tau, rho) == pytest.approx((-1.0, -1.0))
    # Two discordant pairs out of 15: tau = (13 - 2) / 15; sum d^2 = 4: rho = 1 - 6*4 / (6*35).
    tau, rho = statistics.rank_correlations(x, np.array([1.0, 3, 2, 5, 4, 6]))
    assert tau == pytest.approx(11 / 15)
    assert rho == pytest.approx(1 - 24 / 210)


def test_batched_rank_correlations_agree_with_scipy_row_by_row():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(5, 9)).astype(float)  # Integer values: ties included.
    y = rng.normal(size=(5, 9))
    tau, rho = statistics.rank_correlations(x, y)
    for i in range(5):
        assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic)
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)


def test_pooled_correlation_of_monotone_columns_is_exact():
    table = small_table(up=[1, 2, 4, 8, 16, 32], down=[6, 5, 4, 3, 2, 1])
    up = statistics.correlate(table, "up", "finetune_acc", AXES["pooled"], num_resamples=200)
    assert (up.tau, up.rho, up.num_rows, up.num_groups) == pytest.approx((1.0, 1.0, 6, 1))
    assert up.tau_interval == pytest.approx((1.0, 1.0))
    down = statistics.correlate(table, "down", "finetune_acc", AXES["pooled"], num_resamples=200)
    assert (down.tau, down.rho) == pytest.approx((-1.0, -1.0))


def test_bootstrap_interval_is_seeded_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    table = small_table(noisy=rng.normal(size=6))
    pooled = AXES["pooled"]
    first = statistics.correlate(table, "noisy", "finetune_acc", pooled, num_resamples=300, seed=3)
    again = statistics.correlate(table, "noisy", "finetune_acc", pooled, num_resamples=300, seed=3)
    assert first == again
    assert first.tau_interval[0] <= first.tau <= first.tau_interval[1]
    assert first.tau == pytest.approx(
        stats.kendalltau(table.values("noisy"), np.arange(6)).statistic
    )


def sweep_table():
    """2 objectives x 2 models x 3 steps; within a run the statistic rises with the score."""
    rows = []
    for objective_index, objective in enumerate(("xent", "mse")):
        for model_index, model in enumerate(("small", "large")):
            offset = 10 * (2 * objective_index + model_index)
            for step in (0, 10, 100):
                rows.append(
                    {
                        "objective": objective,
                        "model": model,
                        "seed": 0,
                        "step": step,
                        # Across runs the statistic falls while the score rises: pooled tau < 0.
                        "statistic": step - 1000 * offset,
                        "linear_probe_acc": offset + step / 1000,
                    }
                )
    return results.ResultsTable.from_rows(rows)


def test_axis_groups_select_the_intended_rows():
    table = sweep_table()
    objective, model, step = table.text("objective"), table.text("model"), table.text("step")

    def varying(groups):
        return [
            {
                name
                for name, column in (("objective", objective), ("model", model), ("step", step))
                if len(set(column[g])) > 1
            }
            for g in groups
        ]

    assert [len(g) for g in statistics.axis_groups(table, AXES["pooled"])] == [12]
    iterations = statistics.axis_groups(table, AXES["iterations"])
    assert [len(g) for g in iterations] == [3] * 4
    assert varying(iterations) == [{"step"}] * 4
    objectives = statistics.axis_groups(table, AXES["objective"])
    assert [len(g) for g in objectives] == [2] * 6
    assert varying(objectives) == [{"objective"}] * 6
    sizes = statistics.axis_groups(table, AXES["size"])
    assert [len(g) for g in sizes] == [2] * 6
    assert varying(sizes) == [{"model"}] * 6
    assert sorted(np.concatenate(sizes)) == list(range(12))


def test_within_group_correlation_differs_from_pooled():
    table = sweep_table()
    kwargs = dict(num_resamples=200)
    pooled = statistics.correlate(table, "statistic", "linear_probe_acc", AXES["pooled"], **kwargs)
    expected = stats.kendalltau(table.values("statistic"), table.values("linear_probe_acc"))
    assert pooled.tau == pytest.approx(expected.statistic) and pooled.tau < 0
    runs = statistics.correlate(
        table, "statistic", "linear_probe_acc", AXES["iterations"], **kwargs
    )
    assert (runs.tau, runs.num_groups, runs.num_rows) == pytest.approx((1.0, 4, 12))
    assert runs.tau_interval == pytest.approx((1.0, 1.0))
    sizes = statistics.correlate(table, "statistic", "linear_probe_acc", AXES["size"], **kwargs)
    assert (sizes.tau, sizes.num_groups) == pytest.approx((-1.0, 6))


def test_nan_rows_are_dropped_per_pair_with_their_reason():
    table = small_table(
        trace=[1, 2, "nan", 4, 5, 6],
        fisher_trace=["", "", "", 1, 2, 3],
        nan_reason=["", "", "trace: loss diverged", "", "", ""],
    )
    trace = statistics.correlate(table, "trace", "finetune_acc", AXES["pooled"], num_resamples=50)
    assert (trace.tau, trace.num_rows) == pytest.approx((1.0, 5))
    assert "1 row NaN (loss diverged)" in trace.note
    fisher = statistics.correlate(
        table, "fisher_trace", "finetune_acc", AXES["pooled"], num_resamples=50
    )
    assert (fisher.tau, fisher.num_rows) == pytest.approx((1.0, 3))
    assert "3 rows empty (does not apply)" in fisher.note


def test_all_nan_statistic_is_reported_as_nan_with_its_reason():
    table = small_table(
        top_eigenvalue=["nan"] * 6, nan_reason=["top_eigenvalue: Lanczos broke down"] * 6
    )
    result = statistics.correlate(
        table, "top_eigenvalue", "finetune_acc", AXES["pooled"], num_resamples=50
    )
    assert math.isnan(result.tau) and math.isnan(result.rho) and result.num_rows == 0
    assert "Lanczos broke down x6" in result.note


def test_column_roles_and_default_predictors():
    table = small_table(
        trace=range(6), trace_stderr=range(6), linear_probe_acc=range(6), pretrain_loss=range(6)
    )
    assert results.column_role("block_trace/dense_0") == "statistic"
    assert results.column_role("knn_acc") == "score"
    assert results.predictor_columns(table) == ["trace", "pretrain_loss"]
    assert results.score_columns(table) == ["finetune_acc", "linear_probe_acc"]
    with pytest.raises(ValueError, match="not columns"):
        statistics.correlation_table(table, ["absent"], num_resamples=10)


def test_probe_budget_extrapolates_from_the_standard_error():
    table = small_table(trace=[10.0] * 6, trace_stderr=[1.0] * 6, matvecs=[10] * 6)
    budget = statistics.probe_budget(table)
    # Relative stderr 0.1 at 10 matvecs; 0.05 needs 4x as many, 0.01 needs 100x.
    assert budget.method == "extrapolated"
    assert (budget.median_5pct, budget.max_1pct) == pytest.approx((40.0, 1000.0))
    measured = statistics.probe_budget(small_table(matvecs_5pct=[8, 16, 32, 8, 8, 8]))
    assert (measured.method, measured.median_5pct, measured.max_5pct) == ("measured", 8, 32)


def test_density_from_lanczos_nodes_is_normalised(tmp_path):
    path = tmp_path / "density.npz"
    np.savez(path, nodes=np.array([[0.0, 1.0], [2.0, 3.0]]), weights=np.full((2, 2), 0.5))
    grid, pdf = plots.load_density(path)
    assert np.trapezoid(pdf, grid) == pytest.approx(1.0, abs=1e-3)


def write_csv(path, table):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(table.columns)
        writer.writerows(zip(*table.columns.values(), strict=True))


def test_cli_writes_report_and_plots(tmp_path):
    table = sweep_table()
    trace = [str(v) for v in table.values("statistic")]
    trace[0] = "nan"
    columns = dict(table.columns, trace=tuple(trace), nan_reason=("trace: diverged",) + ("",) * 11)
    write_csv(tmp_path / "results.csv", results.ResultsTable(columns))
    density = tmp_path / "hessian/small/xent/seed0"
    for step in (0, 100):
        (density / f"step{step}").mkdir(parents=True)
        np.savez(density / f"step{step}/density.npz", grid=np.arange(3.0), pdf=np.ones(3) / 2)

    command = [sys.executable, "-m", "experiments.report", f"--workdir={tmp_path}"]
    done = subprocess.run(
        [*command, "--num_resamples=50"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "report.md").read_text()
    assert "Kendall" in report and "`trace`" in report and "NaN (diverged)" in report
    assert "**iterations**: one group per" in report
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"trace_vs_step.png", "scatter_linear_probe_acc.png"} <= plots
    assert any(name.startswith("density_") for name in plots)


def test_missing_results_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv does not exist"):
        markdown.write_report(tmp_path)
