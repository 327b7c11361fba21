"""Vision transfer on the embedded digits: pretrain a CNN on digits 0-4, transfer to digits 5-9.

Pretraining only reads `seed`, `data`, `model` and `pretrain`; the study adds its own sections.
Every family knob is listed so that any of them can be overridden from the command line, e.g.
`--config.model.family=resnet --config.model.norm=none` or
`--config.pretrain.objective=contrastive`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The digits pretraining config: about 1,000 steps of SGD, a few seconds on a CPU.

    One field a line, grouped by section: the config is read top to bottom, so it stays one function.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.setting = "vision"  # The study setting (`experiments.training.setting.SETTINGS`).

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    config.data.data_dir = config_dict.placeholder(str)  # None: the TFDS default data dir.
    # Pretrain on digits 0-4; transfer ("held_out_classes") to the unseen digits 5-9.
    config.data.source_classes = (0, 1, 2, 3, 4)
    config.data.target_classes = (5, 6, 7, 8, 9)
    config.data.target_dataset = ""  # e.g. "mnist" for the "other_dataset" target task.

    config.model = ml_collections.ConfigDict()
    config.model.family = "cnn"  # mlp | cnn | resnet | vit
    config.model.width = 16
    config.model.depth = 2
    config.model.head_hidden = 0  # Hidden units of "mlp" heads; 0: the encoder width.
    config.model.norm = "batch"  # resnet: batch | none
    config.model.patch_size = 2  # vit
    config.model.num_heads = 4  # vit
    config.model.mlp_ratio = 2  # vit

    config.pretrain = ml_collections.ConfigDict()
    # cross_entropy | label_smoothing | squared_error | contrastive | denoising
    config.pretrain.objective = "cross_entropy"
    config.pretrain.optimizer = "sgd"  # sgd | adamw
    config.pretrain.learning_rate = 0.05
    config.pretrain.momentum = 0.9
    config.pretrain.weight_decay = 5e-4
    config.pretrain.schedule = "warmup_cosine"  # constant | warmup_cosine
    config.pretrain.warmup_steps = 50
    config.pretrain.batch_size = 64
    config.pretrain.steps = 1000
    # Log-spaced: the "number of training iterations" axis of the study.
    config.pretrain.checkpoint_steps = (10, 30, 100, 300, 1000)
    config.pretrain.log_every = 100
    config.pretrain.label_smoothing = 0.1
    config.pretrain.temperature = 0.5
    config.pretrain.projection_dim = 32
    config.pretrain.augment_max_shift = 1
    config.pretrain.augment_noise_std = 0.1
    config.pretrain.denoising_noise_std = 0.5

    # The study (`experiments.study`): every objective x width x depth x seed is pretrained with
    # the settings above, and each checkpoint is measured and transferred.
    config.sweep = ml_collections.ConfigDict()
    config.sweep.objectives = ("cross_entropy", "label_smoothing", "squared_error")
    config.sweep.widths = (8, 16)
    config.sweep.depths = (2,)
    # Three seeds at least: the seed is the unit of every comparison in the report.
    config.sweep.seeds = (0, 1, 2)

    # `experiments.measurement`: statistics on a fixed subset of the pretraining data.
    config.hessian = ml_collections.ConfigDict()
    config.hessian.seed = 0  # Of the subset and of every probe: the same for every checkpoint.
    config.hessian.num_batches = 2
    config.hessian.batch_size = 128
    config.hessian.rtol = 0.1  # The 5% and 1% budgets are extrapolated per checkpoint.
    config.hessian.max_matvecs = 100
    config.hessian.top_k = 5  # With residuals (critic 3).
    config.hessian.lanczos_steps = 20
    config.hessian.block_matvecs = 10
    # One probe of as many steps as `lanczos_steps`: the density then reuses the compiled Lanczos
    # step of the top eigenvalues, which on a CPU costs more than the products themselves.
    config.hessian.density_probes = 1
    config.hessian.density_steps = 20
    config.hessian.fisher_samples = 10
    config.hessian.adaptive_matvecs = 20  # Adaptive sharpness tr(T H T), T = diag(|params|).
    config.hessian.fresh_probes = 32  # The trace with a fresh minibatch per probe (critic 2).
    config.hessian.downstream_task = ""  # "": the first target task.
    config.hessian.head_l2 = 1e-3
    config.hessian.head_steps = 100
    # Critic 1 without the pretraining data: the Fisher trace on the target task's images.
    config.hessian.other_data = True

    # `experiments.vision.transfer`: linear probe and full fine-tuning on every target task.
    config.finetune = ml_collections.ConfigDict()
    config.finetune.tasks = ()  # (): every target task of `config.data`.
    config.finetune.k_shots = (0, 10)  # Examples per class; 0: the whole training split.
    config.finetune.seeds = (0, 1)
    config.finetune.probe_l2 = 1e-3
    config.finetune.probe_steps = 100
    config.finetune.optimizer = "adamw"
    config.finetune.learning_rate = 1e-3
    config.finetune.weight_decay = 0.0
    config.finetune.schedule = "constant"
    config.finetune.steps = 100
    config.finetune.batch_size = 64

    # The report (`experiments.analysis.settings`): bootstrap resamples, critic 1's equivalence
    # margin (in units of Kendall's tau) and the primary tests, declared before the run. Each
    # gives one difference per seed of the trace and of the linear-probe accuracy; Holm adjusts
    # the six p-values together. With 3 seeds no exact test can go below p = 0.25.
    config.report = ml_collections.ConfigDict()
    config.report.num_resamples = 1000
    config.report.equivalence_margin = 0.1
    tested = {"statistic": "trace", "score": "linear_probe_acc"}
    config.report.primary_tests = (
        # Continued training: the last two checkpoints, where the learning rate decays to 0.
        dict(
            tested,
            name="continued_training",
            kind="delta_along_steps",
            steps=(300, 1000),
            where={"objective": "cross_entropy"},
        ),
        # Model size, every objective (a seed's differences are averaged over the objectives).
        dict(tested, name="size", kind="paired_difference", axis="width", levels=(8, 16)),
        # The objective: label smoothing transfers worse than cross-entropy (Kornblith et al.,
        # "Why do better loss functions lead to less transferable features?", NeurIPS 2021).
        dict(
            tested,
            name="objective",
            kind="paired_difference",
            axis="objective",
            levels=("cross_entropy", "label_smoothing"),
        ),
    )
    return config
