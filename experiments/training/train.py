"""Resumable pretraining of one configuration.

`pretrain(config, workdir)` is the entry point (the `experiments.pretrain` binary and the study
call it). It writes into `workdir`:
  * `config.json`: the full config;
  * `checkpoints/<step>/`: Orbax checkpoints (`params`, `opt_state`, `model_state` for BatchNorm
    models, `step_extras` for runs with a per-step extra term) at every step of
    `config.pretrain.checkpoint_steps` and at the last step, all kept: later stages measure each;
  * `metrics.jsonl`: one JSON object per line: the training loss (averaged since the last line),
    learning rate and speed every `log_every` steps, and at each checkpoint the source test loss
    plus the setting's checkpoint metrics (`Setting.checkpoint_metrics`, e.g. the language
    setting's exact `loss_gap` and `loss_gap_stderr`, and the gap of each evaluation sentence);
  * `summary.json`: written when the run is complete (parameter counts, wall time).

Every random choice is a function of `(config.seed, step)`: the initialization of the seed, the
data order and augmentations (or masked positions) of each step (`experiments.training.pipeline`).
A run killed at any point and restarted with the same workdir resumes from its last checkpoint and
ends with exactly the parameters of an uninterrupted run. A workdir holding a run of a different
config is refused unless `overwrite=True`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments.core import checkpoints, config_utils, multihost
from experiments.training import models, objectives, runs

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


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


def _check_workdir(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, overwrite: bool
) -> None:
    config_path = workdir / runs.CONFIG_FILE
    if overwrite:
        if multihost.is_primary():
            shutil.rmtree(workdir / checkpoints.CHECKPOINT_DIR, ignore_errors=True)
            for name in (runs.CONFIG_FILE, METRICS_FILE, SUMMARY_FILE):
                (workdir / name).unlink(missing_ok=True)
        return
    if not config_path.exists():
        if (workdir / checkpoints.CHECKPOINT_DIR).exists():
            raise checkpoints.WorkdirConfigMismatchError(
                f"{workdir} holds checkpoints but no {runs.CONFIG_FILE}; pass overwrite=True "
                "(--overwrite) to discard them, or use another workdir."
            )
        return

    def pretraining_fields(plain: dict[str, Any]) -> dict[str, Any]:
        fields = {key: plain[key] for key in runs.PRETRAINING_SECTIONS if key in plain}
        for path in runs.RESUMABLE_CHANGES:
            section, name = path.split(".")
            fields.get(section, {}).pop(name, None)
        return fields

    saved = pretraining_fields(json.loads(config_path.read_text()))
    changed = config_utils.differences(saved, pretraining_fields(config_utils.to_plain(config)))
    if changed:
        raise checkpoints.WorkdirConfigMismatchError(
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


def train_update(run: runs.Run) -> Callable[..., Any]:
    """The training update of `run`, not compiled: `make_train_step` jits it, and
    `experiments.training.stacked` jits its `jax.vmap` over seeds. Same signature as there."""

    def update(params, opt_state, model_state, batch):
        def loss_of(params):
            outputs, new_state = models.apply_model(
                run.model, params, model_state, batch["inputs"], train=True
            )
            loss = run.objective.loss(outputs, batch)
            if run.extras is not None:
                loss = loss + run.extras.penalty(params, batch["extras_state"], batch["extras_batch"])
            return loss, new_state

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = run.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, loss

    return update


def make_train_step(run: runs.Run) -> Callable[..., Any]:
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
    return jax.jit(train_update(run), **placement)


def _training_batches(run: runs.Run, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """The prepared batches of steps `start .. stop - 1`, each made while the step before runs.

    A batch is a function of `(seed, step)` (`objectives.training_batch`), so preparing it on a
    second thread changes nothing but the time: on a CPU, XLA runs the small models' steps on one
    core and the batch (about 15% of a step of the language setting) is made on the other.
    """
    return prefetched(functools.partial(training_batch, run), start, stop)


def training_batch(run: runs.Run, step: int) -> dict[str, Any]:
    """The prepared batch of `run`'s training step `step`."""
    return objectives.training_batch(
        run.objective, run.task.train, run.settings["batch_size"], run.seed, step
    )


def prefetched(make: Callable[[int], Any], start: int, stop: int) -> Iterator[Any]:
    """`make(step)` for steps `start .. stop - 1`, each made on a second thread while the caller
    works on the one before."""
    with futures.ThreadPoolExecutor(1, thread_name_prefix="batches") as worker:
        pending = worker.submit(make, start) if start < stop else None
        for step in range(start, stop):
            batch = pending.result()
            pending = worker.submit(make, step + 1) if step + 1 < stop else None
            yield batch


