"""The host's share of pretraining the language setting: a batch of fresh sentences, and what a
stacked run compiles.

  python -m benchmarks.host_costs [--seeds=4] [--steps=200] [--batches=200]

On a GPU the language model's step is small enough that the host's work can bound a stacked run
(an H200, 2026-12-04: `benchmarks/RESULTS.md`). This measures that work where it runs, for the
default config (`configs/pcfg.py`): the mean time to build one training batch
(`train.training_batch`, 256 fresh sentences of the `rooted` grammar, masked), and for one stacked
run of `--seeds` seeds × `--steps` steps (`training.stacked.pretrain_stacked`, in a temporary
workdir) its wall time and the XLA programs it compiles (`fresh.CompileLog`: every compile counted,
eager ones too). To compare two commits, run it in a clean tree of each, one after the other, in
fresh processes. Prints a line and appends it to `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import copy
import pathlib
import tempfile
import time

from absl import app, flags

from benchmarks import fresh, timing
from experiments.configs import pcfg
from experiments.training import runs, stacked, train

_SEEDS = flags.DEFINE_integer("seeds", 4, "Seeds of the stacked run.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps of the stacked run (above the warm-up's 100).")
_BATCHES = flags.DEFINE_integer("batches", 200, "Training batches to time.")


def batch_seconds(config, count: int) -> float:
    """Mean seconds to build one training batch of `config`'s run (after one untimed batch)."""
    run = runs.build_run(config)
    train.training_batch(run, 0)
    start = time.perf_counter()
    for step in range(1, count + 1):
        train.training_batch(run, step)
    return (time.perf_counter() - start) / count


def stacked_run(config, seeds: int) -> tuple[float, int]:
    """Wall seconds and XLA programs compiled by one stacked run of `seeds` seeds of `config`."""
    configs = []
    for seed in range(seeds):
        member = copy.deepcopy(config)
        member.seed = seed
        configs.append(member)
    with tempfile.TemporaryDirectory() as root, fresh.CompileLog() as log:
        start = time.perf_counter()
        stacked.pretrain_stacked(configs, [pathlib.Path(root, f"seed{seed}") for seed in range(seeds)])
        seconds = time.perf_counter() - start
    return seconds, len(log.programs)


def main(argv: list[str]) -> None:
    del argv
    if _SEEDS.value < 1 or _STEPS.value < 101 or _BATCHES.value < 1:
        raise app.UsageError("--seeds and --batches must be >= 1 and --steps >= 101 (the warm-up is 100).")
    config = pcfg.get_config()
    config.pretrain.steps, config.pretrain.checkpoint_steps = _STEPS.value, ()
    config.pretrain.log_every = _STEPS.value
    batch = batch_seconds(config, _BATCHES.value)
    seconds, programs = stacked_run(config, _SEEDS.value)
    text = (
        f"\n## Host costs, {timing.now()}\n\n`python -m benchmarks.host_costs --seeds={_SEEDS.value} "
        f"--steps={_STEPS.value} --batches={_BATCHES.value}`: one training batch "
        f"{batch * 1e3:.2f} ms (mean of {_BATCHES.value}); a stacked run of {_SEEDS.value} seeds × "
        f"{_STEPS.value} steps {seconds:.1f} s, {programs} XLA programs compiled. {timing.machine()}; "
        f"{timing.load()}; {timing.versions_line()}.\n"
    )
    timing.record(text)


if __name__ == "__main__":
    app.run(main)
