"""Seeds pretrained as one `jax.vmap`ped program (`experiments.training.stacked`)."""

from __future__ import annotations

import csv
import json
import pickle
import shutil

import jax
import numpy as np
import pytest

from experiments.core import config_utils, jobs
from experiments.sweep import pretraining, study
from experiments.training import stacked, train
from tests.experiments.test_language import tiny_config  # noqa: F401 - a fixture.
from tests.experiments.test_study_pcfg import _tiny_study_config

SEEDS = (0, 1)


def _seed_configs(config, seeds=SEEDS):
    configs = []
    for seed in seeds:
        own = config.copy_and_resolve_references()
        own.seed = seed
        configs.append(own)
    return configs


def _lines(workdir):
    return [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]


def _assert_close(first, second):
    """Every leaf to 1e-5 but the attention key biases: the softmax ignores them, so their gradient
    is 0 up to rounding, and Adam turns the rounding's sign into steps of the learning rate (in
    separate runs too, wherever the sums round differently). The outputs (losses) are compared
    separately."""
    compared = 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(first), jax.tree.leaves(second),
                            strict=True):
        if "['key']['bias']" not in jax.tree_util.keystr(path):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
            compared += 1
    assert compared >= len(jax.tree.leaves(first)) - 2


def _assert_differ(first, second):
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second),
                                                       strict=True))


def test_stacked_seeds_equal_separate_runs_and_write_the_same_files(tiny_config, tmp_path):  # noqa: F811
    configs = _seed_configs(tiny_config)
    together = [tmp_path / "stacked" / f"seed{seed}" for seed in SEEDS]
    results = stacked.pretrain_stacked(configs, together)
    for config, workdir, result in zip(configs, together, results, strict=True):
        alone = train.pretrain(config, tmp_path / "alone" / f"seed{config.seed}")
        _assert_close(result.params, alone.params)
        assert result.checkpoint_steps == alone.checkpoint_steps == [0, 3, 6]
        assert result.num_params == alone.num_params
        lines, alone_lines = _lines(workdir), _lines(tmp_path / "alone" / f"seed{config.seed}")
        assert [sorted(line) for line in lines] == [sorted(line) for line in alone_lines]
        for line, other in zip(lines, alone_lines, strict=True):
            for key in ("train_loss", "test_loss", "loss_gap"):
                if key in line:
                    assert line[key] == pytest.approx(other[key], rel=1e-5, abs=1e-6)
        summary = json.loads((workdir / train.SUMMARY_FILE).read_text())
        assert summary["stacked_seeds"] == 2 and summary["steps_this_session"] == 6
        # `train.pretrain` reads a stacked run as its own: it restores it, nothing retrained.
        restored = train.pretrain(config, workdir)
        _assert_close(restored.params, result.params)
    _assert_differ(results[0].params, results[1].params)  # The seeds are not one run twice.


def test_stacked_seeds_resume_from_their_own_checkpoints(tiny_config, tmp_path):  # noqa: F811
    configs = _seed_configs(tiny_config, (0, 1, 2, 3, 4))
    workdirs = [tmp_path / f"seed{config.seed}" for config in configs]
    first = stacked.pretrain_stacked(configs, workdirs)
    kept = (workdirs[0] / train.SUMMARY_FILE).read_text()
    # As if killed: seeds 1 and 2 after their checkpoint at step 3 (restored and stacked together),
    # seed 3 after its step-0 checkpoint, seed 4 before any. Seed 0 finished.
    for seed, removed in ((1, (6,)), (2, (6,)), (3, (3, 6)), (4, None)):
        if removed is None:
            shutil.rmtree(workdirs[seed])
            continue
        for step in removed:
            shutil.rmtree(workdirs[seed] / "checkpoints" / str(step))
        (workdirs[seed] / train.SUMMARY_FILE).unlink()
    again = stacked.pretrain_stacked(configs, workdirs)
    assert (workdirs[0] / train.SUMMARY_FILE).read_text() == kept  # Finished: left as it was.
    summaries = [json.loads((w / train.SUMMARY_FILE).read_text()) for w in workdirs]
    assert [(s["steps_this_session"], s["stacked_seeds"]) for s in summaries[1:]] == [
        (3, 2), (3, 2), (6, 1), (6, 1)]
    for before, after, workdir in zip(first, again, workdirs, strict=True):
        _assert_close(after.params, before.params)
        assert after.checkpoint_steps == [0, 3, 6]
        # One line per checkpoint (0, 3, 6) and per log step (3, 6): none lost, none twice.
        assert [line["step"] for line in _lines(workdir)] == [0, 3, 3, 6, 6]


