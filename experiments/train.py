"""Resumable pretraining of one configuration, and access to its checkpoints.

`pretrain(config, workdir)` is the entry point (the `experiments.pretrain` binary and the study
call it). It writes into `workdir`:
  * `config.json`: the full config;
  * `checkpoints/<step>/`: Orbax checkpoints (`params`, `opt_state`, and `model_state` for
    BatchNorm models) at every step of `config.pretrain.checkpoint_steps` and at the last step,
    all kept: later stages measure each of them;
  * `metrics.jsonl`: one JSON object per line: the training loss (averaged since the last line),
    learning rate and speed every `log_every` steps, and the source test loss at each checkpoint
    (for the language setting also `loss_gap` and `loss_gap_stderr`, the exact gap to the
    Bayes-optimal masked-LM loss, see `experiments.language`);
  * `summary.json`: written when the run is complete (parameter counts, wall time).

Every random choice is a function of `(config.seed, step)`: the initialization of the seed, the
data order and augmentations (or masked positions) of each step (`experiments.data.pipeline`).
The adversarial language objective also checkpoints its probe (`adversary_probe`). A run killed
at any point and restarted with the same workdir resumes from its last checkpoint and ends with
exactly the parameters of an uninterrupted run. A workdir holding a run of a different config is
refused unless `overwrite=True`.

Later stages use `load_run(workdir)` (the model, objective and data rebuilt from the saved
config), `checkpoint_steps(workdir)` and `restore_params(workdir, step)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as logging_lib
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from experiments import config_utils, language, models, multihost, objectives
from experiments.config_utils import Field, IntTuple
from experiments.data import tasks

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
SCHEDULES = ("constant", "warmup_cosine", "warmup_constant")
# Sections that determine the trained parameters; other top-level sections belong to later stages.
PRETRAINING_SECTIONS = ("seed", "data", "model", "pretrain")
# Fields of those sections that may change between a run and its resumption.
RESUMABLE_CHANGES = ("data.data_dir", "pretrain.log_every")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"


class _OrbaxInfoFilter(logging_lib.Filter):
    """Drops Orbax's INFO records: it logs every file operation, which buries the progress."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        return record.levelno >= logging_lib.WARNING or "/orbax/" not in record.pathname


_ORBAX_INFO_FILTER = _OrbaxInfoFilter()


class WorkdirConfigMismatchError(ValueError):
    """The workdir holds a pretraining run of a different config."""


class PretrainResult(NamedTuple):
    """The outcome of `pretrain`.

    Attributes:
      params: the final parameters.
      model_state: the final non-trainable collections (`{}` without BatchNorm).
      num_params: number of parameters, head included.
      checkpoint_steps: the steps saved in the workdir, ascending.
    """

    params: models.Params
    model_state: models.ModelState
    num_params: int
    checkpoint_steps: list[int]


