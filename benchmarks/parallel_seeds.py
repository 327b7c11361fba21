"""Seeds of the study in parallel: pretraining runs one after another against worker processes.

  python -m benchmarks.parallel_seeds [--seeds=4] [--steps=600] [--parallel=1,2]

Pretrains `--seeds` seeds of the language setting's default model (`configs/pcfg.py`: width 32,
depth 2, batch 256, fresh sentences of the `rooted` grammar) for `--steps` steps each, through the
study's own job runner (`experiments.core.jobs.run_jobs`, the jobs of `experiments.sweep.study`),
once for every value of `--parallel`: 1 runs the seeds one after another in this process; N > 1 runs
N at a time, each in a spawned worker process. Every setting runs in a fresh workdir, so nothing is
reused, and the checkpoints of every setting are compared: the parameters must be identical
(parallelism is a speed knob, never a result knob). Appends a table to `benchmarks/RESULTS.md`: wall
time, seeds per minute and the speed-up over `parallel=1`, measured side by side in one run.

Stacking seeds with `jax.vmap` in one program (the accelerator plan of the language study issue)
is not implemented: on this 2-core CPU it was measured slower per seed-step than one seed alone
(26.5 vs 20.7 ms), so processes are the CPU answer.
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
_PARALLEL = flags.DEFINE_list("parallel", ["1", "2"], "Worker processes to compare.")
_RESULTS = pathlib.Path(__file__).parent / "RESULTS.md"


def _config(seeds: int, steps: int):
    config = pcfg.get_config()
    config.sweep.objectives, config.sweep.widths = ("adamw",), (32,)
    config.sweep.seeds = tuple(range(seeds))
    config.pretrain.steps, config.pretrain.checkpoint_steps = steps, ()
    config.pretrain.log_every = steps
    return config


def _pretrain_all(config, workdir: pathlib.Path, parallel: int) -> float:
    """Seconds to pretrain every configuration of the sweep with `parallel` workers."""
    configurations = study.configurations(config)
    pretraining = [job for job in study.study_jobs(configurations, config, workdir)
                   if job.job_id.startswith("pretrain/")]
    start = time.perf_counter()
    results = jobs.run_jobs(workdir, pretraining, parallel=parallel)
    seconds = time.perf_counter() - start
    assert all(record.status == jobs.DONE for record in results.values()), results
    return seconds


def _final_params(config, workdir: pathlib.Path) -> list[np.ndarray]:
    leaves = []
    for configuration in study.configurations(config):
        params, _ = runs.restore_params(configuration.run_dir(workdir))
        leaves += [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]
    return leaves


def main(argv: list[str]) -> None:
    del argv
    config = _config(_SEEDS.value, _STEPS.value)
    runs.build_run(config)  # Builds the grammar's data once, outside the timings.
    rows, reference, baseline = [], None, None
    with tempfile.TemporaryDirectory() as root:
        for parallel in map(int, _PARALLEL.value):
            workdir = pathlib.Path(root, f"parallel{parallel}")
            seconds = _pretrain_all(config, workdir, parallel)
            params = _final_params(config, workdir)
            if reference is None:
                reference, baseline = params, seconds
            same = all(np.array_equal(a, b) for a, b in zip(reference, params, strict=True))
            rows.append([
                str(parallel),
                timing.seconds(seconds),
                f"{_SEEDS.value * 60 / seconds:.2f}",
                f"{baseline / seconds:.2f}x",
                "identical" if same else "DIFFERENT",
            ])
            print(rows[-1], flush=True)
    table = timing.markdown_table(
        ["parallel", "wall", "seeds / min", "speed-up", "parameters vs parallel=1"], rows
    )
    text = (
        f"\n## Parallel seeds, {timing.now()}\n\n"
        f"`python -m benchmarks.parallel_seeds --seeds={_SEEDS.value} --steps={_STEPS.value}`: "
        f"{_SEEDS.value} seeds of the language setting's default model, {_STEPS.value} steps "
        f"each, through the study's job runner. {timing.machine()}; {timing.load()}; "
        f"{timing.versions_line()}.\n\n{table}\n"
    )
    print(text)
    with _RESULTS.open("a") as stream:
        stream.write(text)


if __name__ == "__main__":
    app.run(main)
