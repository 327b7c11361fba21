"""The study on the language setting end to end: pretraining, a `measure` and a `probe` job per
checkpoint, results.csv with the contract columns, and the report (tiny grammar, a few steps)."""

import csv

import ml_collections
import numpy as np
import pytest

from experiments.configs import pcfg as pcfg_config
from experiments.core import jobs
from experiments.sweep import study
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
        probes = [float(row[f"linear_probe_{task}_acc"]) for task in ("a", "b", "c")]
        assert all(0 <= accuracy <= 1 for accuracy in probes)
        assert float(row["linear_probe_acc"]) == pytest.approx(sum(probes) / 3)
        # Critic 3 and critic 1: the top eigenvalue of the same loss, and the curvature of a task
        # probe's loss on downstream sentences only.
        assert float(row["top_eigenvalue"]) > 0
        assert float(row["trace_downstream_stderr"]) > 0 and 2 <= int(row["matvecs_downstream"]) <= 8
        assert np.isfinite(float(row["trace_downstream"]))
        assert float(row["pretrain_loss_gap_train"]) >= 0
        finetuned = [float(row[f"finetune_{task}_acc"]) for task in ("a", "b", "c")]
        assert float(row["finetune_acc"]) == pytest.approx(sum(finetuned) / 3)
        for task in ("a", "b", "c"):
            baselines = [float(row[f"baseline_{kind}_{task}_acc"]) for kind in ("onehot", "bow", "random")]
            assert float(row[f"linear_probe_{task}_gain"]) == pytest.approx(
                float(row[f"linear_probe_{task}_acc"]) - max(baselines)
            )
        assert row["nan_reason"] == ""
        assert "fisher_samples" not in row and "linear_probe_acc/a" not in row
    # The measurement stage and the setting's transfer stage, one job each per checkpoint.
    stages = {job_id.split("/")[0] for job_id in jobs.read_results(tmp_path)}
    assert stages == {"pretrain", "measure", "probe"}
