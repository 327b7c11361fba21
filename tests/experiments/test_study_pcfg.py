"""The study on the language setting end to end: pretraining, a `measure` and a `probe` job per
checkpoint, results.csv with the contract columns, and the report (tiny grammar, a few steps); the
rows' `on_plateau` from the pretraining runs' per-sentence gaps."""

import csv
import json
import pickle

import ml_collections
import numpy as np
import pytest

from experiments.analysis import settings
from experiments.configs import pcfg as pcfg_config
from experiments.configs import pcfg_full
from experiments.core import config_utils, jobs
from experiments.language import plateau
from experiments.sweep import study
from experiments.training import train
from tests.experiments.test_language import TINY_OVERRIDES


def _tiny_study_config(data_dir: str) -> ml_collections.ConfigDict:
    config = pcfg_config.get_config()
    config.data.data_dir = data_dir
    for path, value in {**TINY_OVERRIDES, "pretrain.checkpoint_steps": ()}.items():
        section, name = path.split(".")
        config[section][name] = value
    config.sweep.widths, config.sweep.depths = (16,), (1,)
    # Both training algorithms, one seed: no pre-registered test (they need 2 seeds or more).
    config.sweep.objectives, config.sweep.seeds = ("adamw", "adversarial"), (0,)
    config.report = ml_collections.ConfigDict({"num_resamples": 50})
    # One probe task: every view, baseline and plot kind still runs, at a third of the probes and
    # plots (the test suite's time; the three tasks are tested in test_language.py).
    config.finetune.tasks = ("a",)
    return config


