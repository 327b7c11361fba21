"""Several seeds of one configuration pretrained as one program: `jax.vmap` over the seeds.

A small model leaves an accelerator mostly idle, so a study there trains the seeds of each
configuration stacked on a leading axis, one compiled update for all of them (`pretrain_stacked`;
the study does it where `config.sweep.stack_seeds` says, `experiments.sweep.pretraining`). On a CPU
the study runs seeds as separate processes instead: a vmap of 5 or 8 seeds was measured slower
per seed-step than one seed alone on a quiet 2-core machine (`benchmarks/parallel_seeds.py`
compares them; BUILD.md has the numbers and their caveats).

Each seed keeps its own workdir, written as `train.pretrain` writes it (config, Orbax checkpoints,
metrics, summary), so every later stage reads it unchanged, and `train.pretrain` can resume it.
The batches are made on the host, seed by seed, a step ahead on a second thread, and stacked.

The parameters equal those of separate runs up to floating-point rounding (the batched products
may sum in another order; tested to 1e-5 over a few steps), not bit for bit. Seeds that resume
from different steps (e.g. one finished alone before) are trained in groups, one per starting step.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments.core import checkpoints, config_utils, multihost
from experiments.training import models, runs, train


class StackingError(config_utils.ConfigError):
    """The configs cannot be trained as one stacked program (the message says why)."""


def check_stackable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Checks that `configs` differ only in `seed` and that each seed appears once.

    Raises:
      StackingError: no config, a repeated seed, or another field that differs (named).
    """
    if not configs:
        raise StackingError("pretrain_stacked needs at least one config; got none.")
    seeds = [config.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise StackingError(f"pretrain_stacked: every config needs its own seed; got seeds {seeds}.")

    def without_seed(config: ml_collections.ConfigDict) -> dict[str, Any]:
        plain = config_utils.to_plain(config)
        return {key: plain.get(key) for key in runs.PRETRAINING_SECTIONS if key != "seed"}

    first = without_seed(configs[0])
    for config in configs[1:]:
        changed = config_utils.differences(first, without_seed(config))
        if changed:
            raise StackingError(
                f"pretrain_stacked stacks seeds of one configuration; seed {config.seed}'s config "
                f"differs from seed {configs[0].seed}'s in:\n  " + "\n  ".join(changed)
            )


# Each one compiled program for the whole state: leaf by leaf, eager indexing and stacking compiled
# two small programs per distinct leaf shape, seconds of a stacked run's start-up on a GPU.
@jax.jit
def _member_at(stacked: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], stacked)


def _member(stacked: Any, index: int) -> Any:
    return _member_at(stacked, np.int32(index))


@jax.jit
def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *trees)


def pretrain_stacked(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | pathlib.Path],
    *,
    overwrite: bool = False,
) -> list[train.PretrainResult]:
    """Pretrains the seeds `configs` (one configuration, several seeds) as one `jax.vmap`ped
    program, seed `i` in `workdirs[i]`, resuming what each workdir holds.

    Args:
      configs: full configs that differ only in `seed` (see `train.pretrain`).
      workdirs: one run directory per config.
      overwrite: discard runs of different configs in the workdirs instead of refusing.

    Returns:
      Each seed's `train.PretrainResult`, in the order of `configs`.

    Raises:
      StackingError: the configs differ in more than the seed, repeat a seed, the lengths
        differ, an objective has a per-step extra term (the adversary: its host-side update is
        per seed), or JAX runs on several processes.
      WorkdirConfigMismatchError, ConfigError, FileNotFoundError: as `train.pretrain`.
    """
    configs, workdirs = list(configs), [pathlib.Path(w) for w in workdirs]
    if len(configs) != len(workdirs):
        raise StackingError(
            f"pretrain_stacked needs one workdir per config; got {len(configs)} configs and "
            f"{len(workdirs)} workdirs."
        )
    check_stackable(configs)
    if jax.process_count() > 1 or multihost.data_parallel():
        raise StackingError("pretrain_stacked runs in one process on one device; this JAX has "
                            f"{jax.process_count()} processes and {jax.device_count()} devices.")
    members = [runs.build_run(config) for config in configs]
    if members[0].extras is not None:
        raise StackingError(
            f"pretrain_stacked cannot stack config.pretrain.objective="
            f"{configs[0].pretrain.objective!r}: its per-step extra term is updated on the host "
            "seed by seed; train it with train.pretrain."
        )
    for run, workdir, config in zip(members, workdirs, configs, strict=True):
        train._start(run, workdir, config, overwrite)
    results: list[train.PretrainResult | None] = [None] * len(configs)
    with contextlib.ExitStack() as opened:
        managers = [opened.enter_context(checkpoints.manager(w)) for w in workdirs]
        # None (nothing saved yet) apart from 0 (step 0 saved): only the first saves step 0.
        starts = [-1 if (latest := manager.latest_step()) is None else latest for manager in managers]
        for start in sorted(set(starts)):
            group = [i for i, first in enumerate(starts) if first == start]
            outcomes = _train_group([members[i] for i in group], [workdirs[i] for i in group],
                                    [managers[i] for i in group])
            for i, outcome in zip(group, outcomes, strict=True):
                results[i] = outcome
    return results


