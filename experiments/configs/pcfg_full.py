"""The full language study: continued training past the loss plateau, and the training algorithm.

  python -m experiments.study --config=experiments/configs/pcfg_full.py --workdir=runs/pcfg_full

Resumable: rerun the same command after a kill and it goes on from the finished jobs
(`experiments.sweep.study`). `--config=experiments/configs/pcfg_full.py:size` adds the model-size
arm (below), which does not fit the budget.

`configs/pcfg.py` with every run at a constant learning rate after warmup, on the `rooted` grammar
(fresh sentences every step), 8 seeds, in arms (`config.sweep.arms`, `experiments.sweep.arms`):
  * continued training: AdamW, width 32, 16,000 steps, checkpoints at 4,000, 8,000 and 16,000. A
    width-32 run at this rate (seed 0, 2026-12-02) has gaps 0.040 / 0.031 / 0.018 / 0.0165 nats at
    1,000 / 2,000 / 4,000 / 8,000 steps: its plateau (`config.plateau`, `experiments.language.plateau`)
    starts at 4,000 (paired decrease 0.0016 +- 0.0001 nats to 8,000, against 0.013 from 2,000 to
    4,000); seed 1's too (0.0267 / 0.0167 / 0.0166 at 2,000 / 4,000 / 8,000, decreases 0.0100 and
    0.00004 +- 0.00014, through `study.result_rows`). So the checkpoints span 4x in steps on the
    plateau, and training runs 4x past its start;
  * training algorithm: the adversarial algorithm at width 32, 8,000 steps (checkpoints 4,000 and
    8,000), compared with the AdamW runs at step 8,000, on their plateau;
  * model size (`:size` only): AdamW at widths 16 and 64, 8,000 steps, compared at step 8,000 with
    each other (the primary test) and with width 32 (exploratory).

Primary tests (`config.report.primary_tests`, declared before the run): continued training (a run's
first and last checkpoint on the plateau, `on_plateau` in results.csv: no steps declared) and the
algorithm (adversarial - AdamW at step 8,000), each on the Hessian trace and the mean probe
accuracy, Holm-adjusted together; with `:size`, width 64 - 16 too. Why 8 seeds: the seed is the
unit, and the smallest exact two-sided Wilcoxon (or sign) p-value of n seeds is 2 / 2^n: 0.0625 for
5 seeds, which no test can go below; Holm's first step needs 0.05 / 4 = 0.0125 for 2 tests (4
hypotheses) and 0.05 / 6 = 0.0083 for 3, which 8 seeds (0.0078) reach and 7 (0.0156) do not.

Wall time, estimated from measurements on this project's 2-core AMD EPYC (2026-12-02;
`experiments.pretrain`, `experiments.measure` and `experiments.finetune` on `configs/pcfg.py` at a
constant rate, in `/tmp`), twice: while other engineers' jobs loaded it, and again when it was
quieter (load average 1-5) with JAX's compilation cache already holding the measurement's programs.
  * pretraining, width 32 AdamW, one run alone: 48 steps/s loaded (8,000 steps in 193 s wall with
    start-up and 5 checkpoints, 157 s of CPU), 58-65 quieter (2,000 steps in 40 s); adversarial
    43 steps/s loaded (0.9x AdamW), width 16 85, width 64 25 (600-step runs, loaded);
  * two runs at a time in worker processes, the study's default on 2 cores: 38 and 38 steps/s
    quieter (2,000 steps each in 67 s), 1.2x the throughput of one; the per-checkpoint jobs run
    in the main process after the pretraining (the job runner runs them while no worker is busy);
  * per checkpoint, once compiled: measurement 33-82 s loaded (mean 50 s), 10-17 s quieter (mean
    13 s); probes and fine-tuning 41-68 s loaded (mean 56 s), 24-27 s quieter (mean 25 s); the
    first checkpoint of a process compiles: 637 s (measurement) and 195 s (probes, with the input
    baselines) loaded and with an empty compilation cache, 36 s and 63 s quieter with a warm one.
Per seed: 16,000 AdamW and 8,000 adversarial steps of pretraining, and 5 checkpoints. For 8 seeds:
  * quieter: pretraining 8 x (16,000 / 62 + 8,000 / 56) = 8 x 401 = 3,210 s of one worker, / 1.2
    = 2,680 s (45 min); checkpoints 40 x (13 + 25) = 1,520 s (25 min); each run's encoder-at-
    initialisation baseline about 15 s x 16 = 4 min; compiling with an empty cache about 10 min
    (a third of the loaded 637 + 195 s, twice if, as assumed, the adversarial runs' losses
    compile as other programs);
    the report about 5 min: about 90 minutes, the budget, on 2 cores without other jobs;
  * under the load measured: pretraining 8 x (16,000 / 48 + 8,000 / 43) / 1.2 = 8 x 519 / 1.2 =
    3,460 s (58 min); checkpoints 40 x (50 + 56) = 4,240 s (71 min); compiling 2 x (637 + 195) s
    = 28 min: about 2.7 hours.
The `:size` arm adds 8 x (8,000 / 85 + 8,000 / 25) / 1.2 = 2,760 s (46 min, loaded) of
pretraining, 16 checkpoints (10 min quieter, 28 min loaded) and two compiles: over the budget,
hence opt-in.

Not run in full: the session that wrote this config could not run it (2026-12-02).
"""

