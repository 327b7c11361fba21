"""Transfer scores of every checkpoint of a pretraining run: linear probe and full fine-tuning.

  python -m experiments.finetune --workdir=RUN [--config=experiments/configs/digits.py]

For each checkpoint of `RUN`, each target task of `config.finetune.tasks` (default: every task of
`tasks.target_task_names`), each `k_shots` entry (examples per class; 0: the whole training split)
and each of `seeds` (which draw the k-shot sample and the data order), `finetune_checkpoint` scores:

  * the linear probe: a logistic-regression head fitted to convergence on the frozen encoder's
    features (`transfer.fit_linear_head`, full-batch L-BFGS with a small ridge penalty);
  * full fine-tuning: encoder and a zero-initialized linear head (as in BiT: the start is the same
    for every seed and checkpoint) trained with cross-entropy for a fixed budget of `steps` at
    `learning_rate`, with the pretraining code (`train.make_train_step`, `train.make_optimizer`);

as test accuracy, mean and standard error over seeds. Each checkpoint is one job
(`RUN/jobs/finetune/step<N>.json`), so a rerun skips finished checkpoints.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import config_utils, jobs, models, multihost, objectives, train, transfer
from experiments.config_utils import Field, IntTuple
from experiments.data import tasks

FINETUNE_SCHEMA = {
    "tasks": Field((tuple, list), ()),  # (): every task of `target_task_names`.
    "k_shots": Field(IntTuple, (0,)),  # Examples per class; 0: the whole training split.
    "seeds": Field(IntTuple, (0,)),
    "probe_l2": Field(float, 1e-3),
    "probe_steps": Field(int, 100),
    "optimizer": Field(str, "adamw"),
    "learning_rate": Field(float),
    "momentum": Field(float, 0.9),
    "weight_decay": Field(float, 0.0),
    "schedule": Field(str, "constant"),
    "warmup_steps": Field(int, 0),
    "steps": Field(int),
    "batch_size": Field(int),
}
SCORES = ("linear_probe_acc", "finetune_acc")


def read_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.finetune` fields, type-checked, with defaults and the tasks filled in.

    Raises:
      ConfigError: a missing or invalid field (named), or a task that `config.data` does not
        define (the message lists the valid ones).
    """
    if "finetune" not in config:
        raise config_utils.ConfigError("config.finetune is missing.")
    settings = config_utils.read_fields(config.finetune, FINETUNE_SCHEMA, "config.finetune")
    valid = tasks.target_task_names(config.data)
    settings["tasks"] = tuple(settings["tasks"]) or valid
    unknown = [name for name in settings["tasks"] if name not in valid]
    if unknown or not settings["tasks"]:
        raise config_utils.ConfigError(
            f"config.finetune.tasks names unknown target tasks {unknown}; config.data defines "
            f"{list(valid)}."
        )
    if not settings["k_shots"] or not settings["seeds"] or min(settings["k_shots"]) < 0:
        raise config_utils.ConfigError(
            "config.finetune.k_shots (each >= 0) and config.finetune.seeds must be non-empty; got "
            f"{settings['k_shots']} and {settings['seeds']}."
        )
    for name in ("steps", "batch_size", "probe_steps"):
        if settings[name] < 1:
            raise config_utils.ConfigError(f"config.finetune.{name} must be >= 1.")
    return settings


def variant(task: str, k_shot: int) -> str:
    """The column prefix of a (task, k-shot) variant, e.g. `held_out_classes/10shot`."""
    return f"{task}/{k_shot}shot" if k_shot else f"{task}/all"


@functools.lru_cache(maxsize=64)
def _target_task(data_json: str, name: str, k_shot: int, seed: int) -> tasks.Task:
    # Cached: every checkpoint of every run reads the same target tasks.
    data = ml_collections.ConfigDict(json.loads(data_json))
    return multihost.primary_first(
        lambda: tasks.target_task(data, name, k_shot=k_shot or None, seed=seed), "target data prepared"
    )


def linear_probe(
    run: train.Run,
    params: models.Params,
    model_state: models.ModelState,
    task: tasks.Task,
    settings: dict[str, Any],
) -> float:
    """Test accuracy of a logistic-regression head on the frozen encoder's features."""
    train_features, test_features = (
        transfer.encode(run.model, params, model_state, split.images)
        for split in (task.train, task.test)
    )
    head = transfer.fit_linear_head(
        train_features,
        task.train.labels,
        task.num_classes,
        l2=settings["probe_l2"],
        steps=settings["probe_steps"],
    )
    return head.accuracy(test_features, task.test.labels)