def test_pcfg_study_measures_every_checkpoint_and_reports(pcfg_data_dir, tmp_path):
    report = study.run_study(_tiny_study_config(pcfg_data_dir), tmp_path)
    assert report.exists() and report.name == "report.md"
    with open(tmp_path / study.RESULTS_FILE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[: len(study.CONTRACT_COLUMNS)] == list(study.CONTRACT_COLUMNS)
    assert list(rows[0])[-1] == "nan_reason"
    # 2 algorithms x 1 model x 1 seed x 1 checkpoint (the last step).
    assert [(r["objective"], int(r["step"])) for r in rows] == [
        (objective, step) for objective in ("adamw", "adversarial") for step in (6,)
    ]
    for row in rows:
        assert row["setting"] == "language" and row["model"] == "text_transformer_w16_d1"
        assert int(row["num_params"]) > 0 and float(row["pretrain_loss"]) > 0
        assert float(row["pretrain_loss_gap"]) >= 0 and float(row["pretrain_loss_gap_stderr"]) > 0
        assert float(row["trace_stderr"]) > 0 and 2 <= int(row["matvecs_trace"]) <= 8
        assert float(row["fisher_trace"]) > 0 and float(row["seconds_hessian"]) > 0
        probes = [float(row[f"linear_probe_{view}a_acc"]) for view in ("", "mean_", "masked_")]
        assert all(0 <= accuracy <= 1 for accuracy in probes)
        assert float(row["linear_probe_acc"]) == pytest.approx(probes[0])
        assert "linear_probe_b_acc" not in row
        # Critic 3 and critic 1: the top eigenvalue of the same loss, and the curvature of a task
        # probe's loss on downstream sentences only.
        assert float(row["top_eigenvalue"]) > 0
        assert float(row["trace_downstream_stderr"]) > 0 and 2 <= int(row["matvecs_downstream"]) <= 8
        assert np.isfinite(float(row["trace_downstream"]))
        assert float(row["pretrain_loss_gap_train"]) >= 0
        # Critic 1 without the pretraining data: text of the perturbed grammar.
        assert np.isfinite(float(row["trace_other_data"])) and float(row["trace_other_data_stderr"]) > 0
        assert 2 <= int(row["matvecs_other_data"]) <= 8
        assert float(row["fisher_trace_other_data"]) > 0
        assert float(row["fisher_trace_other_data_stderr"]) > 0
        assert float(row["finetune_acc"]) == pytest.approx(float(row["finetune_a_acc"]))
        baselines = [float(row[f"baseline_{kind}_a_acc"]) for kind in ("onehot", "bow", "random")]
        for view in ("", "masked_"):
            assert float(row[f"linear_probe_{view}a_gain"]) == pytest.approx(
                float(row[f"linear_probe_{view}a_acc"]) - max(baselines)
            )
        assert row["nan_reason"] == ""
        assert "fisher_samples" not in row and "linear_probe_acc/a" not in row
    # The measurement stage and the setting's transfer stage, one job each per checkpoint.
    stages = {job_id.split("/")[0] for job_id in jobs.read_results(tmp_path)}
    assert stages == {"pretrain", "measure", "probe"}


def test_checkpoint_jobs_may_run_in_worker_processes(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    configs = study.configurations(config)
    study_jobs = study.study_jobs(configs, config, tmp_path)
    # Every pretraining job first (the long ones: workers take them before any checkpoint).
    assert [job.job_id.split("/")[0] for job in study_jobs[: len(configs)]] == ["pretrain"] * len(configs)
    assert all(job.depends_on for job in study_jobs[len(configs) :])
    # The ETA prices pretraining by its steps, every checkpoint stage alike.
    assert [job.cost for job in study_jobs[: len(configs)]] == [max(c.steps) for c in configs] == [6, 6]
    assert {job.cost for job in study_jobs[len(configs) :]} == {1.0}
    for job in study_jobs:
        assert job.in_worker  # Pretraining and every checkpoint stage alike.
        assert pickle.loads(pickle.dumps(job.fn)).func is job.fn.func  # A spawned worker gets it.


@pytest.mark.slow  # Two tiny studies, one with two spawned workers that each compile (~3 min).
def test_a_study_in_two_worker_processes_gives_the_results_of_one(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.report.primary_tests = ()
    tables = []
    for parallel in (1, 2):
        config.sweep.parallel = parallel
        study.run_study(config, tmp_path / f"parallel{parallel}")
        with open(tmp_path / f"parallel{parallel}" / study.RESULTS_FILE, newline="") as stream:
            rows = list(csv.DictReader(stream))
        tables.append([{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in rows])
    assert tables[0] == tables[1]


def _pretrained_configurations(config, workdir):
    configs = study.configurations(config)
    for configuration in configs:
        train.pretrain(configuration.config, configuration.run_dir(workdir))
    return configs


def test_rows_say_which_checkpoints_are_on_the_plateau(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.pretrain.checkpoint_steps = (0, 3)
    config.sweep.objectives = ("adamw",)
    # Far above any decrease of the tiny runs: every checkpoint is on the plateau.
    config.plateau.threshold = 10.0
    configs = _pretrained_configurations(config, tmp_path)
    rows = study.result_rows(configs, tmp_path, {})
    assert [(row["step"], row[plateau.COLUMN]) for row in rows] == [(0, 1), (3, 1), (6, 1)]
    assert all(plateau.SENTENCE_GAPS not in row for row in rows)
    written = json.loads((configs[0].run_dir(tmp_path) / plateau.PLATEAU_FILE).read_text())
    assert written["start"] == 0 and len(written["pairs"]) == 2
    for pair in written["pairs"]:
        assert pair["num_sentences"] == 50 and pair["stderr"] > 0
    # A threshold below the noise of the 50 evaluation sentences cannot be decided.
    for configuration in configs:
        configuration.config.plateau.threshold = 1e-9
    with pytest.raises(plateau.PlateauError, match=r"config\.plateau\.threshold = 1e-09"):
        study.result_rows(configs, tmp_path, {})


def test_runs_of_increasing_budgets_are_one_series_to_the_plateau(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.sweep.objectives = ("adamw",)
    config.sweep.arms = (dict(name="protocol", schedule="warmup_linear", budgets=(3, 6)),)
    config.plateau.threshold = 10.0
    configs = _pretrained_configurations(config, tmp_path)
    assert [c.config.pretrain.schedule for c in configs] == ["warmup_linear"] * 2
    rows = study.result_rows(configs, tmp_path, {})
    # Each run's last checkpoint, in one series: the pair (3, 6) spans the two runs.
    assert [(row["schedule"], row["step"], row[plateau.COLUMN]) for row in rows] == [
        ("warmup_linear", 3, 1),
        ("warmup_linear", 6, 1),
    ]
    written = json.loads((configs[1].run_dir(tmp_path) / plateau.PLATEAU_FILE).read_text())
    assert [(pair["first"], pair["second"]) for pair in written["pairs"]] == [(3, 6)]
    assert not (configs[0].run_dir(tmp_path) / plateau.PLATEAU_FILE).exists()


def test_an_invalid_plateau_threshold_is_refused_before_any_job(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.plateau.threshold = 0.0
    with pytest.raises(config_utils.ConfigError, match=r"config\.plateau\.threshold must be > 0"):
        study.run_study(config, tmp_path)
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize("options", ["v3", "v3,size", "v3,protocol", "v3,protocol,size"])
def test_the_version3_config_passes_the_study_checks(pcfg_data_dir, tmp_path, options):
    config = pcfg_full.get_config(options)
    config.data.data_dir, config.data.pcfg_config = pcfg_data_dir, "tiny"  # Not the rooted data.
    config.finetune.probe_examples = 40
    configs = study.configurations(config)
    study._check_primary_tests(config)
    plateau.check_config(config)
    assert len(study.study_jobs(configs, config, tmp_path)) == sum(1 + 2 * len(c.steps) for c in configs)
    steps = {(c.objective, c.width, c.schedule, c.budget): c.steps for c in configs}
    constant, linear = "warmup_constant", "warmup_linear"
    assert steps[("adamw", 32, constant, 0)] == (8000, 16000, 32000)  # 3 plateau checkpoints, 4x.
    assert steps[("adversarial", 32, constant, 0)] == (4000, 8000)
    assert config.pretrain.warmup_steps < 4000  # The rate is constant at every checkpoint.
    seeds = {key: sorted(c.seed for c in configs if (c.objective, c.width, c.schedule, c.budget) == key)
             for key in steps}
    assert seeds[("adamw", 32, constant, 0)] == list(pcfg_full.FULL_SEEDS) == list(range(8, 16))
    assert seeds[("adversarial", 32, constant, 0)] == list(pcfg_full.FULL_SEEDS)
    assert not set(pcfg_full.FULL_SEEDS) & set(pcfg_full.SEEDS)  # A replication on new seeds.
    tests = {t.name: t for t in settings.read_settings(config.report).primary_tests}
    assert tests["continued_training"].steps is None  # The plateau's first and last checkpoints.
    assert ("schedule", constant) in tests["continued_training"].where
    assert tests["late_plateau"].steps == (16000, 32000) and tests["late_plateau"].family == "secondary"
    assert tests["algorithm"].step in steps[("adversarial", 32, constant, 0)]
    assert tests["algorithm"].step in steps[("adamw", 32, constant, 0)]
    names = {"continued_training", "algorithm", "late_plateau"}
    if "protocol" in options:
        for budget in pcfg_full.BUDGETS:  # Liu et al.'s protocol: one run per budget, measured at its end.
            assert steps[("adamw", 32, linear, budget)] == (budget,)
        assert seeds[("adamw", 32, linear, 4000)] == list(pcfg_full.PROTOCOL_SEEDS)
        assert ("schedule", linear) in tests["protocol"].where and tests["protocol"].family == "secondary"
        names.add("protocol")
    if "size" in options:
        for level in tests["size"].levels:
            assert tests["size"].step in steps[("adamw", level, constant, 0)]
            assert steps[("adamw", level, constant, 0)] == (4000, 8000)  # The plateau rule's pair.
        names.add("size")
    assert len(steps) == 2 + 3 * ("protocol" in options) + 2 * ("size" in options)
    assert set(tests) == names
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("widths")
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("size,size_only")
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("protocol,continued_only")
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("protocol")  # Version 3's arms, not version 4's.


def test_the_default_full_config_runs_the_four_arms_in_one_study(pcfg_data_dir, tmp_path):
    config, configs, tests = _checked_option("", pcfg_data_dir, tmp_path)
    runs = {}
    for c in configs:
        runs.setdefault((c.objective, c.width, c.schedule), {}).setdefault(c.steps, set()).add(c.seed)
    full, five = set(pcfg_full.V4_SEEDS), set(pcfg_full.V4_SMALL_SEEDS)
    constant, linear = "warmup_constant", "warmup_linear"
    assert runs == {
        ("adamw", 32, constant): {(8000, 16000, 32000): full},  # 3 plateau checkpoints, 4x apart.
        ("adversarial", 32, constant): {(4000, 8000): full},
        ("adamw", 32, linear): {(8000,): five, (16000,): five},  # One run per budget, its end.
        ("adamw", 16, linear): {(16000,): five, (32000,): five},
        ("adamw", 64, linear): {(4000,): five, (8000,): five},
    }
    assert len(full) == 8 and len(five) == 5  # The minimum of 5 seeds everywhere.
    earlier = (set(pcfg_full.FULL_SEEDS) | set(pcfg_full.SEEDS) | set(pcfg_full.SIZE_SEEDS)
               | set(pcfg_full.SIZE_PLATEAU_SEEDS) | set(pcfg_full.SIZE_DECAY_SEEDS))
    assert not full & earlier  # A replication on new seeds.
    assert config.pretrain.warmup_steps < 4000 and config.hessian.embed_width == 64
    families = {name: test.family for name, test in tests.items()}
    assert families == {"continued_training": "primary", "algorithm": "primary",
                        "late_plateau": "secondary", "protocol": "five_seeds", "size": "five_seeds"}
    assert tests["algorithm"].step == 8000 and ("schedule", constant) in tests["algorithm"].where
    assert ("schedule", linear) in tests["protocol"].where
    size = tests["size"]
    assert size.levels == (64, 16) and size.step == "interpolated_loss"
    assert size.statistic == "trace_embedded" and ("schedule", linear) in size.where


def _checked_option(option, data_dir, workdir):
    """`pcfg_full.get_config(option)` on the tiny grammar, checked as the study checks it; its
    configurations and declared tests by name."""
    config = pcfg_full.get_config(option)
    config.data.data_dir, config.data.pcfg_config = data_dir, "tiny"  # Not the rooted data.
    configs = study.configurations(config)
    study._check_primary_tests(config)
    plateau.check_config(config)
    assert len(study.study_jobs(configs, config, workdir)) == sum(1 + 2 * len(c.steps) for c in configs)
    return config, configs, {t.name: t for t in settings.read_settings(config.report).primary_tests}


def test_the_size_only_config_runs_three_widths_to_the_plateau_rule(pcfg_data_dir, tmp_path):
    config, configs, tests = _checked_option("size_only", pcfg_data_dir, tmp_path)
    assert sorted((c.width, c.seed) for c in configs) == sorted(
        (width, seed) for width in pcfg_full.SIZE_WIDTHS for seed in pcfg_full.SIZE_SEEDS)
    assert {c.steps for c in configs} == {(4000, 8000)}  # The plateau rule's pair.
    assert {c.objective for c in configs} == {"adamw"} and config.hessian.embed_width == 64
    assert tests["size"].levels == (16, 64) and tests["size"].family == "primary"
    assert tests["size_embedded"].statistic == "trace_embedded"
    assert {t.family for name, t in tests.items() if name != "size"} == {"secondary"}


def test_the_size_plateau_config_compares_widths_where_each_can_be_on_the_plateau(pcfg_data_dir, tmp_path):
    config, configs, tests = _checked_option("size_plateau", pcfg_data_dir, tmp_path)
    assert sorted((c.width, c.seed) for c in configs) == sorted(
        (width, seed) for width in pcfg_full.SIZE_WIDTHS for seed in pcfg_full.SIZE_PLATEAU_SEEDS)
    steps = {c.width: c.steps for c in configs}
    assert steps == {16: (8000, 16000, 32000), 32: (8000, 16000), 64: (8000, 16000)}
    for test in tests.values():  # Every compared width is measured at the compared step.
        assert test.step == pcfg_full.SIZE_PLATEAU_STEP and all(test.step in steps[w] for w in test.levels)
    assert not set(pcfg_full.SIZE_PLATEAU_SEEDS) & (set(pcfg_full.SIZE_SEEDS) | set(pcfg_full.FULL_SEEDS))
    assert config.hessian.embed_width == 64 and config.hessian.max_matvecs == 256
    assert tests["size"].levels == (16, 64) and tests["size"].family == "primary"
    assert tests["size_embedded"].statistic == "trace_embedded"
    assert sorted(t.family for t in tests.values()) == ["primary", "secondary", "secondary", "secondary"]
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("size_plateau,protocol")


def test_the_size_decay_config_runs_each_width_over_decaying_budgets(pcfg_data_dir, tmp_path):
    config, configs, tests = _checked_option("size_decay", pcfg_data_dir, tmp_path)
    budgets = {}
    for c in configs:
        assert c.schedule == "warmup_linear" and c.steps == (c.budget,)  # One checkpoint, its end.
        budgets.setdefault(c.width, set()).add(c.budget)
    assert budgets == {16: {8000, 16000, 32000}, 32: {8000, 16000}, 64: {4000, 8000}}
    assert sorted({c.seed for c in configs}) == list(pcfg_full.SIZE_DECAY_SEEDS)
    earlier = set(pcfg_full.SIZE_PLATEAU_SEEDS) | set(pcfg_full.SIZE_SEEDS) | set(pcfg_full.FULL_SEEDS)
    assert not set(pcfg_full.SIZE_DECAY_SEEDS) & earlier
    assert len(configs) == 7 * len(pcfg_full.SIZE_DECAY_SEEDS)
    # The primary test: width 16 read at width 64's last budget's loss, on the embedded trace.
    size = tests["size"]
    assert size.family == "primary" and size.levels == (64, 16) and size.step == "interpolated_loss"
    assert size.statistic == "trace_embedded" and size.score == "linear_probe_acc"
    assert tests["size_raw"].statistic == "trace" and tests["size_raw"].score == "linear_probe_masked_acc"
    for name in ("size_same_budget", "size_16_32"):  # Every compared width ran that budget.
        assert all(tests[name].step in budgets[w] for w in tests[name].levels)
    for test in tests.values():
        assert ("schedule", "warmup_linear") in test.where
    assert sorted(t.family for t in tests.values()) == ["primary", "secondary", "secondary", "secondary"]
    assert config.hessian.embed_width == 64
    with pytest.raises(ValueError, match="unknown or conflicting options"):
        pcfg_full.get_config("size_decay,size")


def test_the_continued_only_config_trains_past_three_plateau_checkpoints_4x_apart(pcfg_data_dir, tmp_path):
    config, configs, tests = _checked_option("continued_only", pcfg_data_dir, tmp_path)
    assert sorted(c.seed for c in configs) == list(pcfg_full.SEEDS)
    assert {(c.objective, c.width, c.schedule) for c in configs} == {("adamw", 32, "warmup_constant")}
    assert {c.steps for c in configs} == {(8000, 16000, 32000)}  # 4x from the first to the last.
    assert config.pretrain.warmup_steps < 8000  # The rate is constant at every checkpoint.
    assert tests["continued_training"].steps is None and tests["continued_training"].family == "primary"
    assert tests["late_plateau"].steps == (16000, 32000) and tests["late_plateau"].family == "secondary"