def _test_loss(run: runs.Run) -> Callable[[models.Params, models.ModelState], float]:
    """The mean evaluation-mode loss over fixed batches of the source test split."""
    batch_size = min(run.settings["batch_size"], run.task.test.num_examples)
    batches = [
        objectives.training_batch(run.objective, run.task.test, batch_size, run.seed, step)
        for step in range(run.task.test.num_examples // batch_size)
    ]
    # A Python loop over batches: XLA:CPU runs convolutions inside `lax.map` many times slower.
    loss = objectives.compiled_eval_loss(run.model, run.objective)

    def mean_loss(params: models.Params, model_state: models.ModelState) -> float:
        return float(np.mean([loss(params, model_state, batch) for batch in batches]))

    return mean_loss


def _checkpoint_metrics(
    run: runs.Run,
) -> Callable[[models.Params, models.ModelState], dict[str, Any]]:
    """The metrics of a checkpoint: the source test loss, then the setting's own."""
    test_loss = _test_loss(run)
    setting_metrics = run.setting.checkpoint_metrics(run)

    def metrics(params: models.Params, model_state: models.ModelState) -> dict[str, Any]:
        return {"test_loss": test_loss(params, model_state), **setting_metrics(params, model_state)}

    return metrics


class _State(NamedTuple):
    """Everything a training step updates, and what a checkpoint holds."""

    params: models.Params
    opt_state: optax.OptState
    model_state: models.ModelState
    step_extras: Any

    def items(self) -> dict[str, Any]:
        return self._asdict()


def _initial_state(run: runs.Run, manager: Any) -> tuple[_State, int | None]:
    """The state to train from, and the step of its checkpoint (None: the seed's, not saved)."""
    latest = manager.latest_step()
    if latest is None:
        # Every process initializes the same values from the seed; replicated, they are one global
        # state (restored checkpoints come back replicated too).
        params, model_state = multihost.replicate(run.init())
        opt_state = multihost.replicate(run.optimizer.init(params))
        extras = multihost.replicate(run.extras.init(params)) if run.extras else None
        return _State(params, opt_state, model_state, extras), None
    # Only the shapes are needed to restore, which saves compiling the initializer.
    params, model_state = jax.eval_shape(run.init)
    shapes = _State(
        params,
        jax.eval_shape(run.optimizer.init, params),
        model_state,
        jax.eval_shape(run.extras.init, params) if run.extras else None,
    )
    restored = checkpoints.restore(manager, latest, shapes.items())
    return _State(**restored), latest


def save_checkpoint(manager: Any, metrics: _MetricsLog, measure: Callable[[Any, Any], dict],
                    step: int, state: _State, who: str = "") -> None:
    """Writes a checkpoint's line of `metrics.jsonl`, saves the checkpoint and logs its metrics.

    The line goes first: if the run is killed before the save completes, the resumed run drops the
    line together with everything else past its checkpoint. `who` names the run in the log line.
    """
    record = measure(state.params, state.model_state)
    metrics.write({"step": step, **record})
    checkpoints.save(manager, step, state.items())
    logging.info("Checkpoint%s at step %d: %s.", who, step, ", ".join(
        f"{name} {value:.4f}" for name, value in record.items() if isinstance(value, (int, float))))


class _ProgressLog:
    """The training-loss lines of `metrics.jsonl` and the log, every `log_every` steps."""

    def __init__(self, run: runs.Run, metrics: _MetricsLog, step: int):
        self._run, self._metrics = run, metrics
        self._loss_sum, self._time, self._step = 0.0, time.perf_counter(), step

    def due(self, step: int) -> bool:
        """Whether the step that ended at `step` ends a logging interval (or the run)."""
        settings = self._run.settings
        return step % settings["log_every"] == 0 or step == settings["steps"]

    def add(self, step: int, loss: jax.Array) -> None:
        """Records the loss of the step that ended at `step` (no host sync unless logging)."""
        self._loss_sum += loss
        if not self.due(step):
            return
        steps = self._run.settings["steps"]
        now = time.perf_counter()
        rate = (step - self._step) / (now - self._time)
        record = {
            "step": step,
            # Mean over the steps since the last log line; fewer than `log_every` in the first
            # interval after resuming.
            "train_loss": float(self._loss_sum) / (step - self._step),
            "train_loss_steps": step - self._step,
            "learning_rate": float(self._run.schedule(step - 1)),
            "steps_per_second": rate,
        }
        self._metrics.write(record)
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
        self._loss_sum, self._time, self._step = 0.0, now, step


def _start(run: runs.Run, workdir: pathlib.Path, config: ml_collections.ConfigDict,
           overwrite: bool) -> None:
    """Checks the workdir against `config` and saves the config (primary process)."""
    multihost.check_batch_size(run.settings["batch_size"], "config.pretrain.batch_size")
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir(workdir, config, overwrite)
    # Every process has read the workdir before the primary one changes it.
    multihost.barrier("pretrain: workdir checked")
    if multihost.is_primary():
        (workdir / runs.CONFIG_FILE).write_text(config.to_json(indent=2, sort_keys=True) + "\n")


def _log_start(run: runs.Run, state: _State, workdir: pathlib.Path, latest: int | None) -> None:
    if latest is not None:
        logging.info("Resuming %s from the checkpoint at step %d.", workdir, latest)
    logging.info(
        "Pretraining %s with %s on %s: %d parameters (encoder %d), %d steps, in %s.",
        run.config.model.family,
        run.objective.name,
        run.task.name,
        models.num_params(state.params),
        models.num_params(state.params["encoder"]),
        run.settings["steps"],
        workdir,
    )
    if multihost.data_parallel():
        logging.info(
            "Data parallel: each batch of %d examples is split across %d devices of %d processes.",
            run.settings["batch_size"],
            jax.device_count(),
            jax.process_count(),
        )


def pretrain(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, overwrite: bool = False
) -> PretrainResult:
    """Pretrains the configuration `config` in `workdir`, resuming what is already there.

    Args:
      config: the full config; `seed`, `setting`, `data`, `model` and `pretrain` are read (see
        `configs/digits.py`), other top-level sections are saved but ignored.
      workdir: the run's directory, created if needed.
      overwrite: discard a run of a different config in `workdir` instead of refusing.

    Returns:
      The `PretrainResult`. Calling `pretrain` again on a finished run only restores it.

    On several devices or hosts (`experiments.core.multihost`) every process calls it with the
    same arguments and a shared `workdir`: training is data parallel (each step's batch split
    across all devices, the state replicated), the primary process writes the files and Orbax the
    checkpoints; when it returns, the workdir is complete for every process.

    Raises:
      WorkdirConfigMismatchError: `workdir` holds a run of a different config (the message
        lists the differing fields) and `overwrite` is False.
      ConfigError, FileNotFoundError: see `runs.build_run`; also a `config.pretrain.batch_size`
        that the devices do not divide.
    """
    run = runs.build_run(config)
    workdir = pathlib.Path(workdir)
    _start(run, workdir, config, overwrite)
    steps = run.settings["steps"]
    with checkpoints.manager(workdir) as manager:
        state, latest = _initial_state(run, manager)
        _log_start(run, state, workdir, latest)
        step = latest or 0
        metrics = _MetricsLog(workdir / METRICS_FILE, step)
        checkpoint_metrics = _checkpoint_metrics(run)
        train_step = make_train_step(run)

        def checkpoint(step: int, state: _State) -> None:
            save_checkpoint(manager, metrics, checkpoint_metrics, step, state)

        if latest is None and 0 in run.saved_steps:
            checkpoint(0, state)
        start_time, start_step = time.perf_counter(), step
        progress = _ProgressLog(run, metrics, step)
        for batch in _training_batches(run, step, steps):
            batch = multihost.shard_examples(batch)
            extras_state = state.step_extras
            if run.extras is not None:
                extras_state = run.extras.update(step, state.params, extras_state)
                batch["extras_state"] = extras_state
                batch["extras_batch"] = run.extras.batch(run.seed, step)
            params, opt_state, model_state, loss = train_step(
                state.params, state.opt_state, state.model_state, batch
            )
            state = _State(params, opt_state, model_state, extras_state)
            step += 1
            progress.add(step, loss)
            if step in run.saved_steps:
                checkpoint(step, state)
        saved = sorted(manager.all_steps())

    seconds = time.perf_counter() - start_time
    size = write_summary(workdir, state.params, steps, saved, seconds, steps - start_step)
    multihost.barrier("pretrain: finished")
    return PretrainResult(state.params, state.model_state, size, saved)


def write_summary(workdir: pathlib.Path, params: models.Params, steps: int, saved: list[int],
                  seconds: float, steps_trained: int, **extra: Any) -> int:
    """Writes the finished run's `summary.json` (primary process); returns its parameter count."""
    size = models.num_params(params)
    summary = {
        "num_params": size,
        "num_encoder_params": models.num_params(params["encoder"]),
        "steps": steps,
        "checkpoint_steps": saved,
        "seconds_this_session": seconds,
        "steps_this_session": steps_trained,
        **extra,
    }
    if multihost.is_primary():
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return size