def _finetune_run(run: train.Run, task: tasks.Task, settings: dict[str, Any]) -> train.Run:
    """A `train.Run` that trains the run's encoder under a new linear head on `task`."""
    optimizer, schedule = train.make_optimizer(settings)
    return train.Run(
        run.config,
        settings,
        task,
        transfer.downstream_objective(),
        transfer.downstream_model(run, task.num_classes),
        optimizer,
        schedule,
    )


def fine_tune(
    run: train.Run,
    params: models.Params,
    model_state: models.ModelState,
    task: tasks.Task,
    seed: int,
    settings: dict[str, Any],
) -> float:
    """Test accuracy after fine-tuning every parameter for `settings["steps"]` steps.

    The head starts at zero, so the result depends on `seed` only through the data order.
    """
    tuned = _finetune_run(run, task, settings)
    key = (tuned.model, json.dumps({k: v for k, v in settings.items() if k != "tasks"}))
    # One compiled step per model and settings, shared by every checkpoint, task and seed.
    train_step = transfer.shared_function(
        ("finetune_step", *key), lambda: train.make_train_step(tuned)
    )
    shapes = jax.eval_shape(tuned.init)[0]["head"]
    zeros = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    params = {"encoder": params["encoder"], "head": zeros}
    opt_state = tuned.optimizer.init(params)
    batch_size = min(settings["batch_size"], task.train.num_examples)
    for step in range(settings["steps"]):
        batch = objectives.training_batch(tuned.objective, task.train, batch_size, seed, step)
        params, opt_state, model_state, _ = train_step(params, opt_state, model_state, batch)
    predictions = transfer.predict(tuned.model, params, model_state, task.test.images)
    return float(np.mean(np.asarray(predictions) == task.test.labels))


def _mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    if len(values) < 2:
        return float(values[0]), None
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


def score(
    run: train.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Every transfer score of one set of parameters (see the module docstring).

    Returns:
      A job result: the first variant's (first task, first k-shot) `linear_probe_acc` and
      `finetune_acc` (means over seeds) with `_stderr` (standard error over seeds, `None` for one
      seed); the same scores of every other variant as `<variant>/linear_probe_acc` etc. (see
      `variant`); `<variant>/per_seed` for every variant; and `seconds_finetune`.
    """
    start = time.perf_counter()
    data_json = run.config.data.to_json(sort_keys=True)
    result: dict[str, Any] = {}
    variants = [(name, k_shot) for name in settings["tasks"] for k_shot in settings["k_shots"]]
    for index, (name, k_shot) in enumerate(variants):
        per_seed: dict[str, list[float]] = {score_name: [] for score_name in SCORES}
        for seed in settings["seeds"]:
            task = _target_task(data_json, name, k_shot, seed)
            per_seed["linear_probe_acc"].append(
                linear_probe(run, params, model_state, task, settings)
            )
            per_seed["finetune_acc"].append(
                fine_tune(run, params, model_state, task, seed, settings)
            )
        prefix = variant(name, k_shot)
        result[f"{prefix}/per_seed"] = per_seed
        for score_name, values in per_seed.items():
            # The first variant is the headline score, under the plain names.
            column = f"{prefix}/{score_name}" if index else score_name
            result[column], result[f"{column}_stderr"] = _mean_and_stderr(values)
    result["seconds_finetune"] = time.perf_counter() - start
    return result


def finetune_checkpoint(
    workdir: str | pathlib.Path, step: int, run: train.Run, settings: dict[str, Any]
) -> dict[str, Any]:
    """`score` of the checkpoint at `step` of the pretraining run in `workdir`."""
    params, model_state = transfer.restore_checkpoint(workdir, step, run)
    return score(run, params, model_state, settings)


def job_id(step: int, *prefix: str) -> str:
    """The id of the fine-tuning job of checkpoint `step` (under `prefix`)."""
    return jobs.make_job_id("finetune", *prefix, step=step)


def finetune_run(
    workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None
) -> dict[str, jobs.JobResult]:
    """Scores every checkpoint of the pretraining run in `workdir`, resumably.

    Args:
      workdir: a `train.pretrain` workdir; results go to `jobs/finetune/step<N>.json` in it.
      config: the config (its `finetune` section sets the knobs); `None`: the run's saved config.

    Returns:
      Job id -> `jobs.JobResult`, one per checkpoint.

    Raises:
      NoCheckpointsError, ConfigError, FileNotFoundError: see `transfer.open_run` and
        `read_settings`.
    """
    run, steps = transfer.open_run(workdir, config)
    settings = read_settings(config or run.config)
    return jobs.run_jobs(
        workdir,
        [
            jobs.Job(
                job_id(step), lambda step=step: finetune_checkpoint(workdir, step, run, settings)
            )
            for step in steps
        ],
        record_failures=True,
    )


if __name__ == "__main__":
    transfer.run_binary(finetune_run)
