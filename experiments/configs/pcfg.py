"""The language setting of Liu et al. (2023): masked-LM pretraining on a random PCFG.

A BERT-style pre-LayerNorm transformer (`text_transformer`) is pretrained with the
single-position masked-LM loss on fresh sentences of the `rooted` grammar, drawn anew for every
step (`config.data.stream`): a grammar shaped like the paper's (a start symbol choosing one of 9
roots, each rewriting to a fixed pair of level-1 symbols; 3 levels of 10 non-terminals with 20
rules each; 50 words, each preterminal emitting 25 of them, so words are ambiguous; 8-word
sentences; `experiments.language.rooted_grammar`, `tfds_builder`). The downstream tasks are the
paper's: A, the root of largest inside probability; B and C, the non-terminal of largest inside
probability on the first 4 and 2 words (`experiments.language.paper_tasks`). The pretraining loss
is reported as the exact gap to the Bayes-optimal loss on the `evaluation` split and on the first
training sentences of the run (`loss_gap`, `loss_gap_train`; `experiments.language.evaluation`).
A width-32 model gets within 0.02 nats of the optimum in 3,000 steps with a cosine schedule at
6e-3 (0.0181 +- 0.0003; docs/pcfg_results.md, 2026-12-02), and within 0.0083 in 8,000 steps
with Liu et al.'s linear decay at the same rate (`warmup_linear`; 0.0063 in 24,000):

  python -m experiments.pretrain --config=experiments/configs/pcfg.py --workdir=runs/pcfg_converged \\
      --config.pretrain.steps=3000 --config.pretrain.schedule=warmup_cosine \\
      --config.pretrain.learning_rate=6e-3 --config.pretrain.checkpoint_steps="(1000,2000)"

Transfer (`experiments.language.probes`): linear probes of tasks A/B/C on the concatenated
per-token features (the paper's), on span means and on the masked-LM's own predictions at every
position, beside the same probe on one-hot tokens, a bag of words and the encoder at
initialisation, and full fine-tuning; each trained on 500 labelled sentences with a
cross-validated penalty. Read `linear_probe_*_gain` (over the best baseline), not the accuracy
alone: in the pilots of docs/pcfg_results.md (session 8) the masked-prediction probe of a model
0.012 nats from the optimum beat the best baseline by 10-12 points on tasks B and C, the
concatenated one by 4-8. `--config.data.pcfg_config=small` is the
previous default (the 20-word grammar with posterior-decoded span tasks), `default` a richer
grammar of that kind.

The default study (`python -m experiments.study`) is the continued-training arm, reduced to run on
2 CPU cores: one model (width 32, depth 2) trained with AdamW at a constant learning rate after a
short warmup, 3 seeds, checkpoints at steps 2,000, 4,000 and 8,000, linear probes (full
fine-tuning off: `config.finetune.finetune_steps`). Its one pre-registered test compares the
checkpoints at steps 4,000 and 8,000 across seeds. Whether those checkpoints are on the
loss plateau is measured, not assumed (`on_plateau`, below), and the report says what the run can
and cannot show.

The plateau criterion (`config.plateau.threshold`, 0.005 nats; `experiments.language.plateau`):
pretraining logs the exact held-out gap of every evaluation sentence at every checkpoint, so the
decrease of the gap between consecutive checkpoints is a paired mean over the same sentences,
with a standard error over sentences. A run's plateau starts at the earliest checkpoint from which
every consecutive pair changes by less than the threshold, up or down; those checkpoints get
`on_plateau` = 1 in results.csv, the earlier ones 0, and a run whose last pair still falls or rises
by the threshold has none (the decreases are in `plateau.json` of each run). The pairs that
decide it must have a standard error below the threshold, else the study stops with an error naming
`config.plateau.threshold` and the evaluation sentences needed. The threshold is per pair of
checkpoints, so it means "per doubling of the steps" for log-spaced checkpoints; 0.005 nats lies
between the pairs of a constant-rate width-32 run that still learn (0.014-0.016 nats from 2,000
to 4,000 steps at this config's rate) and its plateau's (0.0036-0.0049 from 4,000 to 8,000,
0.0001-0.0015 from 8,000 to 16,000), each pair's standard error 0.0001-0.0002 nats (argued in
`experiments.language.plateau`; seed 2's 0.0049 shows how close the start can come to it).
The full study, whose constant-rate runs go well past the plateau, is `configs/pcfg_full.py`.

The other interventions are axes of
`sweep` too, off by default:
  * model size: `--config.sweep.widths=16,32` (`num_heads` heads each);
  * training algorithm: `--config.sweep.objectives=adamw,adversarial`: `"adversarial"` is the
    masked-LM loss minus `adversary_weight` times the validation error of a linear probe of task C
    refitted every `adversary_refit_every` steps (the choices of lambda = 1 and 25 steps are argued
    in `experiments.language.adversary`).

  python -m experiments.pretrain --config=experiments/configs/pcfg.py --workdir=runs/pcfg \\
      [--config.pretrain.objective=adversarial] [--config.model.width=32]
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The PCFG masked-LM config: a 2-layer width-32 transformer, 8,000 AdamW steps.

    One field a line, grouped by section: the config is read top to bottom, so it stays one function.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.setting = "language"  # The study setting (`experiments.training.setting.SETTINGS`).

    config.data = ml_collections.ConfigDict()
    config.data.name = "pcfg"
    config.data.data_dir = config_dict.placeholder(str)  # None: the TFDS default data dir.
    # Or "small" (the previous default: 20 words, posterior-decoded span tasks), "default" (a
    # richer grammar of that kind, about 1 nat from the optimum on a CPU budget) or "tiny" (tests).
    config.data.pcfg_config = "rooted"
    # Fresh sentences every step (a function of the seed and step), never the stored pool again.
    config.data.stream = True

    config.model = ml_collections.ConfigDict()
    config.model.family = "text_transformer"
    config.model.width = 32
    config.model.depth = 2
    config.model.num_heads = 4
    config.model.mlp_ratio = 4

    config.pretrain = ml_collections.ConfigDict()
    config.pretrain.objective = "adamw"  # adamw | adversarial: the training algorithm.
    config.pretrain.optimizer = "adamw"
    # At a constant rate (the study's schedule), 3e-3 reaches a lower and steadier plateau than
    # 6e-3: held-out gaps 0.031 / 0.016 / 0.012 / 0.010-0.012 nats at 2,000 / 4,000 / 8,000 /
    # 16,000 steps (seeds 1 and 2; paired decreases under 0.005 from 4,000 on), where 6e-3 wandered
    # at 0.014-0.031 and rose in 3 of 8 seeds (docs/pcfg_results.md, session 8). With a decaying
    # schedule 6e-3 beat 3e-3 and 1e-2 on the `small` grammar. 256 sentences is the batch the CPU
    # step is most efficient at.
    config.pretrain.learning_rate = 3e-3
    config.pretrain.weight_decay = 0.01
    # Constant after a short warmup: training on past convergence must keep moving the parameters
    # (a decayed rate would freeze them and hide the implicit bias that the study looks for).
    config.pretrain.schedule = "warmup_constant"
    config.pretrain.warmup_steps = 100
    config.pretrain.batch_size = 256
    config.pretrain.steps = 8000
    # Log-spaced, so that each pair of checkpoints is a doubling (the plateau criterion's unit).
    config.pretrain.checkpoint_steps = (2000, 4000, 8000)
    config.pretrain.log_every = 100
    # The adversarial algorithm (`experiments.language.adversary`); ignored by "adamw".
    config.pretrain.adversary_weight = 1.0
    config.pretrain.adversary_refit_every = 25
    config.pretrain.adversary_task = "c"
    config.pretrain.adversary_batch_size = 64
    config.pretrain.adversary_ridge = 1e-2

    # The study: every objective x width x depth x seed is pretrained with the settings above.
    config.sweep = ml_collections.ConfigDict()
    config.sweep.objectives = ("adamw",)
    config.sweep.widths = (32,)
    config.sweep.depths = (2,)
    config.sweep.seeds = (0, 1, 2)

    # The loss plateau (`experiments.language.plateau`): a checkpoint is on it when, from it on,
    # every consecutive pair of checkpoints changes the held-out gap by less than `threshold` nats
    # (paired over the evaluation sentences; each pair's standard error must be below it).
    config.plateau = ml_collections.ConfigDict()
    config.plateau.threshold = 0.005

    # Curvature statistics on a fixed subset of the pretraining sentences, their masks fixed too
    # (`experiments.measurement`).
    config.hessian = ml_collections.ConfigDict()
    config.hessian.seed = 0
    config.hessian.num_batches = 4
    config.hessian.batch_size = 128
    config.hessian.rtol = 0.05
    config.hessian.max_matvecs = 32
    config.hessian.trace_method = "hutchinson"
    config.hessian.fisher_samples = 16
    config.hessian.adaptive_matvecs = 20  # Adaptive sharpness tr(T H T), T = diag(|params|).
    config.hessian.fresh_probes = 32  # The trace with fresh sentences and masks per probe.
    config.hessian.top_k = 5  # With residuals (critic 3).
    config.hessian.lanczos_steps = 10
    config.hessian.block_matvecs = 10  # Per-layer traces.
    # One probe of as many steps as `lanczos_steps`: the density reuses the compiled Lanczos step.
    config.hessian.density_probes = 1
    config.hessian.density_steps = 10
    # Critic 1: the trace of task A's probe loss on 256 task sentences, no pretraining data.
    config.hessian.downstream_task = "a"
    config.hessian.downstream_examples = 256
    # Critic 1 without the pretraining data: the trace and Fisher trace on text of the grammar with
    # its rule probabilities perturbed (log-scale 1: the same sentences, other odds).
    config.hessian.other_data = True
    config.hessian.other_data_scale = 1.0

    # Linear probes of tasks A/B/C on the frozen encoder's features and on the baselines' inputs,
    # and full fine-tuning (`experiments.language.probes`).
    config.finetune = ml_collections.ConfigDict()
    config.finetune.tasks = ("a", "b", "c")
    config.finetune.probe_l2 = 1e-3  # Unused while `probe_l2_grid` is set.
    # Each probe's l2 by 3-fold cross-validation on its training sentences, every view and
    # baseline alike: standardized 400-column views want 1e-1 where one-hot tokens want 1e-3 to
    # 1e-2 (docs/pcfg_results.md, session 8), so no one fixed value is fair to both.
    config.finetune.probe_l2_grid = (1e-3, 1e-2, 1e-1)
    # The first 500 of each task's 2,000 training sentences: transfer is worth most where labels
    # are few (gains over the best baseline shrink as one-hot probes catch up with more data: at
    # 2,000 sentences by 2-4 points; docs/pcfg_results.md), and the test split stays 1,000.
    config.finetune.probe_examples = 500
    # Every probe input column centred and scaled by the train split; each baseline scored as the
    # better of raw and standardized (`experiments.language.probes`; docs/pcfg_results.md).
    config.finetune.probe_standardize = True
    # L-BFGS steps: 100 and 400 gave the same accuracies within 0.01 (docs/pcfg_results.md).
    config.finetune.probe_steps = 100
    # Full fine-tuning (encoder and head, Adam, per task and checkpoint): off in the default study,
    # which must fit in about 15 minutes on 2 CPU cores; `configs/pcfg_full.py` runs 200 steps.
    config.finetune.finetune_steps = 0
    config.finetune.finetune_batch_size = 64
    config.finetune.finetune_learning_rate = 1e-3

    # The report (`experiments.analysis.settings`): bootstrap resamples, critic 1's equivalence
    # margin (in units of Kendall's tau) and the primary tests of the paper's three interventions,
    # declared before the run; each gives one difference per seed of the trace and of the mean
    # probe accuracy, and Holm adjusts their p-values together (two here). They need 2 or more
    # seeds (the report refuses to run them on one), 6 for an exact two-sided p below 0.05: with
    # this study's 3 no result can be significant (`configs/pcfg_full.py` has 8).
    config.report = ml_collections.ConfigDict()
    config.report.num_resamples = 1000
    config.report.equivalence_margin = 0.1
    tested = {"statistic": "trace", "score": "linear_probe_acc"}
    config.report.primary_tests = (
        # Continued training: steps 4,000 and 8,000 of each run, declared rather than left to the
        # plateau criterion so that a seed whose plateau starts late still gives a difference; on
        # the rooted grammar at this rate both were on the plateau in two pilot runs (seeds 1 and
        # 2, gap decreases 0.0036 and 0.0049 nats), and results.csv's `on_plateau` says whether
        # they were.
        dict(tested, name="continued_training", kind="delta_along_steps", steps=(4000, 8000)),
    )
    return config
