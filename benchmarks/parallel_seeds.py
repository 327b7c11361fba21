"""Seeds of the study in parallel: pretraining runs one after another against worker processes.

  python -m benchmarks.parallel_seeds [--seeds=4] [--steps=600] [--parallel=1,2,stacked]

Pretrains `--seeds` seeds of the language setting's default model (`configs/pcfg.py`: width 32,
depth 2, batch 256, fresh sentences of the `rooted` grammar) for `--steps` steps each, through the
study's own job runner (`experiments.core.jobs.run_jobs`, the jobs of `experiments.sweep.study`),
once for every value of `--parallel`: 1 runs the seeds one after another in this process; N > 1 runs
N at a time, each in a spawned worker process; `stacked` trains all the seeds as one `jax.vmap`ped
program (`config.sweep.stack_seeds="always"`, `experiments.training.stacked`), the study's default on
an accelerator. Every setting runs in a fresh workdir, so nothing is reused, and the checkpoints of
every setting are compared with the first's: worker processes must give identical parameters
(parallelism is a speed knob, never a result knob); stacked seeds equal them up to rounding, which
training amplifies, so the table prints the largest difference (the attention key biases apart).
Appends a table to `benchmarks/RESULTS.md`: wall time, seeds per minute and the speed-up over the
first setting, measured side by side in one run.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
from experiments.configs import pcfg
from experiments.core import jobs
from experiments.sweep import study
from experiments.training import runs

_SEEDS = flags.DEFINE_integer("seeds", 4, "Seeds to pretrain in each setting.")
_STEPS = flags.DEFINE_integer("steps", 600, "Pretraining steps of each seed.")
_PARALLEL = flags.DEFINE_list(
    "parallel", ["1", "2", "stacked"], "Worker processes to compare, or `stacked` (one program).")


def _config(seeds: int, steps: int):
    config = pcfg.get_config()
    config.sweep.objectives, config.sweep.widths = ("adamw",), (32,)
    config.sweep.seeds = tuple(range(seeds))
    config.pretrain.steps, config.pretrain.checkpoint_steps = steps, ()
    config.pretrain.log_every = steps
    return config


def _pretrain_all(config, workdir: pathlib.Path, setting: str) -> float:
    """Seconds to pretrain every configuration of the sweep with `setting` (a number of workers,
    or "stacked")."""
    config.sweep.stack_seeds = "always" if setting == "stacked" else "never"
    configurations = study.configurations(config)
    pretraining = [job for job in study.study_jobs(configurations, config, workdir)
                   if job.job_id.split("/")[0] in ("pretrain", "pretrain_stacked")]
    start = time.perf_counter()
    parallel = 1 if setting == "stacked" else int(setting)
    results = jobs.run_jobs(workdir, pretraining, parallel=parallel)
    seconds = time.perf_counter() - start
    assert all(record.status == jobs.DONE for record in results.values()), results
    return seconds


def _final_params(config, workdir: pathlib.Path) -> list[tuple[bool, np.ndarray]]:
    """Every seed's final parameters: (whether the leaf is an attention key bias, its values)."""
    leaves = []
    for configuration in study.configurations(config):
        params, _ = runs.restore_params(configuration.run_dir(workdir))
        leaves += [("['key']['bias']" in jax.tree_util.keystr(path), np.asarray(leaf))
                   for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
    return leaves


def _difference(reference, params) -> str:
    """The largest difference of two settings' parameters, in words: key biases (which the
    softmax ignores, so Adam drifts them by the learning rate's steps on rounding) apart."""
    largest = {True: 0.0, False: 0.0}
    for (bias, a), (_, b) in zip(reference, params, strict=True):
        largest[bias] = max(largest[bias], float(np.max(np.abs(a - b))))
    if not any(largest.values()):
        return "identical"
    return f"differ, largest |Δ| {largest[False]:.1e} ({largest[True]:.1e} in the key biases)"


def main(argv: list[str]) -> None:
    del argv
    for setting in _PARALLEL.value:
        if setting != "stacked" and not (setting.isdigit() and int(setting) >= 1):
            raise app.UsageError(f"--parallel takes numbers >= 1 or 'stacked'; got {setting!r}.")
    config = _config(_SEEDS.value, _STEPS.value)
    runs.build_run(config)  # Builds the grammar's data once, outside the timings.
    rows, reference, baseline = [], None, None
    with tempfile.TemporaryDirectory() as root:
        for setting in _PARALLEL.value:
            workdir = pathlib.Path(root, f"parallel_{setting}")
            seconds = _pretrain_all(config, workdir, setting)
            params = _final_params(config, workdir)
            if reference is None:
                reference, baseline = params, seconds
            rows.append([
                setting,
                timing.seconds(seconds),
                f"{_SEEDS.value * 60 / seconds:.2f}",
                f"{baseline / seconds:.2f}x",
                _difference(reference, params),
            ])
            print(rows[-1], flush=True)
    table = timing.markdown_table(
        ["parallel", "wall", "seeds / min", "speed-up", f"parameters vs {_PARALLEL.value[0]}"], rows
    )
    text = (
        f"\n## Parallel seeds, {timing.now()}\n\n"
        f"`python -m benchmarks.parallel_seeds --seeds={_SEEDS.value} --steps={_STEPS.value} "
        f"--parallel={','.join(_PARALLEL.value)}`: "
        f"{_SEEDS.value} seeds of the language setting's default model, {_STEPS.value} steps "
        f"each, through the study's job runner. {timing.machine()}; {timing.load()}; "
        f"{timing.versions_line()}.\n\n{table}\n"
    )
    timing.record(text)


if __name__ == "__main__":
    app.run(main)
