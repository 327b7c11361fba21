"""Tests of the transfer stage: linear probe, fine-tuning, k-shot variants and bad input."""

import numpy as np
import pytest

from experiments.core import checkpoints, config_utils, jobs
from experiments.sweep import study
from experiments.training import heads, runs
from experiments.vision import transfer as finetune


def test_fit_linear_head_separates_separable_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20).astype(np.int32)
    features = rng.normal(size=(60, 4)).astype(np.float32) + 5 * np.eye(3, 4)[labels]
    head = heads.fit_logistic(features, labels, 3, l2=1e-3, steps=50)
    again = heads.fit_logistic(features, labels, 3, l2=1e-3, steps=50)
    assert head.accuracy(features, labels) == 1.0
    np.testing.assert_array_equal(head.kernel, again.kernel)  # Deterministic.


def test_every_checkpoint_is_scored(smoke_run):
    _, workdir = smoke_run
    results = study.run_stage(finetune.STAGE, workdir)
    assert list(results) == [jobs.make_job_id("finetune", step=step) for step in (0, 5, 20, 60)]
    for record in results.values():
        assert record.status == jobs.DONE, record.error
        for score in finetune.SCORES:
            assert 0 <= record.result[score] <= 1
            assert record.result[f"{score}_stderr"] is None  # One seed: no spread.
    final = results[jobs.make_job_id("finetune", step=60)].result
    # Five target classes: chance is 0.2; the pretrained features transfer well above it.
    assert final["linear_probe_acc"] > 0.6 and final["finetune_acc"] > 0.4


def test_k_shot_variants_and_seeds(smoke_run):
    config, workdir = smoke_run
    config = config.copy_and_resolve_references()
    config.finetune.k_shots = (0, 3)
    config.finetune.seeds = (0, 1)
    run, _ = runs.open_run(workdir)
    params, model_state = runs.restore_checkpoint(workdir, 60, run)
    result = finetune.score(run, params, model_state, finetune.read_settings(config))
    assert set(result["held_out_classes/all/per_seed"]) == set(finetune.SCORES)
    for score in finetune.SCORES:
        assert result[f"{score}_stderr"] is not None
        per_seed = result["held_out_classes/3shot/per_seed"][score]
        assert len(per_seed) == 2
        assert result[f"held_out_classes/3shot/{score}"] == pytest.approx(np.mean(per_seed))
    # The whole training split does not depend on the seed, except for fine-tuning's data order.
    probe = result["held_out_classes/all/per_seed"]["linear_probe_acc"]
    assert probe[0] == probe[1]


def test_unknown_target_task_is_refused(smoke_config):
    smoke_config.finetune.tasks = ("held_out_classes", "no_such_task")
    with pytest.raises(config_utils.ConfigError, match=r"unknown target tasks \['no_such_task'\]"):
        finetune.read_settings(smoke_config)


def test_workdir_without_checkpoints_is_refused(smoke_run, tmp_path):
    config, _ = smoke_run
    (tmp_path / runs.CONFIG_FILE).write_text(config.to_json())
    with pytest.raises(checkpoints.NoCheckpointsError, match="pretrain it first"):
        study.run_stage(finetune.STAGE, tmp_path)
