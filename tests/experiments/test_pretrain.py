"""Tests of resumable pretraining: checkpoints, resumption, config checks and the binary."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import smoke
from experiments.core import checkpoints, config_utils
from experiments.training import objectives, runs, train
from tests._subprocess import HANG_GUARD_SECONDS

REPO = pathlib.Path(__file__).resolve().parents[2]


def _assert_trees_equal(actual, expected):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(digits_data_dir, tmp_path_factory):
    """One finished smoke run, shared read-only; tests that change it work on a copy."""
    config = smoke.get_config()
    config.data.data_dir = digits_data_dir
    config.sweep = ml_collections.ConfigDict({"axis": "steps"})  # A later stage's section.
    workdir = tmp_path_factory.mktemp("finished_run")
    return config, workdir, train.pretrain(config, workdir)


def _copy_of(finished_run, tmp_path):
    config, workdir, result = finished_run
    shutil.copytree(workdir, tmp_path / "copy")
    return config.copy_and_resolve_references(), tmp_path / "copy", result


def test_pretrain_writes_checkpoints_metrics_and_config(finished_run):
    config, workdir, result = finished_run
    assert result.checkpoint_steps == [0, 5, 20, 60] == checkpoints.steps(workdir)
    assert result.num_params == (64 * 16 + 16) + (16 * 5 + 5)
    saved = json.loads((workdir / runs.CONFIG_FILE).read_text())
    assert saved == config_utils.to_plain(config) and saved["sweep"] == {"axis": "steps"}
    records = _metrics(workdir)
    assert [r["step"] for r in records if "test_loss" in r] == [0, 5, 20, 60]
    assert [r["step"] for r in records if "train_loss" in r] == [20, 40, 60]
    test_losses = [r["test_loss"] for r in records if "test_loss" in r]
    assert test_losses[-1] < 0.5 * test_losses[0]
    summary = json.loads((workdir / train.SUMMARY_FILE).read_text())
    assert summary["num_params"] == result.num_params and summary["steps"] == 60


def test_checkpoints_round_trip_exactly(finished_run):
    _, workdir, result = finished_run
    params, model_state = runs.restore_params(workdir)  # The last step by default.
    _assert_trees_equal(params, result.params)
    assert model_state == {}
    run = runs.load_run(workdir)
    initial, _ = run.init()
    _assert_trees_equal(runs.restore_params(workdir, 0, run=run)[0], initial)
    with pytest.raises(FileNotFoundError, match=r"step 7.*\[0, 5, 20, 60\]"):
        runs.restore_params(workdir, 7, run=run)


def test_batchnorm_state_round_trips(smoke_config, tmp_path):
    smoke_config.model.family = "resnet"
    smoke_config.model.width = 4
    smoke_config.pretrain.steps = 6
    smoke_config.pretrain.checkpoint_steps = (3,)
    result = train.pretrain(smoke_config, tmp_path)
    params, model_state = runs.restore_params(tmp_path, 6)
    _assert_trees_equal(params, result.params)
    _assert_trees_equal(model_state, result.model_state)
    assert set(model_state) == {"batch_stats"}


@pytest.mark.parametrize("resume_step", [0, 5])
def test_resuming_from_an_earlier_checkpoint_reproduces_the_run(finished_run, tmp_path, resume_step):
    config, workdir, first = _copy_of(finished_run, tmp_path)
    metrics = (workdir / train.METRICS_FILE).read_text()
    # Leave the workdir as a run killed just after its checkpoint at `resume_step` would.
    for step in checkpoints.steps(workdir):
        if step > resume_step:
            shutil.rmtree(workdir / checkpoints.CHECKPOINT_DIR / str(step))
    (workdir / train.SUMMARY_FILE).unlink()
    again = train.pretrain(config, workdir)
    _assert_trees_equal(again.params, first.params)
    assert again.checkpoint_steps == first.checkpoint_steps

    resumed = _metrics(workdir)
    original = [json.loads(line) for line in metrics.splitlines()]
    log_every = config.pretrain.log_every
    cut = {r["step"] for r in resumed if r.get("train_loss_steps", log_every) < log_every}
    assert cut == ({20} if resume_step == 5 else set())

    def comparable(records):
        # Speed varies; a training loss averaged over an interval cut by the resumption differs.
        return [
            {k: v for k, v in r.items() if k != "steps_per_second"}
            for r in records
            if not ("train_loss" in r and r["step"] in cut)
        ]

    assert [r["step"] for r in resumed] == [r["step"] for r in original]
    assert comparable(resumed) == comparable(original)


def test_a_relative_workdir_is_resolved(finished_run, tmp_path, monkeypatch):
    # Users write `--workdir=runs/x`; Orbax itself accepts only absolute paths.
    config, reference, first = finished_run
    monkeypatch.chdir(tmp_path)
    again = train.pretrain(config, "relative_run")
    _assert_trees_equal(again.params, first.params)
    assert checkpoints.steps("relative_run") == checkpoints.steps(reference)


def test_a_finished_run_is_not_recomputed(finished_run, tmp_path):
    config, workdir, first = _copy_of(finished_run, tmp_path)
    metrics = (workdir / train.METRICS_FILE).read_text()
    config.pretrain.log_every = 7  # Does not change the parameters.
    config.hessian = ml_collections.ConfigDict({"probes": 10})  # Not a pretraining section.
    again = train.pretrain(config, workdir)
    _assert_trees_equal(again.params, first.params)
    assert (workdir / train.METRICS_FILE).read_text() == metrics


def test_a_different_config_is_refused_unless_overwrite(finished_run, tmp_path):
    changed, workdir, _ = _copy_of(finished_run, tmp_path)
    changed.model.width = 32
    changed.pretrain.learning_rate = 0.1
    changed.hessian = ml_collections.ConfigDict({"probes": 10})  # Not a pretraining section.
    with pytest.raises(checkpoints.WorkdirConfigMismatchError) as error:
        train.pretrain(changed, workdir)
    message = str(error.value)
    assert "config.model.width: 16 -> 32" in message
    assert "config.pretrain.learning_rate: 0.05 -> 0.1" in message
    assert "hessian" not in message and "overwrite" in message
    result = train.pretrain(changed, workdir, overwrite=True)
    assert result.num_params == (64 * 32 + 32) + (32 * 5 + 5)
    assert runs.load_config(workdir).model.width == 32
    assert [r["step"] for r in _metrics(workdir) if "test_loss" in r] == [0, 5, 20, 60]


@pytest.mark.parametrize(("start", "stop"), [(0, 3), (5, 9), (4, 4)])
def test_batches_made_ahead_are_the_batches_of_their_steps(smoke_config, start, stop):
    run = runs.build_run(smoke_config)
    size = run.settings["batch_size"]
    expected = [
        objectives.training_batch(run.objective, run.task.train, size, run.seed, step)
        for step in range(start, stop)
    ]
    made = list(train._training_batches(run, start, stop))
    assert len(made) == len(expected) == stop - start
    for actual, wanted in zip(made, expected, strict=True):
        _assert_trees_equal(actual, wanted)


def test_wrong_field_types_name_the_field(smoke_config, tmp_path):
    plain = smoke_config.to_dict()
    plain["pretrain"]["learning_rate"] = "fast"
    with pytest.raises(
        config_utils.ConfigError,
        match="config.pretrain.learning_rate must be float; got str 'fast'",
    ):
        train.pretrain(ml_collections.ConfigDict(plain), tmp_path)
    plain = smoke_config.to_dict()
    plain["pretrain"]["checkpoint_steps"] = (5, "10")
    with pytest.raises(config_utils.ConfigError, match="config.pretrain.checkpoint_steps must be"):
        train.pretrain(ml_collections.ConfigDict(plain), tmp_path)
    smoke_config.pretrain.checkpoint_steps = (5, 500)
    with pytest.raises(config_utils.ConfigError, match=r"in \[0, config.pretrain.steps=60\]"):
        train.pretrain(smoke_config, tmp_path)
    smoke_config.pretrain.checkpoint_steps = (5,)
    smoke_config.pretrain.optimizer = "lamb"
    with pytest.raises(config_utils.ConfigError, match=r"'lamb'.*\['adamw', 'sgd'\]"):
        train.pretrain(smoke_config, tmp_path)
    assert not (tmp_path / runs.CONFIG_FILE).exists()


def _pretrain_command(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/smoke.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def test_killed_run_resumes_to_bitwise_identical_parameters(smoke_config, digits_data_dir, tmp_path):
    # Long enough that the run is still going when its first checkpoint appears.
    steps, saved = 1000, (5, 500)
    overrides = [
        f"--config.pretrain.steps={steps}",
        f"--config.pretrain.checkpoint_steps={saved}",
    ]
    workdir = tmp_path / "interrupted"
    command = _pretrain_command(workdir, digits_data_dir, *overrides)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not (workdir / checkpoints.CHECKPOINT_DIR / "5").exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint within {HANG_GUARD_SECONDS} s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert steps not in checkpoints.steps(workdir), "the run finished before it was killed"

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stderr
    metric_steps = [r["step"] for r in _metrics(workdir)]
    assert metric_steps == sorted(metric_steps)  # Lines past the checkpoint were dropped.

    smoke_config.pretrain.steps = steps
    smoke_config.pretrain.checkpoint_steps = saved
    uninterrupted = train.pretrain(smoke_config, tmp_path / "uninterrupted")
    resumed_params, _ = runs.restore_params(workdir, steps)
    _assert_trees_equal(resumed_params, uninterrupted.params)


def test_binary_reports_user_errors_without_a_stack_trace(digits_data_dir, tmp_path):
    empty = tmp_path / "empty_tfds"
    empty.mkdir()
    command = _pretrain_command(tmp_path / "run", empty, "--config.data.name=mnist")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert result.returncode == 1
    assert "DatasetNotPreparedError: TFDS dataset 'mnist' is not prepared" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # Liu et al.'s: linear warmup, then linear decay to 0 at the run's last step.
        ("warmup_linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.0]),
        ("warmup_constant", [0.1, 0.6, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedules_warm_up_then_decay_or_stay(schedule, expected):
    settings = dict(
        learning_rate=1.0, schedule=schedule, warmup_steps=10, steps=50, optimizer="adamw",
        weight_decay=0.0, momentum=0.9,
    )
    _, rate = runs.make_optimizer(settings)
    steps = [0, 5, 10, 20, 30, 50]
    np.testing.assert_allclose([float(rate(step)) for step in steps], expected, atol=1e-6)
