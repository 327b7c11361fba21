"""The vision setting's transfer stage: linear probe and full fine-tuning of a checkpoint.

  python -m experiments.finetune --workdir=RUN [--config=experiments/configs/digits.py]

For each checkpoint of `RUN`, each target task of `config.finetune.tasks` (default: every task of
`tasks.target_task_names`), each `k_shots` entry (examples per class; 0: the whole training split)
and each of `seeds` (which draw the k-shot sample and the data order), `finetune_checkpoint` scores:

  * the linear probe: a logistic-regression head fitted to convergence on the frozen encoder's
    features (`heads.fit_logistic`, full-batch L-BFGS with a small ridge penalty);
  * full fine-tuning: encoder and a zero-initialized linear head (as in BiT: the start is the same
    for every seed and checkpoint) trained with cross-entropy for a fixed budget of `steps` at
    `learning_rate`, with the pretraining code (`train.make_train_step`, `runs.make_optimizer`);

as test accuracy, mean and standard error over seeds. Each checkpoint is one job
(`RUN/jobs/finetune/step<N>.json`), so a rerun skips finished checkpoints.

The downstream loss of the measurement stage (`downstream_problem`) is the same classifier's:
the cross-entropy of a target task under a head fitted like the linear probe's.
"""

from __future__ import annotations

import dataclasses
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

from experiments.core import config_utils, multihost
from experiments.core.config_utils import Field, IntTuple
from experiments.measurement import stage
from experiments.training import evaluation, heads, models, objectives, runs, setting, train
from experiments.vision import objectives as vision_objectives
from experiments.vision import tasks

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


def downstream_model(run: runs.Run, num_classes: int) -> models.EncoderHead:
    """The run's encoder under a new linear classification head of `num_classes` outputs."""
    return models.build_model(run.config.model, num_classes, "linear")


def with_head(params: models.Params, head: heads.LinearHead) -> models.Params:
    """`params["encoder"]` under the linear `head`, laid out like `downstream_model`'s params."""
    head = {name: jnp.asarray(value) for name, value in head._asdict().items()}
    return {"encoder": params["encoder"], "head": {"Dense_0": head}}


def downstream_objective() -> objectives.Objective:
    """The loss of a classifier on a target task: softmax cross-entropy."""
    return vision_objectives.cross_entropy(ml_collections.ConfigDict())


def linear_probe(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    task: tasks.Task,
    settings: dict[str, Any],
) -> float:
    """Test accuracy of a logistic-regression head on the frozen encoder's features."""
    train_features, test_features = (
        evaluation.encode(run.model, params, model_state, split.images)
        for split in (task.train, task.test)
    )
    head = heads.fit_logistic(
        train_features,
        task.train.labels,
        task.num_classes,
        l2=settings["probe_l2"],
        steps=settings["probe_steps"],
    )
    return head.accuracy(test_features, task.test.labels)


def _finetune_run(run: runs.Run, task: tasks.Task, settings: dict[str, Any]) -> runs.Run:
    """A `runs.Run` that trains the run's encoder under a new linear head on `task`."""
    optimizer, schedule = runs.make_optimizer(settings)
    return dataclasses.replace(
        run,
        settings=settings,
        task=task,
        objective=downstream_objective(),
        model=downstream_model(run, task.num_classes),
        optimizer=optimizer,
        schedule=schedule,
        extras=None,
    )


def fine_tune(
    run: runs.Run,
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
    train_step = evaluation.shared_function(
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
    predictions = evaluation.predict(tuned.model, params, model_state, task.test.images)
    return float(np.mean(np.asarray(predictions) == task.test.labels))


def _mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    if len(values) < 2:
        return float(values[0]), None
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


def score(
    run: runs.Run,
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


def score_checkpoint(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None,
) -> dict[str, Any]:
    """`score`, as the setting's transfer stage (`output_dir` is unused)."""
    del output_dir
    return score(run, params, model_state, settings)


STAGE = setting.CheckpointStage("finetune", read_settings, score_checkpoint, SCORES)


def downstream_problem(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
) -> setting.DownstreamProblem:
    """The measurement stage's downstream loss: a target task's cross-entropy under a fitted head.

    The head is a logistic regression fitted to the frozen features of the task's first
    `config.hessian.num_batches x batch_size` training examples (`head_l2`, `head_steps`); the loss
    is differentiated over the encoder and the head, on those examples.
    """
    name = settings["downstream_task"] or tasks.target_task_names(run.config.data)[0]
    task = multihost.primary_first(
        lambda: tasks.target_task(run.config.data, name), "target data prepared"
    )
    objective = downstream_objective()
    batches = stage.fixed_batches(objective, task.train, settings)
    features = evaluation.encode(run.model, params, model_state, stage.examples(batches["inputs"]))
    head = heads.fit_logistic(
        features,
        stage.examples(batches["labels"]),
        task.num_classes,
        l2=settings["head_l2"],
        steps=settings["head_steps"],
    )
    model = downstream_model(run, task.num_classes)
    loss_fn = evaluation.eval_loss(model, objective, "downstream", model_state)
    return setting.DownstreamProblem(loss_fn, with_head(params, head), batches)


def other_data(run: runs.Run, settings: dict[str, Any]) -> setting.OtherData:
    """Critic 1's other distribution: the images of the downstream target task.

    Their labels are the target task's, not the pretraining head's, so only the label-free Fisher
    trace (the model's own samples) is measured on them.
    """
    name = settings["downstream_task"] or tasks.target_task_names(run.config.data)[0]
    task = multihost.primary_first(
        lambda: tasks.target_task(run.config.data, name), "target data prepared"
    )
    return setting.OtherData(
        f"the images of target task {name!r}", task.train, downstream_objective(), False
    )

