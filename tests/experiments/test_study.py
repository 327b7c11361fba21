"""Tests of the study end to end: outputs, resumption after a kill, failure isolation, bad input."""

import csv
import math
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments.configs import smoke
from experiments.core import jobs
from experiments.core.config_utils import ConfigError
from experiments.sweep import study
from tests._subprocess import HANG_GUARD_SECONDS

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOKE_CONFIG = REPO / "experiments" / "configs" / "smoke.py"


def _config(data_dir):
    config = smoke.get_config()
    config.data.data_dir = data_dir
    return config


def _read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _job_files(workdir):
    root = pathlib.Path(workdir, jobs.JOBS_DIRNAME)
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in root.rglob("*.json")}


def _assert_same_results(actual, expected):
    """Equal cells, numbers up to float noise; wall times excluded."""
    assert actual and len(actual) == len(expected)
    assert list(actual[0]) == list(expected[0])
    for row, reference in zip(actual, expected, strict=True):
        for name, cell in reference.items():
            if name.startswith("seconds_"):
                continue
            try:
                value, reference_value = float(row[name]), float(cell)
            except ValueError:
                assert row[name] == cell, name
                continue
            assert math.isclose(value, reference_value, rel_tol=1e-5, abs_tol=1e-7) or (
                math.isnan(value) and math.isnan(reference_value)
            ), (name, row[name], cell)


@pytest.fixture(scope="module")
def smoke_study(digits_data_dir, tmp_path_factory):
    """One uninterrupted smoke study, shared read-only."""
    workdir = tmp_path_factory.mktemp("smoke_study")
    report = study.run_study(_config(digits_data_dir), workdir)
    return workdir, report


def test_study_writes_results_report_and_plots(smoke_study):
    workdir, report = smoke_study
    rows = _read_csv(workdir / study.RESULTS_FILE)
    assert list(rows[0])[: len(study.CONTRACT_COLUMNS)] == list(study.CONTRACT_COLUMNS)
    assert list(rows[0])[-1] == "nan_reason"
    for extra in ("trace_per_param", "density_negative_mass", "matvecs_5pct", "matvecs_1pct"):
        assert extra in rows[0]
    assert any(name.startswith("block_trace/") for name in rows[0])
    # 2 objectives x 1 model x 1 seed x 4 checkpoints.
    assert [(r["objective"], int(r["step"])) for r in rows] == [
        (objective, step)
        for objective in ("cross_entropy", "squared_error")
        for step in (0, 5, 20, 60)
    ]
    for row in rows:
        assert float(row["trace"]) > 0 and 0 <= float(row["linear_probe_acc"]) <= 1
        assert row["setting"] == "vision" and row["model"] == "mlp_w16_d1"
        assert row["pretrain_loss_gap"] == "" and row["nan_reason"] == ""
        # The Fisher trace needs a categorical output: empty, not invented, elsewhere.
        assert (row["fisher_trace"] != "") == (row["objective"] == "cross_entropy")
    assert report == workdir / "report.md" and "Kendall" in report.read_text()
    plots = {p.name for p in (workdir / "plots").glob("*.png")}
    assert {"trace_vs_step.png", "scatter_linear_probe_acc.png"} <= plots
    assert any(name.startswith("density_") for name in plots)
    density = workdir / "hessian/mlp_w16_d1/cross_entropy/seed0/step60/density.npz"
    assert density.exists()


def test_smoke_study_reproduces_its_stored_results(smoke_study):
    """The stored `results.csv` of the smoke study, every cell but the wall times.

    Every cell the study wrote before the experiments were reorganised around the `Setting`
    interface is reproduced bit for bit on this project's CPU (only the `setting` label changed,
    `digits` -> `vision`); the columns added since (adaptive sharpness, effective rank, the
    fresh-minibatch trace, eigenvalue residuals, weight norm) are stored as first measured. Stored
    again on 2026-12-02 when Rademacher probes became packed bits (`_vectors.rademacher_signs`) and
    the summary's block traces came to share the trace's probes: the cells of Rademacher estimates
    (traces, block traces, adaptive sharpness, their errors and product counts, the density's
    negative mass, effective rank, eigenvalue residuals) changed; every other cell is as before.
    The `schedule` column (runs told apart by their schedule, `experiments.sweep.arms`) was added
    on 2026-12-02 (session 8) with the run's schedule, and the `density_file` column (each
    checkpoint's spectral density, relative to the workdir) on 2026-12-02 (session 9), and the
    `seconds_<stage>_compile` columns (wall times, not compared) in session 10; no other cell
    changed. In session 13 `density_negative_mass` became the mass clearly below 0
    (`stage.negative_mass`) instead of `cdf(0)`: that column alone was stored again.
    Floats are compared to a relative 1e-5 (as the resume test below) so that another CPU or XLA
    version, which may round differently, still passes; any change of the computation moves these
    numbers far more.
    """
    workdir, _ = smoke_study
    stored = _read_csv(pathlib.Path(__file__).parent / "reference" / "smoke_results.csv")
    _assert_same_results(_read_csv(workdir / study.RESULTS_FILE), stored)


