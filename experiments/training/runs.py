"""A pretraining configuration rebuilt from its config (`Run`), and access to its checkpoints.

`build_run(config)` validates a config and builds everything a run needs through its setting
(`config.setting`, see `experiments.training.setting`): the source task, the objective, the model
with the objective's head, the optimizer and schedule, and any per-step extra training term. Later
stages rebuild a finished run from the config its workdir saved (`load_run`, `open_run`) and
restore its checkpoints (`restore_params`, `restore_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from experiments.core import checkpoints, config_utils, multihost
from experiments.core.config_utils import Field, IntTuple
from experiments.training import models, objectives, setting

ROOT_SCHEMA = {"seed": Field(int)}
PRETRAIN_SCHEMA = {
    "objective": Field(str),
    "optimizer": Field(str),
    "learning_rate": Field(float),
    "momentum": Field(float, 0.9),
    "weight_decay": Field(float, 0.0),
    "schedule": Field(str, "warmup_cosine"),
    "warmup_steps": Field(int, 0),
    "batch_size": Field(int),
    "steps": Field(int),
    "checkpoint_steps": Field(IntTuple, ()),
    "log_every": Field(int, 100),
}
SCHEDULES = ("constant", "warmup_cosine", "warmup_constant", "warmup_linear")
# Sections that determine the trained parameters; other top-level sections belong to later stages.
PRETRAINING_SECTIONS = ("seed", "setting", "data", "model", "pretrain")
# Fields of those sections that may change between a run and its resumption.
RESUMABLE_CHANGES = ("data.data_dir", "pretrain.log_every")
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """A pretraining configuration, rebuilt from its config.

    Attributes:
      config: the full config.
      settings: the `config.pretrain` fields, type-checked and with defaults filled in.
      setting: the study setting of `config.setting`.
      task: the source (pretraining) task.
      objective: the pretraining objective.
      model: the model, with the objective's head.
      optimizer: the Optax optimizer, schedule included.
      schedule: the learning rate as a function of the step.
      extras: the setting's extra training term of this objective (the adversary), or None.
    """

    config: ml_collections.ConfigDict
    settings: dict[str, Any]
    setting: setting.Setting
    task: setting.SourceTask
    objective: objectives.Objective
    model: models.EncoderHead
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    extras: setting.StepExtras | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def saved_steps(self) -> list[int]:
        """The steps at which checkpoints are saved: the configured ones and the last."""
        return sorted(set(self.settings["checkpoint_steps"]) | {self.settings["steps"]})

    def init(self) -> tuple[models.Params, models.ModelState]:
        """The initial `(params, model_state)`, a function of `config.seed`."""
        return models.init_model(self.model, self.seed, self.task.input_shape)

    def eval_loss(self, model_state: models.ModelState) -> objectives.LossFn:
        """The pure evaluation-mode pretraining loss `loss_fn(params, batch)`."""
        return objectives.make_eval_loss(self.model, self.objective, model_state)


def _check_settings(settings: dict[str, Any]) -> None:
    def fail(message: str) -> None:
        raise config_utils.ConfigError(message)

    for name in ("steps", "batch_size", "log_every"):
        if settings[name] < 1:
            fail(f"config.pretrain.{name} must be >= 1; got {settings[name]}.")
    if settings["learning_rate"] <= 0:
        fail(f"config.pretrain.learning_rate must be > 0; got {settings['learning_rate']}.")
    if not 0 <= settings["warmup_steps"] < settings["steps"]:
        fail(
            f"config.pretrain.warmup_steps must be in [0, config.pretrain.steps="
            f"{settings['steps']}); got {settings['warmup_steps']}."
        )
    outside = [s for s in settings["checkpoint_steps"] if not 0 <= s <= settings["steps"]]
    if outside:
        fail(
            f"config.pretrain.checkpoint_steps must lie in [0, config.pretrain.steps="
            f"{settings['steps']}]; got {outside}."
        )


def _weight_decay_mask(params: models.Params) -> Any:
    # Biases and normalization scales are not decayed, as usual.
    return jax.tree_util.tree_map(lambda leaf: leaf.ndim > 1, params)


def make_optimizer(settings: dict[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and learning-rate schedule of the `config.pretrain` settings.

    Args:
      settings: `config.pretrain` read with `PRETRAIN_SCHEMA`: `optimizer` (`"sgd"` with
        `momentum`, or `"adamw"`), `learning_rate`, `weight_decay` (decoupled for AdamW, added to
        the gradient for SGD; never on biases or normalization scales), `schedule` (`"constant"`;
        `"warmup_cosine"`: linear warmup over `warmup_steps`, then cosine decay to 0 at `steps`;
        `"warmup_constant"`: the same warmup, then constant, to train on past convergence; or
        `"warmup_linear"`: the same warmup, then linear decay to 0 at `steps`, Liu et al.'s).

    Returns:
      `(optimizer, schedule)`.
    """
    rate = settings["learning_rate"]
    config_utils.choose(settings["schedule"], dict.fromkeys(SCHEDULES), "config.pretrain.schedule")
    if settings["schedule"] == "constant":
        schedule = optax.constant_schedule(rate)
    elif settings["schedule"] == "warmup_constant":
        # `linear_schedule` over 0 steps would stay at its initial value, 0.
        warmup = max(settings["warmup_steps"], 1)
        schedule = optax.linear_schedule(rate / warmup, rate, warmup - 1)
    elif settings["schedule"] == "warmup_linear":
        warmup = settings["warmup_steps"]
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, rate, warmup),
                optax.linear_schedule(rate, 0.0, settings["steps"] - warmup),
            ],
            [warmup],
        )
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, rate, settings["warmup_steps"], settings["steps"]
        )
    decay = settings["weight_decay"]
    builders: dict[str, Callable[[], optax.GradientTransformation]] = {
        "sgd": lambda: optax.chain(
            optax.add_decayed_weights(decay, _weight_decay_mask),
            optax.sgd(schedule, momentum=settings["momentum"] or None),
        ),
        "adamw": lambda: optax.adamw(schedule, weight_decay=decay, mask=_weight_decay_mask),
    }
    return config_utils.choose(
        settings["optimizer"], builders, "config.pretrain.optimizer"
    )(), schedule


