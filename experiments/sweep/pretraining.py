"""The study's pretraining jobs: one per run, or one per configuration with its seeds stacked.

`config.sweep.stack_seeds` chooses:
  * `"auto"` (default): stacked on an accelerator, where a small model leaves the device idle and
    one `jax.vmap`ped program trains every seed of a configuration (`training.stacked`); one job
    per run on a CPU, where seeds run side by side in worker processes instead (`--parallel`):
    on a quiet 2-core machine a vmap of 5 or 8 seeds was slower per seed-step than one seed
    alone (`benchmarks/parallel_seeds.py` compares them; BUILD.md has the numbers and caveats);
  * `"always"` / `"never"`: stacked on any backend / never.
Only configurations without a per-step extra term are stacked (the adversary's is updated on the
host, seed by seed, so its runs stay one job each), whose seeds share every other setting, and
only in one process on one device (several devices train each run data parallel instead).

A stacked configuration gets a `pretrain_stacked/<model>/<objective>` job that trains its seeds;
each run keeps its `pretrain/...` job, which then only reads the run's summary, so the checkpoint
jobs, the job files and the results do not change shape. A killed stacked job resumes each seed
from its own checkpoints.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from experiments.core import config_utils, jobs
from experiments.training import runs, stacked, train

if TYPE_CHECKING:
    from experiments.sweep.study import Configuration

STACK_CHOICES = ("auto", "always", "never")
STACK_DEFAULT = "auto"  # `study.SWEEP_SCHEMA`'s default too.


def stacks_seeds(config: ml_collections.ConfigDict) -> bool:
    """Whether `config.sweep.stack_seeds` stacks the seeds of a configuration here.

    Raises:
      ConfigError: not one of `STACK_CHOICES`, or `"always"` on several processes.
    """
    value = config.sweep.get("stack_seeds", STACK_DEFAULT)
    if value not in STACK_CHOICES:
        raise config_utils.ConfigError(
            f"config.sweep.stack_seeds must be one of {', '.join(map(repr, STACK_CHOICES))}; "
            f"got {value!r}."
        )
    if jax.process_count() > 1 or jax.device_count() > 1:
        if value == "always":
            raise config_utils.ConfigError(
                "config.sweep.stack_seeds='always' needs one process on one device; this JAX has "
                f"{jax.process_count()} processes and {jax.device_count()} devices (each run is "
                "data parallel over them instead): use 'auto' or 'never'."
            )
        return False
    return value == "always" or (value == "auto" and jax.default_backend() != "cpu")


def pretrain_job(configuration: Configuration, workdir: pathlib.Path) -> dict[str, Any]:
    """Pretrains one run (resuming it); its size and checkpoint steps."""
    train.pretrain(configuration.config, configuration.run_dir(workdir))
    return _summary(configuration, workdir)


def _summary(configuration: Configuration, workdir: pathlib.Path) -> dict[str, Any]:
    summary = json.loads((configuration.run_dir(workdir) / train.SUMMARY_FILE).read_text())
    return {name: summary[name] for name in ("num_params", "num_encoder_params", "checkpoint_steps")}


def _stacked_job(group: Sequence[Configuration], workdir: pathlib.Path) -> dict[str, Any]:
    stacked.pretrain_stacked([c.config for c in group], [c.run_dir(workdir) for c in group])
    return {"seeds": [c.seed for c in group]}


def pretraining_jobs(
    configs: Sequence[Configuration], config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> list[jobs.Job]:
    """The pretraining jobs of `configs`, each run's named `pretrain/<run parts>`; where seeds
    are stacked, preceded by its configuration's `pretrain_stacked` job."""
    groups: dict[tuple[str, ...], list[Configuration]] = {}
    for c in configs:
        groups.setdefault(c.parts[:-1], []).append(c)  # The parts end with the seed.
    stacked_ids: dict[str, str] = {}  # Run's job id -> its configuration's stacked job.
    result = []
    if stacks_seeds(config):
        for key, group in groups.items():
            if len(group) > 1 and _stackable(group):
                stacked_id = jobs.make_job_id("pretrain_stacked", *key)
                fn = functools.partial(_stacked_job, group, workdir)
                result.append(jobs.Job(stacked_id, fn, in_worker=True, cost=max(group[0].steps)))
                stacked_ids.update({jobs.make_job_id("pretrain", *c.parts): stacked_id for c in group})
    for c in configs:  # In the configs' order, as without stacking.
        run_id = jobs.make_job_id("pretrain", *c.parts)
        if run_id in stacked_ids:  # Only reads the summary (in a worker: it never waits for one;
            # cost 0: not timed, or the ETA would price the other runs' steps at nothing).
            result.append(jobs.Job(run_id, functools.partial(_summary, c, workdir),
                                   (stacked_ids[run_id],), in_worker=True, cost=0))
        else:
            fn = functools.partial(pretrain_job, c, workdir)  # Priced by its steps in the ETA.
            result.append(jobs.Job(run_id, fn, in_worker=True, cost=max(c.steps)))
    return result


def _stackable(group: Sequence[Configuration]) -> bool:
    """Whether the runs of `group` (one model and objective) can train as one program: the same
    config but the seed (arms may give disjoint seeds other budgets) and no per-step extra term."""
    try:
        stacked.check_stackable([c.config for c in group])
    except stacked.StackingError:
        return False
    return runs.build_run(group[0].config).extras is None