def test_stacking_refuses_what_it_cannot_stack(tiny_config, tmp_path):  # noqa: F811
    configs = _seed_configs(tiny_config)
    workdirs = [tmp_path / "a", tmp_path / "b"]
    configs[1].model.width = 32
    with pytest.raises(stacked.StackingError, match=r"differs from seed 0's in:\n  config.model.width"):
        stacked.pretrain_stacked(configs, workdirs)
    with pytest.raises(stacked.StackingError, match="every config needs its own seed; got seeds"):
        stacked.pretrain_stacked(_seed_configs(tiny_config, (3, 3)), workdirs)
    with pytest.raises(stacked.StackingError, match="one workdir per config; got 2 configs and 1"):
        stacked.pretrain_stacked(_seed_configs(tiny_config), workdirs[:1])
    with pytest.raises(stacked.StackingError, match="at least one config"):
        stacked.pretrain_stacked([], [])
    adversarial = _seed_configs(tiny_config)
    for config in adversarial:
        config.pretrain.objective = "adversarial"
    with pytest.raises(stacked.StackingError, match="cannot stack config.pretrain.objective='adversarial'"):
        stacked.pretrain_stacked(adversarial, workdirs)
    assert not any(w.exists() for w in workdirs)  # Refused before anything was written.


def test_a_study_stacks_the_seeds_of_each_configuration_where_asked(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.sweep.seeds = SEEDS
    configs = study.configurations(config)
    assert pretraining.stacks_seeds(config) is (jax.default_backend() != "cpu")  # "auto"
    config.sweep.stack_seeds = "always"
    planned = study.study_jobs(configs, config, tmp_path)
    by_id = {job.job_id: job for job in planned}
    together = "pretrain_stacked/text_transformer_w16_d1/adamw"
    assert [job.job_id for job in planned if job.job_id.startswith("pretrain_stacked")] == [together]
    for seed in SEEDS:  # AdamW's runs wait for the stacked job; the adversary's train alone.
        member = by_id[f"pretrain/text_transformer_w16_d1/adamw/seed{seed}"]
        assert member.depends_on == (together,) and member.in_worker and member.cost == 0
        alone = by_id[f"pretrain/text_transformer_w16_d1/adversarial/seed{seed}"]
        assert alone.depends_on == () and alone.in_worker
    assert pickle.loads(pickle.dumps(by_id[together].fn)).func is by_id[together].fn.func
    # The stacked job and its members, run: each member reports its own run, as one job would.
    adamw = [job for job in planned if job.job_id.split("/")[0].startswith("pretrain")
             and "/adamw/" in job.job_id + "/"]
    outcome = jobs.run_jobs(tmp_path, adamw)
    assert outcome[together].status == jobs.DONE
    for c in configs:
        if c.objective == "adamw":
            record = outcome[f"pretrain/text_transformer_w16_d1/adamw/seed{c.seed}"]
            assert record.status == jobs.DONE and record.result["checkpoint_steps"] == [6]
            assert json.loads((c.run_dir(tmp_path) / train.SUMMARY_FILE).read_text())["stacked_seeds"] == 2
    config.sweep.stack_seeds = "never"
    planned = study.study_jobs(configs, config, tmp_path)
    assert not any(job.job_id.startswith("pretrain_stacked") for job in planned)
    config.sweep.stack_seeds = "sometimes"
    with pytest.raises(config_utils.ConfigError, match="config.sweep.stack_seeds must be one of 'auto'"):
        study.study_jobs(configs, config, tmp_path)


def test_auto_and_always_do_not_stack_over_several_devices(tiny_config, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pretraining.jax, "device_count", lambda: 2)  # As on a multi-GPU host.
    tiny_config.sweep.stack_seeds = "auto"
    assert not pretraining.stacks_seeds(tiny_config)
    tiny_config.sweep.stack_seeds = "always"
    with pytest.raises(config_utils.ConfigError, match=r"stack_seeds='always' needs one process on one "
                       r"device; this JAX has 1 processes and 2 devices"):
        pretraining.stacks_seeds(tiny_config)


@pytest.mark.slow  # Two tiny studies, measured and scored (~3 min).
def test_a_stacked_study_gives_the_results_of_one_run_per_seed(pcfg_data_dir, tmp_path):
    config = _tiny_study_config(pcfg_data_dir)
    config.sweep.seeds, config.sweep.objectives = SEEDS, ("adamw",)
    config.report.primary_tests = ()
    tables = {}
    for stack in ("never", "always"):
        config.sweep.stack_seeds = stack
        study.run_study(config, tmp_path / stack)
        with open(tmp_path / stack / study.RESULTS_FILE, newline="") as stream:
            tables[stack] = list(csv.DictReader(stream))
    assert len(tables["never"]) == len(tables["always"]) == 2
    compared = 0
    for alone, together in zip(tables["never"], tables["always"], strict=True):
        assert list(alone) == list(together)
        for name, value in alone.items():
            if name.startswith("seconds_") or name == "density_file":
                continue
            try:
                expected = float(value)
            except ValueError:
                assert together[name] == value, name
                continue
            # Every number of the row, measurements and scores too, to rounding.
            assert float(together[name]) == pytest.approx(expected, rel=1e-4, abs=1e-5, nan_ok=True), name
            compared += 1
    assert compared > 100
