"""The experiment binaries as two processes on localhost, joined by jax.distributed, against one.

Each process has 2 CPU devices: pretraining is data parallel over 4 devices of 2 processes, both
processes write into one workdir, and the outcome must be the single-device run's up to the order
of float reductions (the all-reduce sums the gradient in another order).
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import smoke
from experiments.core import checkpoints, jobs
from experiments.measurement import stage as measurement
from experiments.sweep import study
from experiments.training import runs, train
from tests import _subprocess

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
TIMEOUT_SECONDS = 300
# Float32 sums in another order, compounded over 30 steps: the parameters' differences (at most 9e-8)
# use a quarter of `RTOL` with an absolute floor of `RTOL / 100`; the losses differ by 2e-8 relative.
RTOL = 1e-5
# Lanczos and the density's quadrature amplify rounding a little (observed: 8e-6).
HESSIAN_RTOL = 1e-4
PRETRAIN_OVERRIDES = {"steps": 30, "checkpoint_steps": (10,), "log_every": 10}


def _run_binary(module: str, *flags: str) -> list[subprocess.CompletedProcess]:
    completed = _subprocess.run_processes(
        [sys.executable, "-m", module, *flags],
        num_processes=NUM_PROCESSES,
        num_devices=DEVICES_PER_PROCESS,
        timeout=TIMEOUT_SECONDS,
    )
    for index, process in enumerate(completed):
        assert process.returncode == 0, f"process {index} failed:\n{process.stderr[-4000:]}"
    return completed


@pytest.fixture(scope="module")
def pretrained(digits_data_dir, tmp_path_factory):
    """The smoke run pretrained by two processes, and by this (one-device) process."""
    root = tmp_path_factory.mktemp("multihost")
    flags = [f"--config.pretrain.{name}={value}" for name, value in PRETRAIN_OVERRIDES.items()]
    completed = _run_binary(
        "experiments.pretrain",
        "--config=experiments/configs/smoke.py",
        f"--config.data.data_dir={digits_data_dir}",
        f"--workdir={root / 'two'}",
        *flags,
    )
    config = smoke.get_config()
    config.data.data_dir = digits_data_dir
    config.pretrain.update(PRETRAIN_OVERRIDES)
    train.pretrain(config, root / "one")
    return root / "two", root / "one", completed


def _run_one(command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    """One process, outside `jax.distributed`, with its output captured."""
    return subprocess.run(
        command, cwd=_subprocess.ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
        env=environment,
    )


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]


def test_two_processes_pretrain_like_one(pretrained):
    two, one, completed = pretrained
    for process in completed:
        assert "each batch of 32 examples is split across 4 devices of 2 processes" in process.stderr
    assert checkpoints.steps(two) == checkpoints.steps(one) == [10, 30]
    for step in (10, 30):
        for got, expected in zip(
            jax.tree_util.tree_leaves(runs.restore_params(two, step)),
            jax.tree_util.tree_leaves(runs.restore_params(one, step)),
            strict=True,
        ):
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * 1e-2)
    # One writer: every line once, in order, as one process writes them.
    records, expected = _metrics(two), _metrics(one)
    assert [sorted(r) for r in records] == [sorted(r) for r in expected]
    for record, reference in zip(records, expected, strict=True):
        for name in ("step", "train_loss_steps"):
            assert record.get(name) == reference.get(name)
        for name in ("train_loss", "test_loss", "learning_rate"):
            if name in reference:
                np.testing.assert_allclose(record[name], reference[name], rtol=RTOL)
    assert json.loads((two / runs.CONFIG_FILE).read_text()) == json.loads(
        (one / runs.CONFIG_FILE).read_text()
    )
    assert json.loads((two / train.SUMMARY_FILE).read_text())["checkpoint_steps"] == [10, 30]


def test_a_batch_the_devices_do_not_divide_is_refused(digits_data_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/smoke.py",
        f"--config.data.data_dir={digits_data_dir}",
        f"--workdir={tmp_path / 'run'}",
        "--config.pretrain.batch_size=30",
    ]
    result = _run_one(command, _subprocess.environment(4))
    assert result.returncode == 1
    assert "ConfigError: config.pretrain.batch_size=30 must be a multiple of the 4 devices" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # Refused before anything is written.


def test_a_malformed_environment_is_reported_in_one_line(tmp_path):
    command = [sys.executable, "-m", "experiments.measure", f"--workdir={tmp_path}"]
    environment = _subprocess.environment(1, HESSJAX_COORDINATOR="127.0.0.1:1")
    result = _run_one(command, environment)
    assert result.returncode == 1
    assert "ValueError: HESSJAX_COORDINATOR is set, so HESSJAX_NUM_PROCESSES and HESSJAX_PROCESS_ID" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_processes_that_see_different_values_are_stopped():
    completed = _run_binary("tests.experiments._multihost_worker")
    results = [json.loads(process.stdout.strip().splitlines()[-1]) for process in completed]
    assert [result["process_index"] for result in results] == [0, 1]
    for result in results:
        assert result["error"].startswith("The 2 processes disagree on the process index")


def _assert_results_close(got: dict, expected: dict, where: str) -> None:
    assert sorted(got) == sorted(expected), where
    for name, value in expected.items():
        if name.startswith("seconds_"):
            continue
        if isinstance(value, float | list):
            np.testing.assert_allclose(got[name], value, rtol=HESSIAN_RTOL, err_msg=f"{where}: {name}")
        else:
            assert got[name] == value, f"{where}: {name}"


@pytest.mark.slow  # About 60 s on 2 cores: the Hessian stage compiles some 60 kernels, here twice.
def test_two_processes_measure_the_hessian_like_one(pretrained):
    two, one, _ = pretrained
    _run_binary("experiments.measure", f"--workdir={two}")
    expected = study.run_stage(measurement.STAGE, one)
    got = jobs.read_results(two)
    measured = [jobs.make_job_id("measure", step=step) for step in (10, 30)]
    assert sorted(got) == sorted(expected) == measured
    for job_id, record in expected.items():
        assert record.status == got[job_id].status == jobs.DONE
        _assert_results_close(got[job_id].result, record.result, job_id)
    for step in (10, 30):
        path = pathlib.Path("hessian", f"step{step}", measurement.DENSITY_FILE)
        with np.load(two / path) as density, np.load(one / path) as reference:
            for name in ("nodes", "weights"):
                np.testing.assert_allclose(density[name], reference[name], rtol=HESSIAN_RTOL, atol=1e-6)


def test_two_processes_prepare_fresh_data_once_and_pretrain_the_language_setting(tmp_path):
    # Both processes start with an empty data dir: only the primary one may build the TFDS dataset
    # (two builders racing on TFDS's final rename made one process fail), then both train on it.
    workdir = tmp_path / "run"
    _run_binary(
        "experiments.pretrain",
        "--config=experiments/configs/pcfg.py",
        "--config.data.pcfg_config=tiny",
        f"--config.data.data_dir={tmp_path / 'data'}",
        f"--workdir={workdir}",
        "--config.pretrain.steps=10",
        "--config.pretrain.checkpoint_steps=(10,)",
        "--config.pretrain.warmup_steps=2",
        "--config.pretrain.batch_size=16",
        "--config.pretrain.log_every=5",
    )
    assert checkpoints.steps(workdir) == [10]
    assert [record["step"] for record in _metrics(workdir)] == [5, 10, 10]
    assert np.isfinite(_metrics(workdir)[-1]["loss_gap"])
