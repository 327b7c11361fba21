"""Tests for the study report: its sections in order, the primary tests, the critics, bad input,
the configs' report settings and the command line."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments.analysis import correlation, critics, inference, markdown, plots, primary, results, settings
from experiments.configs import digits, pcfg, smoke
from experiments.core.config_utils import ConfigError
from tests._subprocess import HANG_GUARD_SECONDS
from tests.experiments import report_tables

REPO = pathlib.Path(__file__).resolve().parents[2]
FAST = {"num_resamples": 200}


def write_study(tmp_path, rows):
    report_tables.write_csv(tmp_path / "results.csv", rows)
    return tmp_path


def section(report: str, title: str) -> str:
    """The text of a report section, from its heading to the next heading of the same level."""
    level = re.match(r"#+", title).group(0)
    start = report.index(title + "\n")
    following = re.search(rf"^{level} ", report[start + len(title) :], flags=re.MULTILINE)
    return report[start : start + len(title) + (following.start() if following else len(report))]


def test_column_roles_and_default_predictors():
    table = results.ResultsTable.from_rows(
        [
            {
                "trace": 1,
                "trace_stderr": 1,
                "linear_probe_acc": 1,
                "pretrain_loss": 1,
                "on_plateau": "true",
                "trace_at_8": 1,
                "trace_rank_agreement_8": 1,
            }
        ]
    )
    assert results.column_role("block_trace/dense_0") == "statistic"
    assert results.column_role("knn_acc") == "score"
    assert results.column_role("on_plateau") == "indicator"
    assert results.column_role("trace_at_8") == results.column_role("trace_rank_agreement_8")
    assert results.column_role("trace_at_8") == "bookkeeping"
    assert results.column_role("linear_probe_a_gain") == "score"
    # A probe of inputs that need no pretraining is context, the same at every checkpoint of a run.
    assert results.column_role("baseline_onehot_a_acc") == "bookkeeping"
    assert results.column_role("pretrain_loss_gap_train") == "baseline"
    assert results.predictor_columns(table) == ["trace", "pretrain_loss"]
    assert results.loss_column(table) == "pretrain_loss"
    # The held-out gap is the loss, not the gap on training sentences (a memorisation check).
    gaps = results.ResultsTable.from_rows(
        [{"pretrain_loss": 1.0, "pretrain_loss_gap": 0.1, "pretrain_loss_gap_train": 0.09}]
    )
    assert results.loss_column(gaps) == "pretrain_loss_gap"


def test_nan_reasons_count_nan_infinite_and_empty_cells():
    table = results.ResultsTable.from_rows(
        [
            {"trace": v, "nan_reason": r}
            for v, r in [(1, ""), ("nan", "trace: loss diverged"), ("inf", ""), ("", ""), ("nan", "")]
        ]
    )
    why = table.nan_reason("trace")
    assert "2 rows NaN (loss diverged, no reason recorded)" in why
    assert "1 row infinite" in why and "1 row empty (does not apply)" in why


def test_primary_tests_come_first_with_holm_adjusted_p_values(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1, 2)))
    config = dict(FAST, primary_tests=report_tables.LANGUAGE_TESTS, equivalence_margin=0.2)
    report = markdown.write_report(tmp_path, config).read_text()
    assert report.index("## Primary tests") < report.index("## Plots")
    assert report.index("## Plots") < report.index("## Exploratory analyses")
    table = results.read_results_csv(tmp_path / "results.csv")
    tests = settings.read_settings(config).primary_tests
    hypotheses, rules = primary.run_primary_tests(table, tests, inference.Bootstrap(200))
    tested = [h for h in hypotheses if h.role != "loss"]
    assert [(h.test.name, h.role) for h in tested] == [
        (name, role)
        for name in ("continued_training", "size", "algorithm")
        for role in ("statistic", "score")
    ]
    np.testing.assert_allclose([h.holm_p for h in tested], inference.holm([h.p_value for h in tested]))
    by_name = {(h.test.name, h.role): h.differences for h in hypotheses}
    # The designed effects: the plateau lowers the trace and raises the probes, and so on.
    assert by_name["continued_training", "statistic"].estimate < 0
    assert by_name["continued_training", "score"].estimate > 0
    assert by_name["algorithm", "statistic"].estimate > 0
    assert by_name["algorithm", "score"].estimate < 0
    assert all(d.num_seeds == 3 for d in by_name.values())
    assert "on the loss plateau" in rules["continued_training"]
    primary_text = section(report, "## Primary tests (pre-registered)")
    assert "`pretrain_loss_gap` (context, untested)" in primary_text
    assert "3 seeds: 0.25" in primary_text
    assert "### Critic 1" in report and "±0.2" in section(
        report, "### Critic 1: does the trace need the pretraining data?"
    )
    exploratory = report[report.index("## Exploratory analyses") :]
    assert "exploratory" in exploratory.split("\n\n")[1]
    assert (tmp_path / "plots" / "trace_vs_step.png").exists()
    assert (tmp_path / "plots" / "trace_vs_linear_probe_acc_by_loss.png").exists()


def test_without_a_plateau_column_continued_training_uses_first_and_last(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1), plateau=False))
    report = markdown.write_report(tmp_path, dict(FAST, primary_tests=report_tables.LANGUAGE_TESTS[:1]))
    assert "all the checkpoints of each run (results.csv has no `on_plateau` column" in report.read_text()


def test_no_tau_is_computed_over_two_rows(tmp_path, monkeypatch):
    """Two checkpoints per run, two sizes, two algorithms: every group of the old per-axis taus had
    two rows. No tau may be computed over fewer than three rows anywhere in the report."""
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1, 2), steps=(1000, 8000)))
    sizes = []
    original = correlation.kendall_tau

    def recording(x, y, weights=None):
        sizes.append(len(x))
        return original(x, y, weights)

    monkeypatch.setattr(correlation, "kendall_tau", recording)
    monkeypatch.setattr(plots, "kendall_tau", recording)
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert sizes and min(sizes) >= correlation.MIN_ROWS
    within = section(report, "### Along training iterations: Kendall τ within each run")
    assert "Not computable: none of the 12 runs has 3 or more" in within
    assert "objective τ" not in report and "size τ" not in report


def test_one_seed_report_says_what_needs_more_seeds(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0,)))
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert "None declared" in section(report, "## Primary tests (pre-registered)")
    assert "Needs ≥ 2 seeds: this study has 1 (seed 0)" in report
    assert "Kendall" in report


def test_a_primary_test_needs_two_seeds(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0,)))
    config = dict(FAST, primary_tests=report_tables.LANGUAGE_TESTS[1:2])
    with pytest.raises(primary.ReportError, match=r"'size'.*has 1.*width 16: seeds \['0'\]"):
        markdown.write_report(tmp_path, config)
    assert not (tmp_path / "report.md").exists()


def test_a_primary_test_naming_a_missing_column_or_level_is_refused(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1)))
    missing = dict(report_tables.LANGUAGE_TESTS[0], statistic="trace_ood")
    with pytest.raises(primary.ReportError, match=r"'continued_training' names \['trace_ood'\]"):
        markdown.write_report(tmp_path, dict(FAST, primary_tests=(missing,)))
    level = dict(report_tables.LANGUAGE_TESTS[1], levels=(16, 64))
    with pytest.raises(primary.ReportError, match=r"width = 64.*\['16', '32'\]"):
        markdown.write_report(tmp_path, dict(FAST, primary_tests=(level,)))


@pytest.mark.parametrize("margin", [0.0, -0.1])
def test_equivalence_margin_must_be_positive(margin):
    with pytest.raises(ConfigError, match="equivalence_margin must be > 0"):
        settings.read_settings({"equivalence_margin": margin})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "correlation"}, r"kind must be one of"),
        ({"levels": (8, 16, 32)}, r"levels must hold exactly 2"),
        ({"step": "first"}, r"step must be 'last', 'matched_loss', 'interpolated_loss' or a step number"),
        ({"test": "t"}, r"test must be one of"),
        ({"steps": (1, 2)}, r"unknown fields \['steps'\]"),
    ],
)
def test_malformed_primary_tests_name_the_field(change, message):
    test = dict(report_tables.LANGUAGE_TESTS[1], **change)
    with pytest.raises(ConfigError, match=r"config.report.primary_tests\[0\].*" + message):
        settings.read_settings({"primary_tests": (test,)})
    twice = (report_tables.LANGUAGE_TESTS[0], report_tables.LANGUAGE_TESTS[0])
    with pytest.raises(ConfigError, match="repeated: \\['continued_training'\\]"):
        settings.read_settings({"primary_tests": twice})


def test_missing_and_non_finite_cells_are_counted_and_listed(tmp_path):
    rows = report_tables.language_rows(seeds=(0, 1, 2))
    rows[0].update(trace="nan", nan_reason="trace: loss diverged")
    rows[1].update(trace="inf")
    rows[2].update(top_eigenvalue="")
    write_study(tmp_path, rows)
    report = markdown.write_report(tmp_path, FAST).read_text()
    missing = section(report, "## Missing and non-finite cells")
    line = next(line for line in missing.splitlines() if line.startswith("| `trace` |"))
    assert "| 0 | 1 | 1 | 0 |" in line and "1 row NaN (loss diverged)" in line
    assert "adamw/text_transformer_w16_d2/seed0/step250" in line
    assert "| `top_eigenvalue` | 1 | 0 | 0 | 0 |" in missing
    loss_table = section(report, "### Better than the loss? Association with transfer given the loss")
    assert "| `trace` |" in loss_table and "| 58 (12 runs, 3 seeds) |" in loss_table
    assert "| `step` |" in loss_table  # Training progress, the baseline every statistic faces.


def test_critic_sections_say_what_was_not_measured(tmp_path):
    rows = [
        {k: v for k, v in row.items() if k not in ("trace_downstream", "top_eigenvalue")}
        for row in report_tables.language_rows(seeds=(0, 1, 2))
    ]
    write_study(tmp_path, rows)
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert "Not measured: no pretraining-free statistic" in report
    assert "Rank stability at smaller budgets: not measured" in report
    assert "Not measured: `trace` and at least one other statistic" in report


def test_critics_use_pretraining_free_and_budget_columns(tmp_path):
    rows = report_tables.language_rows(seeds=(0, 1, 2, 3, 4))  # 5 seeds: pooled intervals.
    rng = np.random.default_rng(0)
    for row in rows:
        row["trace_ood"] = row["trace"] + rng.normal()
        row["trace_at_4"] = row["trace"] + 5 * rng.normal()
        row["trace_rank_agreement_4"] = 0.8
    write_study(tmp_path, rows)
    table = results.read_results_csv(tmp_path / "results.csv")
    assert critics.pretraining_free(table) == ["trace_downstream", "trace_ood"]
    report = markdown.write_report(tmp_path, FAST).read_text()
    first = section(report, "### Critic 1: does the trace need the pretraining data?")
    assert "| `trace_ood` | `linear_probe_acc` |" in first and "equivalent within ±0.1" in first
    second = section(report, "### Critic 2: does the trace need many probes?")
    assert "| `trace_at_4` |" in second and "`trace_rank_agreement_4`: mean over 20 runs +0.800" in second


def test_configs_declare_their_report():
    image, language, tiny = (m.get_config() for m in (digits, pcfg, smoke))
    assert len(image.sweep.seeds) >= 3 and len(language.sweep.seeds) >= 3
    assert len(tiny.sweep.seeds) == 1
    parsed = settings.read_settings(image.report)
    assert parsed.equivalence_margin > 0 and len(parsed.primary_tests) == 3
    assert {t.name for t in parsed.primary_tests} >= {"continued_training", "size"}
    # The default language study is its continued-training arm.
    parsed = settings.read_settings(language.report)
    assert parsed.equivalence_margin > 0
    assert [t.name for t in parsed.primary_tests] == ["continued_training"]
    assert settings.read_settings(tiny.report).primary_tests == ()


def test_study_settings_are_recorded_for_the_command_line(tmp_path):
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1, 2)))
    config = ml_collections.ConfigDict(
        {"num_resamples": 50, "primary_tests": report_tables.LANGUAGE_TESTS[:1]}
    )
    markdown.write_report(tmp_path, config)
    recorded = json.loads((tmp_path / settings.RECORD_FILE).read_text())
    assert recorded["primary_tests"][0]["name"] == "continued_training"
    command = [sys.executable, "-m", "experiments.report", f"--workdir={tmp_path}", "--seed=3"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| primary | continued_training | `trace` |" in report
    assert "50 resamples (seed 3)" in report
    assert json.loads((tmp_path / settings.RECORD_FILE).read_text()) == recorded
    (tmp_path / settings.RECORD_FILE).write_text(json.dumps({"equivalence_margin": 0}))
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "ConfigError: config.report.equivalence_margin must be > 0" in done.stderr


def test_density_from_lanczos_nodes_is_normalised(tmp_path):
    path = tmp_path / "density.npz"
    np.savez(path, nodes=np.array([[0.0, 1.0], [2.0, 3.0]]), weights=np.full((2, 2), 0.5))
    grid, pdf = plots.load_density(path)
    assert np.trapezoid(pdf, grid) == pytest.approx(1.0, abs=1e-3)


def _write_densities(workdir, seeds, steps):
    for seed in seeds:
        density = workdir / f"hessian/text_transformer_w16_d2/adamw/seed{seed}"
        for step in steps:
            (density / f"step{step}").mkdir(parents=True)
            pdf = np.ones(3) / 2 if step < 8000 else np.array([0.25, 0.5, 0.25])
            np.savez(density / f"step{step}/density.npz", grid=np.arange(3.0), pdf=pdf)


def test_densities_of_the_first_and_last_plateau_checkpoints_are_overlaid(tmp_path):
    # The plateau starts at step 2000 (`report_tables.PLATEAU_FROM`): its first and last checkpoints
    # are 2000 and 8000, one figure per configuration with a line per seed and checkpoint.
    write_study(tmp_path, report_tables.language_rows(seeds=(0, 1)))
    _write_densities(tmp_path, seeds=(0, 1), steps=(2000, 8000))
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert "![density_language_adamw_text_transformer_w16_d2" in section(report, "## Plots")
    assert len(list((tmp_path / "plots").glob("density_*.png"))) == 1


def test_densities_off_the_plateau_are_not_the_plateau_s(tmp_path):
    # Files at the run's first and last checkpoints only (250 is off the plateau): nothing to plot.
    write_study(tmp_path, report_tables.language_rows(seeds=(0,)))
    _write_densities(tmp_path, seeds=(0,), steps=(250, 8000))
    markdown.write_report(tmp_path, FAST)
    assert not list((tmp_path / "plots").glob("density_*.png"))
    # Without `on_plateau`, the run's first and last checkpoints are overlaid.
    other = tmp_path / "no_plateau"
    other.mkdir()
    write_study(other, report_tables.language_rows(seeds=(0,), plateau=False))
    _write_densities(other, seeds=(0,), steps=(250, 8000))
    markdown.write_report(other, FAST)
    assert len(list((other / "plots").glob("density_*.png"))) == 1


def test_a_configuration_without_a_density_plot_is_explained(tmp_path):
    # Width 16 never reaches the plateau (every checkpoint off it): no figure, and the report says
    # why; width 32's files are absent, which it says too. AdamW at width 32 gets its figure.
    rows = report_tables.language_rows(seeds=(0, 1))
    for row in rows:
        if row["width"] == 16:
            row["on_plateau"] = "false"
    write_study(tmp_path, rows)
    _write_densities(tmp_path, seeds=(0, 1), steps=(2000, 8000))  # Width 16's directories.
    for seed in (0, 1):
        for step in (2000, 8000):
            path = tmp_path / f"hessian/text_transformer_w32_d2/adamw/seed{seed}/step{step}"
            path.mkdir(parents=True)
            np.savez(path / "density.npz", grid=np.arange(3.0), pdf=np.ones(3) / 2)
    plots = section(markdown.write_report(tmp_path, FAST).read_text(), "## Plots")
    assert len(list((tmp_path / "plots").glob("density_*.png"))) == 1
    assert "![density_language_adamw_text_transformer_w32_d2" in plots
    no_plateau = "no run of it has two checkpoints on the loss plateau"
    for objective in ("adamw", "adversarial"):
        label = f"language/{objective}/text_transformer_w16_d2/width16/depth2"
        assert f"No spectral density plot for {label}: {no_plateau}." in plots
    absent = "adversarial/text_transformer_w32_d2/width32/depth2: its spectral density files are absent."
    assert absent in plots


def test_densities_are_read_from_the_study_s_density_file_column(tmp_path):
    # Run directories are not a function of the row's cells (a run of another schedule or budget
    # lives in `<objective>_<schedule>_<budget>`): the column the study writes is what counts, and a
    # checkpoint without a file there is not drawn from the pattern's path, which may be another
    # run's.
    rows = report_tables.language_rows(seeds=(0,))
    _write_densities(tmp_path, seeds=(0,), steps=(2000, 8000))  # The pattern's paths.
    elsewhere = tmp_path / "hessian/text_transformer_w16_d2/adamw_warmup_linear_8000/seed0/step8000"
    elsewhere.mkdir(parents=True)
    np.savez(elsewhere / "density.npz", grid=np.arange(3.0), pdf=np.array([0.25, 0.5, 0.25]))
    for row in rows:
        chosen = row["objective"] == "adamw" and row["width"] == 16 and row["step"] in (2000, 8000)
        step = row["step"]
        run = "adamw" if step == 2000 else "adamw_warmup_linear_8000"
        row["density_file"] = f"hessian/text_transformer_w16_d2/{run}/seed0/step{step}/density.npz"
        row["density_file"] = row["density_file"] if chosen else ""
    write_study(tmp_path, rows)
    report = markdown.write_report(tmp_path, FAST).read_text()
    assert len(list((tmp_path / "plots").glob("density_*.png"))) == 1
    # Two runs' files in one run's rows: the introduction counts the runs trained.
    assert "4 pretraining runs — 5 trained, a series of runs over increasing budgets" in report
    for row in rows:
        row["density_file"] = ""  # No file recorded: nothing drawn, though the pattern's exist.
    write_study(tmp_path, rows)
    for old in (tmp_path / "plots").glob("density_*.png"):
        old.unlink()
    markdown.write_report(tmp_path, FAST)
    assert not list((tmp_path / "plots").glob("density_*.png"))


def test_missing_results_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv does not exist"):
        markdown.write_report(tmp_path)


def test_the_plateau_shaded_is_where_every_run_is_on_it():
    table = results.ResultsTable.from_rows(report_tables.language_rows(seeds=(0, 1)))
    plateau = table.flags("on_plateau") == 1
    assert plots._plateau_span(table, plateau) == (report_tables.PLATEAU_FROM, 8000)
    assert plots._plateau_span(table, None) is None
    late = plateau & (table.values("step") >= 8000)  # One checkpoint on it: nothing to shade.
    assert plots._plateau_span(table, late) is None


def test_plots_are_written_in_256_colours_and_read_back(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    figure, axes = plt.subplots(figsize=(4, 3))
    for shift in range(12):  # Many antialiased colours, which the palette must absorb.
        axes.plot(np.linspace(0, 1, 50), np.sin(np.linspace(0, 6, 50) + shift), color=f"C{shift % 10}")
    path = tmp_path / "lines.png"
    plots.save_png(figure, path)
    plt.close(figure)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (440, 330)  # 4 x 3 inches at 110 dpi.
        assert len(image.getcolors(maxcolors=256)) > 12  # Antialiasing survives, not 12 flat colours.
    assert plt.imread(path).shape[:2] == (330, 440)