def _train_group(members: list[runs.Run], workdirs: list[pathlib.Path],
                 managers: list[Any]) -> list[train.PretrainResult]:
    """Trains seeds that resume from one step, stacked, to the end; writes their summaries."""
    first = members[0]
    steps = first.settings["steps"]
    initial = [train._initial_state(run, manager) for run, manager in zip(members, managers)]
    latest = initial[0][1]
    for run, (state, _), workdir in zip(members, initial, workdirs, strict=True):
        train._log_start(run, state, workdir, latest)
    step = latest or 0
    logs = [train._MetricsLog(workdir / train.METRICS_FILE, step) for workdir in workdirs]
    metrics_of = [train._checkpoint_metrics(run) for run in members]
    state = _stack([state for state, _ in initial])
    update = jax.jit(jax.vmap(train.train_update(first)))
    logging.info("Seeds %s stacked in one program from step %d of %d.",
                 ", ".join(str(run.seed) for run in members), step, steps)

    def checkpoint(step: int, state: train._State) -> None:
        for index, manager in enumerate(managers):
            train.save_checkpoint(manager, logs[index], metrics_of[index], step, _member(state, index),
                                  f" of seed {members[index].seed}")

    if latest is None and 0 in first.saved_steps:
        checkpoint(0, state)
    start_time, start_step = time.perf_counter(), step
    progress = [train._ProgressLog(run, log, step) for run, log in zip(members, logs, strict=True)]
    losses = 0.0  # One sum of the stacked losses.
    make = lambda step: jax.tree.map(  # noqa: E731 - one seed's batch after another, stacked.
        lambda *leaves: np.stack(leaves), *[train.training_batch(run, step) for run in members])
    for batch in train.prefetched(make, step, steps):
        params, opt_state, model_state, loss = update(state.params, state.opt_state,
                                                      state.model_state, batch)
        state = train._State(params, opt_state, model_state, None)
        step += 1
        losses += loss
        if progress[0].due(step):  # Each seed's log line: its sum since the last.
            for index, log in enumerate(progress):
                log.add(step, float(losses[index]))
            losses = 0.0
        if step in first.saved_steps:
            checkpoint(step, state)
    seconds = time.perf_counter() - start_time
    outcomes = []
    for index, (manager, workdir) in enumerate(zip(managers, workdirs, strict=True)):
        own = _member(state, index)
        saved = sorted(manager.all_steps())
        if start_step < steps or not (workdir / train.SUMMARY_FILE).exists():
            # `stacked_seeds`: how many seeds the program that trained its last steps held.
            train.write_summary(workdir, own.params, steps, saved, seconds, steps - start_step,
                                stacked_seeds=len(members))
        size = models.num_params(own.params)
        outcomes.append(train.PretrainResult(own.params, own.model_state, size, saved))
    return outcomes