def build_run(config: ml_collections.ConfigDict) -> Run:
    """Validates `config` and builds its task, objective, model and optimizer.

    Args:
      config: the full config (`seed`, `setting`, `data`, `model`, `pretrain`; other sections are
        ignored).

    Returns:
      The `Run`.

    Raises:
      ConfigError: a field read here is missing or has the wrong type or value (the message
        names it), or a name is unknown (the message lists the valid ones: settings, objectives,
        datasets).
      FileNotFoundError: the setting's data is not prepared in the data dir (the message says how).
    """
    config_utils.read_fields(config, ROOT_SCHEMA, "config")
    if config.seed < 0:
        raise config_utils.ConfigError(f"config.seed must be >= 0; got {config.seed}.")
    study_setting = setting.of_config(config)
    for section in ("data", "model", "pretrain"):
        if section not in config:
            raise config_utils.ConfigError(f"config.{section} is missing.")
    settings = config_utils.read_fields(config.pretrain, PRETRAIN_SCHEMA, "config.pretrain")
    _check_settings(settings)
    objective = objectives.get_objective(config.pretrain, study_setting.objectives)
    optimizer, schedule = make_optimizer(settings)
    # Checks the model config before loading any data (the vocabulary size comes with the data).
    models.build_model(config.model, 1, input_vocab_size=1)
    # The first load prepares an embedded dataset into the data dir: one process at a time.
    task = multihost.primary_first(
        lambda: study_setting.source_task(config.data), "source data prepared"
    )
    if settings["batch_size"] > task.train.num_examples:
        raise config_utils.ConfigError(
            f"config.pretrain.batch_size={settings['batch_size']} exceeds the "
            f"{task.train.num_examples} training examples of {task.name}."
        )
    model = objectives.build_model_for(
        objective,
        config.model,
        task.num_classes,
        task.input_shape,
        input_vocab_size=task.input_vocab_size,
    )
    extras = study_setting.step_extras(objective, config.pretrain, model, task)
    return Run(config, settings, study_setting, task, objective, model, optimizer, schedule, extras)


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config saved in `workdir` by `pretrain` (sequences come back as lists)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"No pretraining run in {str(workdir)!r}: {path} does not exist.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | pathlib.Path) -> Run:
    """The `Run` of the pretraining run in `workdir`, rebuilt from its saved config."""
    return build_run(load_config(workdir))