def test_killed_study_resumes_without_recomputing(smoke_study, digits_data_dir, tmp_path):
    reference, _ = smoke_study
    workdir = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "experiments.study",
        f"--workdir={workdir}",
        f"--config={SMOKE_CONFIG}",
        f"--config.data.data_dir={digits_data_dir}",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # On a 2-core host loaded 8-9 the first job took over 120 s (2026-12-03).
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not _job_files(workdir) and process.poll() is None:
            assert time.monotonic() < deadline, f"no job finished in {HANG_GUARD_SECONDS} s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    finished = _job_files(workdir)
    assert finished and not (workdir / study.RESULTS_FILE).exists()

    study.run_study(_config(digits_data_dir), workdir)
    assert {p: _job_files(workdir)[p] for p in finished} == finished
    _assert_same_results(
        _read_csv(workdir / study.RESULTS_FILE), _read_csv(reference / study.RESULTS_FILE)
    )


def test_failures_and_nans_are_isolated_and_explained(
    smoke_study, digits_data_dir, tmp_path, monkeypatch
):
    reference, _ = smoke_study
    workdir = tmp_path / "study"
    shutil.copytree(reference, workdir)
    parts = ("mlp_w16_d1", "cross_entropy", "seed0")
    for job_id in (
        jobs.make_job_id("measure", *parts, step=5), jobs.make_job_id("finetune", *parts, step=20)
    ):
        jobs.result_path(workdir, job_id).unlink()

    def diverged_or_broken(stage, *args, **kwargs):
        if stage.name == "measure":
            return {"trace": float("nan"), "nan_reason": {"trace": "loss diverged"}}
        raise RuntimeError("out of memory")

    monkeypatch.setattr(study, "score_checkpoint", diverged_or_broken)
    with pytest.raises(jobs.StudyIncompleteError,
                       match=r"1 of \d+ jobs did not finish .*finetune.*out of memory"):
        study.run_study(_config(digits_data_dir), workdir)
    rows = {(r["objective"], r["step"]): r for r in _read_csv(workdir / study.RESULTS_FILE)}
    assert rows["cross_entropy", "5"]["trace"] == "nan"
    assert rows["cross_entropy", "5"]["nan_reason"] == "trace: loss diverged"
    failed = rows["cross_entropy", "20"]
    assert failed["linear_probe_acc"] == failed["finetune_acc"] == "nan"
    assert "finetune job failed (RuntimeError: out of memory)" in failed["nan_reason"]
    assert float(failed["trace"]) > 0  # The other stage of the checkpoint is unaffected.
    assert rows["squared_error", "20"]["nan_reason"] == ""
    assert "NaN (loss diverged)" in (workdir / "report.md").read_text()


def test_empty_sweep_is_refused(digits_data_dir, tmp_path):
    config = _config(digits_data_dir)
    config.sweep.widths = ()
    with pytest.raises(study.EmptySweepError, match="config.sweep.widths"):
        study.run_study(config, tmp_path)
    assert not (tmp_path / jobs.JOBS_DIRNAME).exists()


def test_binary_reports_bad_input_in_one_line(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.study",
            f"--workdir={tmp_path}",
            f"--config={SMOKE_CONFIG}",
            "--config.sweep.objectives=()",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,  # It fails within seconds on a quiet machine.
    )
    assert completed.returncode != 0
    assert "EmptySweepError: The sweep is empty: config.sweep.objectives" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_primary_tests_that_one_seed_cannot_answer_are_refused_before_any_job(
    digits_data_dir, tmp_path
):
    config = _config(digits_data_dir)
    config.report.primary_tests = (
        dict(name="size", kind="paired_difference", statistic="trace", score="linear_probe_acc",
             axis="width", levels=(8, 16)),
    )
    with pytest.raises(ConfigError, match=r"primary_tests \(size\).*at least 2.*\(0,\)"):
        study.run_study(config, tmp_path / "study")
    assert not (tmp_path / "study").exists()