@dataclasses.dataclass(frozen=True)
class Run:
    """A pretraining configuration, rebuilt from its config.

    Attributes:
      config: the full config.
      settings: the `config.pretrain` fields, type-checked and with defaults filled in.
      task: the source (pretraining) task.
      objective: the pretraining objective.
      model: the model, with the objective's head.
      optimizer: the Optax optimizer, schedule included.
      schedule: the learning rate as a function of the step.
      adversary: the downstream term of the `"adversarial"` language objective, else None.
    """

    config: ml_collections.ConfigDict
    settings: dict[str, Any]
    task: tasks.Task | language.LanguageTask
    objective: objectives.Objective
    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    adversary: language.Adversary | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def saved_steps(self) -> list[int]:
        """The steps at which checkpoints are saved: the configured ones and the last."""
        return sorted(set(self.settings["checkpoint_steps"]) | {self.settings["steps"]})

    def init(self) -> tuple[models.Params, models.ModelState]:
        """The initial `(params, model_state)`, a function of `config.seed`."""
        return models.init_model(self.model, self.seed, self.task.image_shape)

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
        or `"warmup_constant"`: the same warmup, then constant, to train on past convergence).

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
      config: the full config (`seed`, `data`, `model`, `pretrain`; other sections are ignored).

    Returns:
      The `Run`.

    Raises:
      ConfigError: a field read here is missing or has the wrong type or value (the message
        names it), or a name is unknown (the message lists the valid ones).
      UnknownDatasetError, DatasetNotPreparedError: see `experiments.data.tfds_data`.
    """
    config_utils.read_fields(config, ROOT_SCHEMA, "config")
    if config.seed < 0:
        raise config_utils.ConfigError(f"config.seed must be >= 0; got {config.seed}.")
    for section in ("data", "model", "pretrain"):
        if section not in config:
            raise config_utils.ConfigError(f"config.{section} is missing.")
    settings = config_utils.read_fields(config.pretrain, PRETRAIN_SCHEMA, "config.pretrain")
    _check_settings(settings)
    data_name = config_utils.read_fields(config.data, {"name": Field(str)}, "config.data")["name"]
    is_language = data_name == language.DATASET
    registry = language.OBJECTIVES if is_language else objectives.OBJECTIVES
    objective = objectives.get_objective(config.pretrain, registry)
    optimizer, schedule = make_optimizer(settings)
    # Checks the model config before loading any data (the vocabulary size comes with the data).
    models.build_model(config.model, 1, input_vocab_size=1)
    source = language.source_task if is_language else tasks.source_task
    # The first load prepares an embedded dataset into the data dir: one process at a time.
    task = multihost.primary_first(lambda: source(config.data), "source data prepared")
    if settings["batch_size"] > task.train.num_examples:
        raise config_utils.ConfigError(
            f"config.pretrain.batch_size={settings['batch_size']} exceeds the "
            f"{task.train.num_examples} training examples of {task.name}."
        )
    model = objectives.build_model_for(
        objective,
        config.model,
        task.num_classes,
        task.image_shape,
        input_vocab_size=task.num_classes if is_language else 0,
    )
    adversary = (
        language.make_adversary(config.pretrain, model, task)
        if objective.name == "adversarial"
        else None
    )
    return Run(config, settings, task, objective, model, optimizer, schedule, adversary)


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config saved in `workdir` by `pretrain` (sequences come back as lists)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"No pretraining run in {str(workdir)!r}: {path} does not exist.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | pathlib.Path) -> Run:
    """The `Run` of the pretraining run in `workdir`, rebuilt from its saved config."""
    return build_run(load_config(workdir))


def _manager(workdir: pathlib.Path, read_only: bool = False) -> ocp.CheckpointManager:
    # Every stage that opens checkpoints (pretraining, and the stages restoring them): keep Orbax's
    # per-file INFO lines out of the progress. Adding the filter again is a no-op.
    logging.get_absl_handler().addFilter(_ORBAX_INFO_FILTER)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # Keep every checkpoint: each one is measured later.
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # Leftovers of a save that was killed.
        # Small states save in milliseconds; saving synchronously means a finished checkpoint
        # directory is complete, which is what a killed run resumes from.
        enable_async_checkpointing=False,
    )
    # Orbax refuses relative paths; a user's `--workdir=runs/x` is relative to where they stand.
    return ocp.CheckpointManager((workdir / CHECKPOINT_DIR).resolve(), options=options)


def checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
    """The steps of the complete checkpoints in `workdir`, ascending."""
    if not (pathlib.Path(workdir) / CHECKPOINT_DIR).exists():
        return []
    with _manager(pathlib.Path(workdir), read_only=True) as manager:
        return sorted(manager.all_steps())


def _abstract(tree: Any) -> Any:
    if multihost.data_parallel():
        sharding = multihost.replicated_sharding()
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree
    )


def _restore(manager: ocp.CheckpointManager, step: int, targets: dict[str, Any]) -> dict[str, Any]:
    """Restores the items in `targets` (abstract trees); empty items are not stored."""
    stored = {name: tree for name, tree in targets.items() if jax.tree_util.tree_leaves(tree)}
    args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in stored.items()}
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] if name in stored else tree for name, tree in targets.items()}


def _save(manager: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> None:
    # Orbax refuses empty items, e.g. the model state of a model without BatchNorm.
    args = {
        name: ocp.args.StandardSave(tree)
        for name, tree in items.items()
        if jax.tree_util.tree_leaves(tree)
    }
    manager.save(step, args=ocp.args.Composite(**args))


def restore_params(
    workdir: str | pathlib.Path, step: int | None = None, run: Run | None = None
) -> tuple[models.Params, models.ModelState]:
    """The parameters and model state saved at `step` in `workdir`.

    Args:
      workdir: the workdir of a `pretrain` run.
      step: a step of `checkpoint_steps(workdir)`; `None`: the last one.
      run: `load_run(workdir)`, if already built (saves loading the data again).

    Returns:
      `(params, model_state)`, exactly as saved.

    Raises:
      FileNotFoundError: the workdir has no checkpoint, or none at `step` (the message lists the
        available steps).
    """
    workdir = pathlib.Path(workdir)
    available = checkpoint_steps(workdir)
    step = available[-1] if step is None and available else step
    if step not in available:
        raise FileNotFoundError(
            f"No checkpoint at step {step} in {str(workdir)!r}; available steps: {available}."
        )
    run = run or load_run(workdir)
    params, model_state = jax.eval_shape(run.init)
    with _manager(workdir, read_only=True) as manager:
        restored = _restore(manager, step, {"params": params, "model_state": model_state})
    return restored["params"], restored["model_state"]


def _check_workdir(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, overwrite: bool
) -> None:
    config_path = workdir / CONFIG_FILE
    if overwrite:
        if multihost.is_primary():
            shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
            for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE):
                (workdir / name).unlink(missing_ok=True)
        return
    if not config_path.exists():
        if (workdir / CHECKPOINT_DIR).exists():
            raise WorkdirConfigMismatchError(
                f"{workdir} holds checkpoints but no {CONFIG_FILE}; pass overwrite=True "
                "(--overwrite) to discard them, or use another workdir."
            )
        return

    def pretraining_fields(plain: dict[str, Any]) -> dict[str, Any]:
        fields = {key: plain[key] for key in PRETRAINING_SECTIONS if key in plain}
        for path in RESUMABLE_CHANGES:
            section, name = path.split(".")
            fields.get(section, {}).pop(name, None)
        return fields

    saved = pretraining_fields(json.loads(config_path.read_text()))
    changed = config_utils.differences(saved, pretraining_fields(config_utils.to_plain(config)))
    if changed:
        raise WorkdirConfigMismatchError(
            f"{workdir} holds a pretraining run of a different config; it differs in:\n  "
            + "\n  ".join(changed)
            + "\nPass overwrite=True (--overwrite) to discard that run, or use another workdir."
        )


class _MetricsLog:
    """Appends JSON lines to the metrics file, dropping lines that a killed run wrote past the
    checkpoint it is resumed from, so that the file reads like one uninterrupted run. Only the
    primary process writes; on the others it does nothing."""

    def __init__(self, path: pathlib.Path, resume_step: int):
        self._path = path if multihost.is_primary() else None
        if self._path is None:
            return
        kept = []
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self._path is None:
            return
        with self._path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def make_train_step(run: Run) -> Callable[..., Any]:
    """The jitted training update of `run`.

    Args:
      run: the configuration.

    Returns:
      `train_step(params, opt_state, model_state, batch) -> (params, opt_state, model_state,
      loss)`, where `batch` is a prepared batch (`objectives.training_batch`; with an adversary,
      also its current probe and validation batch under `"adversary_probe"` and
      `"adversary_batch"`) and `loss` is the training-mode loss before the update, the
      adversary's penalty included. On several devices (`multihost.data_parallel`) the outputs
      are replicated on every device, whatever the placement of the batch.
    """
    # Data parallel, the gradients of a split batch are all-reduced; pinning the outputs keeps
    # the state replicated from step to step (one compilation) and readable on every process.
    placement = {"out_shardings": multihost.replicated_sharding()} if multihost.data_parallel() else {}

    @functools.partial(jax.jit, **placement)
    def train_step(params, opt_state, model_state, batch):
        def loss_of(params):
            outputs, new_state = models.apply_model(
                run.model, params, model_state, batch["inputs"], train=True
            )
            loss = run.objective.loss(outputs, batch)
            if run.adversary is not None:
                loss = loss + run.adversary.penalty(
                    params, batch["adversary_probe"], batch["adversary_batch"]
                )
            return loss, new_state

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = run.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, loss

    return train_step


def _training_batches(run: Run, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """The prepared batches of steps `start .. stop - 1`, each made while the step before runs.

    A batch is a function of `(seed, step)` (`objectives.training_batch`), so preparing it on a
    second thread changes nothing but the time: on a CPU, XLA runs the small models' steps on one
    core and the batch (about 15% of a step of the language setting) is made on the other.
    """

    def make(step: int) -> dict[str, Any]:
        return objectives.training_batch(
            run.objective, run.task.train, run.settings["batch_size"], run.seed, step
        )

    with futures.ThreadPoolExecutor(1, thread_name_prefix="batches") as worker:
        pending = worker.submit(make, start) if start < stop else None
        for step in range(start, stop):
            batch = pending.result()
            pending = worker.submit(make, step + 1) if step + 1 < stop else None
            yield batch


def _test_loss(run: Run) -> Callable[[models.Params, models.ModelState], float]:
    """The mean evaluation-mode loss over fixed batches of the source test split."""
    batch_size = min(run.settings["batch_size"], run.task.test.num_examples)
    batches = [
        objectives.training_batch(run.objective, run.task.test, batch_size, run.seed, step)
        for step in range(run.task.test.num_examples // batch_size)
    ]
    # A Python loop over batches: XLA:CPU runs convolutions inside `lax.map` many times slower.
    loss = jax.jit(lambda params, model_state, batch: run.eval_loss(model_state)(params, batch))

    def mean_loss(params: models.Params, model_state: models.ModelState) -> float:
        return float(np.mean([loss(params, model_state, batch) for batch in batches]))

    return mean_loss


def _checkpoint_metrics(
    run: Run,
) -> Callable[[models.Params, models.ModelState], dict[str, float]]:
    """The metrics of a checkpoint: the source test loss, and for language the exact gap."""
    test_loss = _test_loss(run)

    def metrics(params: models.Params, model_state: models.ModelState) -> dict[str, float]:
        record = {"test_loss": test_loss(params, model_state)}
        if isinstance(run.task, language.LanguageTask):
            gap = language.masked_lm_gap(run.model, params, run.task)
            record.update(loss_gap=gap.value, loss_gap_stderr=gap.stderr)
        return record

    return metrics


def pretrain(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, overwrite: bool = False
) -> PretrainResult:
    """Pretrains the configuration `config` in `workdir`, resuming what is already there.

    Args:
      config: the full config; `seed`, `data`, `model` and `pretrain` are read (see
        `configs/digits.py`), other top-level sections are saved but ignored.
      workdir: the run's directory, created if needed.
      overwrite: discard a run of a different config in `workdir` instead of refusing.

    Returns:
      The `PretrainResult`. Calling `pretrain` again on a finished run only restores it.

    On several devices or hosts (`experiments.multihost`) every process calls it with the same
    arguments and a shared `workdir`: training is data parallel (each step's batch split across
    all devices, the state replicated), the primary process writes the files and Orbax the
    checkpoints; when it returns, the workdir is complete for every process.

    Raises:
      WorkdirConfigMismatchError: `workdir` holds a run of a different config (the message
        lists the differing fields) and `overwrite` is False.
      ConfigError, UnknownDatasetError, DatasetNotPreparedError: see `build_run`; also a
        `config.pretrain.batch_size` that the devices do not divide.
    """
    run = build_run(config)
    multihost.check_batch_size(run.settings["batch_size"], "config.pretrain.batch_size")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir(workdir, config, overwrite)
    # Every process has read the workdir before the primary one changes it.
    multihost.barrier("pretrain: workdir checked")
    if multihost.is_primary():
        (workdir / CONFIG_FILE).write_text(config.to_json(indent=2, sort_keys=True) + "\n")

    settings, steps = run.settings, run.settings["steps"]
    with _manager(workdir) as manager:
        latest = manager.latest_step()
        if latest is not None:
            # Only the shapes are needed to restore, which saves compiling the initializer.
            params, model_state = jax.eval_shape(run.init)
            opt_state = jax.eval_shape(run.optimizer.init, params)
            probe = jax.eval_shape(run.adversary.refit, params) if run.adversary else None
            restored = _restore(
                manager,
                latest,
                {
                    "params": params,
                    "opt_state": opt_state,
                    "model_state": model_state,
                    "adversary_probe": probe,
                },
            )
            params, opt_state, model_state, probe = (
                restored["params"],
                restored["opt_state"],
                restored["model_state"],
                restored["adversary_probe"],
            )
            logging.info("Resuming %s from the checkpoint at step %d.", workdir, latest)
        else:
            # Every process initializes the same values from the seed; replicated, they are one
            # global state (restored checkpoints come back replicated, see `_abstract`).
            params, model_state = multihost.replicate(run.init())
            opt_state = multihost.replicate(run.optimizer.init(params))
            probe = multihost.replicate(run.adversary.refit(params)) if run.adversary else None
        size = models.num_params(params)
        logging.info(
            "Pretraining %s with %s on %s: %d parameters (encoder %d), %d steps, in %s.",
            config.model.family,
            run.objective.name,
            run.task.name,
            size,
            models.num_params(params["encoder"]),
            steps,
            workdir,
        )
        if multihost.data_parallel():
            logging.info(
                "Data parallel: each batch of %d examples is split across %d devices of %d processes.",
                settings["batch_size"],
                jax.device_count(),
                jax.process_count(),
            )
        step = latest or 0
        metrics = _MetricsLog(workdir / METRICS_FILE, step)
        checkpoint_metrics = _checkpoint_metrics(run)
        train_step = make_train_step(run)

        def checkpoint(
            step: int,
            params: models.Params,
            opt_state: optax.OptState,
            model_state: models.ModelState,
            probe: language.RidgeProbe | None,
        ) -> None:
            # The metrics line goes first: if the run is killed before the save completes, the
            # resumed run drops the line together with everything else past its checkpoint.
            record = checkpoint_metrics(params, model_state)
            metrics.write({"step": step, **record})
            items = {
                "params": params,
                "opt_state": opt_state,
                "model_state": model_state,
                "adversary_probe": probe,
            }
            _save(manager, step, items)
            logging.info(
                "Checkpoint at step %d: %s.",
                step,
                ", ".join(f"{name} {value:.4f}" for name, value in record.items()),
            )

        if latest is None and 0 in run.saved_steps:
            checkpoint(0, params, opt_state, model_state, probe)
        start_time, start_step, loss_sum = time.perf_counter(), step, 0.0
        interval_time, interval_step = start_time, step
        for batch in _training_batches(run, step, steps):
            batch = multihost.shard_examples(batch)
            if run.adversary is not None:
                if step % run.adversary.refit_every == 0 and step > 0:
                    probe = run.adversary.refit(params)
                batch["adversary_probe"] = probe
                batch["adversary_batch"] = run.adversary.validation_batch(run.seed, step)
            params, opt_state, model_state, loss = train_step(params, opt_state, model_state, batch)
            loss_sum += loss  # Stays on device: no host sync except when logging.
            step += 1
            if step % settings["log_every"] == 0 or step == steps:
                now = time.perf_counter()
                rate = (step - interval_step) / (now - interval_time)
                record = {
                    "step": step,
                    # Mean over the steps since the last log line; fewer than `log_every`
                    # in the first interval after resuming.
                    "train_loss": float(loss_sum) / (step - interval_step),
                    "train_loss_steps": step - interval_step,
                    "learning_rate": float(run.schedule(step - 1)),
                    "steps_per_second": rate,
                }
                metrics.write(record)
                logging.info(
                    "step %d/%d (%.0f%%): train loss %.4f, lr %.3g, %.1f steps/s, ETA %.0fs",
                    step,
                    steps,
                    100 * step / steps,
                    record["train_loss"],
                    record["learning_rate"],
                    rate,
                    (steps - step) / rate,
                )
                loss_sum, interval_time, interval_step = 0.0, now, step
            if step in run.saved_steps:
                checkpoint(step, params, opt_state, model_state, probe)
        saved = sorted(manager.all_steps())

    summary = {
        "num_params": size,
        "num_encoder_params": models.num_params(params["encoder"]),
        "steps": steps,
        "checkpoint_steps": saved,
        "seconds_this_session": time.perf_counter() - start_time,
        "steps_this_session": steps - start_step,
    }
    if multihost.is_primary():
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    multihost.barrier("pretrain: finished")
    return PretrainResult(params, model_state, size, saved)