def restore_params(
    workdir: str | pathlib.Path, step: int | None = None, run: Run | None = None
) -> tuple[models.Params, models.ModelState]:
    """The parameters and model state saved at `step` in `workdir`.

    Args:
      workdir: the workdir of a `pretrain` run.
      step: a step of `checkpoints.steps(workdir)`; `None`: the last one.
      run: `load_run(workdir)`, if already built (saves loading the data again).

    Returns:
      `(params, model_state)`, exactly as saved.

    Raises:
      FileNotFoundError: the workdir has no checkpoint, or none at `step` (the message lists the
        available steps).
    """
    workdir = pathlib.Path(workdir)
    available = checkpoints.steps(workdir)
    step = available[-1] if step is None and available else step
    if step not in available:
        raise FileNotFoundError(
            f"No checkpoint at step {step} in {str(workdir)!r}; available steps: {available}."
        )
    run = run or load_run(workdir)
    params, model_state = jax.eval_shape(run.init)
    with checkpoints.manager(workdir, read_only=True) as manager:
        restored = checkpoints.restore(
            manager, step, {"params": params, "model_state": model_state}
        )
    return restored["params"], restored["model_state"]


def open_run(
    workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None
) -> tuple[Run, list[int]]:
    """The pretraining run in `workdir` and its checkpoint steps, for a stage that measures them.

    Args:
      workdir: a `train.pretrain` workdir.
      config: the config the caller believes the run has; its pretraining sections must equal the
        saved ones. `None`: the saved config.

    Returns:
      `(run, steps)`: the run rebuilt from its saved config, and its checkpoint steps ascending.

    Raises:
      FileNotFoundError: `workdir` holds no pretraining run.
      NoCheckpointsError: the run has no checkpoint yet.
      ConfigError: `config` differs from the run's config in a pretraining field (all listed).
    """
    saved = load_config(workdir)
    if config is not None:
        sections = lambda plain: {k: plain.get(k) for k in PRETRAINING_SECTIONS}
        changed = config_utils.differences(
            sections(config_utils.to_plain(saved)), sections(config_utils.to_plain(config))
        )
        if changed:
            raise config_utils.ConfigError(
                f"{workdir} holds a run of a different config; it differs in:\n  "
                + "\n  ".join(changed)
            )
    steps = checkpoints.steps(workdir)
    if not steps:
        raise checkpoints.NoCheckpointsError(
            f"{workdir} holds no checkpoint: pretrain it first (`python -m experiments.pretrain "
            f"--workdir={workdir} ...`)."
        )
    return build_run(saved), steps


def restore_checkpoint(
    workdir: str | pathlib.Path, step: int, run: Run
) -> tuple[models.Params, models.ModelState]:
    """`restore_params`, with a clear error when the checkpoint is of another model.

    Raises:
      CheckpointMismatchError: the stored parameter shapes differ from those of `run.model`.
      FileNotFoundError: no checkpoint at `step`.
    """
    try:
        return restore_params(workdir, step, run)
    except (ValueError, TypeError, KeyError) as error:
        expected = jax.tree_util.tree_map(lambda leaf: leaf.shape, jax.eval_shape(run.init)[0])
        raise checkpoints.CheckpointMismatchError(
            f"The checkpoint at step {step} in {workdir} does not fit the model of its config "
            f"(config.model = {config_utils.to_plain(run.config.model)}; expected parameter "
            f"shapes {expected}): {type(error).__name__}: {str(error)[:500]}"
        ) from error
