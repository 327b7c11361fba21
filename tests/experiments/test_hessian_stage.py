"""Tests of the Hessian stage: every checkpoint measured, resumable, NaNs reported, bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from experiments.core import checkpoints, config_utils, jobs
from experiments.measurement import stage as hessian
from experiments.sweep import study
from experiments.training import runs


@pytest.fixture(scope="module")
def measured(smoke_run):
    """`measure_run` of the smoke run, with the file times of its results."""
    config, workdir = smoke_run
    results = study.run_stage(hessian.STAGE, workdir)
    return results, {p: p.stat().st_mtime_ns for p in (workdir / jobs.JOBS_DIRNAME).rglob("*.json")}


def test_every_checkpoint_is_measured(smoke_run, measured):
    config, workdir = smoke_run
    results, _ = measured
    assert list(results) == [jobs.make_job_id("measure", step=step) for step in (0, 5, 20, 60)]
    settings = hessian.read_settings(config)
    for step, record in zip((0, 5, 20, 60), results.values(), strict=True):
        assert record.status == jobs.DONE, record.error
        result = record.result
        assert result["trace"] > 0 and result["trace_stderr"] > 0
        assert 2 <= result["matvecs_trace"] <= settings["max_matvecs"]
        assert result["matvecs_5pct"] <= result["matvecs_1pct"]
        # m = var / (rtol * trace)^2: the 1% target needs 25 times the 5% one (up to rounding).
        assert result["matvecs_1pct"] == pytest.approx(25 * result["matvecs_5pct"], rel=0.05)
        assert result["top_eigenvalue"] == max(result["top_eigenvalues"])
        layers = {k for k in result if k.startswith("block_trace/")}
        assert layers == {"block_trace/encoder/Dense_0", "block_trace/head/Dense_0"}
        assert 0 <= result["density_negative_mass"] <= 1
        assert result["trace_downstream"] > 0 and result["fisher_trace"] > 0
        assert not result.get("nan_reason")
        with np.load(workdir / "hessian" / f"step{step}" / hessian.DENSITY_FILE) as density:
            assert density["weights"].shape == density["nodes"].shape
            assert density["weights"].sum() == pytest.approx(1.0, abs=1e-5)


def test_negative_mass_counts_what_lies_clearly_below_zero():
    # The near-zero bulk in one heavy node just above or just below 0 (as Lanczos puts it, either
    # side from one checkpoint to the next) gives the same mass; a node at -0.5 counts in full.
    def density(bulk_node):
        nodes = jnp.array([[bulk_node, 2.0, 5.0, -0.5]])
        return hessjax.SpectralDensity(nodes, jnp.array([[0.9, 0.04, 0.03, 0.03]]), 1000, 4)

    above, below = hessian.negative_mass(density(1e-4)), hessian.negative_mass(density(-1e-4))
    assert above == below == pytest.approx(0.03)
    assert float(density(-1e-4).cdf(0.0)) == pytest.approx(0.93)  # What cdf(0) would say.
    # Resolution: 1% of the nodes' span (5.5), so a node at -0.06 counts and one at -0.05 does not.
    assert hessian.negative_mass(density(-0.06)) == pytest.approx(0.93)
    assert hessian.negative_mass(density(-0.05)) == pytest.approx(0.03)


def test_same_probes_and_data_for_every_checkpoint(smoke_run, measured):
    """Measuring a checkpoint again gives the identical numbers (common random numbers)."""
    config, workdir = smoke_run
    results, _ = measured
    run, _ = runs.open_run(workdir)
    again = study.score_checkpoint(
        hessian.STAGE, workdir, 20, run, hessian.read_settings(config), None
    )
    stored = results[jobs.make_job_id("measure", step=20)].result
    for name in ("trace", "trace_stderr", "top_eigenvalue", "trace_downstream", "fisher_trace"):
        assert again[name] == pytest.approx(stored[name], rel=1e-6)


def test_rerun_skips_finished_checkpoints(smoke_run, measured):
    _, workdir = smoke_run
    _, times = measured
    study.run_stage(hessian.STAGE, workdir)
    assert {p: p.stat().st_mtime_ns for p in times} == times


def test_non_finite_statistics_are_nan_with_a_reason(smoke_run, tmp_path):
    config, workdir = smoke_run
    run, _ = runs.open_run(workdir)
    params, model_state = runs.restore_checkpoint(workdir, 60, run)
    params = jax.tree_util.tree_map(lambda leaf: leaf.at[0].set(jnp.nan), params)
    result = hessian.measure(run, params, model_state, hessian.read_settings(config))
    for name in ("trace", "trace_downstream", "fisher_trace"):
        assert np.isnan(result[name])
        assert "not finite" in result["nan_reason"][name]
    # The job runner stores them as NaN with the reason.
    jobs.write_result(tmp_path, jobs.JobResult("hessian/nan", jobs.DONE, result))
    stored = jobs.read_result(tmp_path, "hessian/nan")
    assert np.isnan(stored.result["trace"]) and "not finite" in stored.nan_reason["/trace"]


def test_workdir_without_checkpoints_is_refused(smoke_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="No pretraining run"):
        study.run_stage(hessian.STAGE, tmp_path)
    _, workdir = smoke_run
    shutil.copy(workdir / runs.CONFIG_FILE, tmp_path / runs.CONFIG_FILE)
    with pytest.raises(checkpoints.NoCheckpointsError, match="holds no checkpoint"):
        study.run_stage(hessian.STAGE, tmp_path)


def test_checkpoint_of_another_model_is_refused(smoke_run, tmp_path):
    _, workdir = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(jobs.JOBS_DIRNAME))
    saved = json.loads((copy / runs.CONFIG_FILE).read_text())
    saved["model"]["width"] = 8
    (copy / runs.CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="does not fit the model"):
        study.score_checkpoint(
            hessian.STAGE,
            copy,
            60,
            runs.open_run(copy)[0],
            hessian.read_settings(runs.load_config(copy)),
            None,
        )


def test_config_of_another_run_is_refused(smoke_run):
    config, workdir = smoke_run
    other = config.copy_and_resolve_references()
    other.model.width = 8
    with pytest.raises(config_utils.ConfigError, match="config.model.width: 16 -> 8"):
        study.run_stage(hessian.STAGE, workdir, other)


def test_other_data_of_the_vision_setting_is_the_target_task_s_images(smoke_run):
    """Critic 1 in the vision setting: only the label-free Fisher trace, on the target images,
    which differs from the pretraining data's; the pretraining statistics do not change."""
    config, workdir = smoke_run
    run, _ = runs.open_run(workdir)
    settings = hessian.read_settings(config)
    assert not settings["other_data"]  # Off unless asked for.
    without = study.score_checkpoint(hessian.STAGE, workdir, 20, run, settings, None)
    assert "fisher_trace_other_data" not in without and "seconds_other_data" not in without
    with_other = study.score_checkpoint(
        hessian.STAGE, workdir, 20, run, {**settings, "other_data": True}, None
    )
    assert "trace_other_data" not in with_other
    assert with_other["fisher_trace_other_data"] > 0 and with_other["fisher_trace_other_data_stderr"] > 0
    assert with_other["fisher_trace_other_data"] != pytest.approx(with_other["fisher_trace"])
    for name in ("trace", "trace_downstream", "fisher_trace", "top_eigenvalue"):
        assert with_other[name] == without[name]