import ml_collections

from experiments.configs import pcfg

SEEDS = tuple(range(8))
PLATEAU_STEPS = (4000, 8000)  # Checkpoints of the continued-training arm, before its last step.
LONG_STEPS = 16000
ARM_STEPS = 8000  # The other arms: to the plateau, compared with AdamW at this step.


def get_config(options: str = "") -> ml_collections.ConfigDict:
    """`configs/pcfg.py` in arms (see the module docstring); `options="size"` adds the size arm."""
    chosen = {name for name in options.split(",") if name}
    unknown = chosen - {"size"}
    if unknown:
        raise ValueError(f"configs/pcfg_full.py: unknown options {sorted(unknown)}; known: ['size'].")
    config = pcfg.get_config()
    config.pretrain.schedule = "warmup_constant"
    config.pretrain.steps = LONG_STEPS
    config.pretrain.checkpoint_steps = PLATEAU_STEPS
    config.pretrain.log_every = 500
    config.finetune.finetune_steps = 200  # Full fine-tuning, the paper's second transfer measure.
    config.hessian.embed_width = 64 if "size" in chosen else 0  # Sizes at the same function.
    config.sweep.objectives = ("adamw", "adversarial")
    config.sweep.widths = (32,) + ((16, 64) if "size" in chosen else ())
    config.sweep.seeds = SEEDS
    arms = [
        dict(name="continued_training", objectives=("adamw",), widths=(32,)),
        dict(
            name="algorithm",
            objectives=("adversarial",),
            widths=(32,),
            steps=ARM_STEPS,
            checkpoint_steps=(ARM_STEPS // 2,),
        ),
    ]
    if "size" in chosen:
        arms.append(
            dict(name="size", objectives=("adamw",), widths=(16, 64), steps=ARM_STEPS, checkpoint_steps=())
        )
    config.sweep.arms = tuple(arms)

    tested = {"statistic": "trace", "score": "linear_probe_acc"}
    tests = [
        # The first and last checkpoints on the loss plateau of each run (`on_plateau`).
        dict(
            tested,
            name="continued_training",
            kind="delta_along_steps",
            where={"objective": "adamw", "width": 32},
        ),
        # Liu et al.'s adversarial algorithm reaches the loss with a sharper, worse-transferring
        # model: adversarial - AdamW at the step both reach.
        dict(
            tested,
            name="algorithm",
            kind="paired_difference",
            axis="objective",
            levels=("adamw", "adversarial"),
            step=ARM_STEPS,
            where={"width": 32},
        ),
    ]
    if "size" in chosen:
        tests.append(
            dict(
                tested,
                name="size",
                kind="paired_difference",
                axis="width",
                levels=(16, 64),
                step=ARM_STEPS,
                where={"objective": "adamw"},
            )
        )
    config.report.primary_tests = tuple(tests)
    return config
