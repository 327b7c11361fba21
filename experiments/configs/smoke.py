"""A tiny `digits.py` for tests: small MLPs, 60 steps; the whole study in well under a minute."""

import ml_collections

from experiments.configs import digits


def get_config() -> ml_collections.ConfigDict:
    """The digits config shrunk to run in seconds."""
    config = digits.get_config()
    config.model.family = "mlp"
    config.model.width = 16
    config.model.depth = 1
    config.pretrain.batch_size = 32
    config.pretrain.warmup_steps = 5
    config.pretrain.steps = 60
    config.pretrain.checkpoint_steps = (0, 5, 20)
    config.pretrain.log_every = 20

    config.sweep.objectives = ("cross_entropy", "squared_error")
    config.sweep.widths = (16,)
    config.sweep.depths = (1,)
    config.sweep.seeds = (0,)  # One seed: the report's comparisons say "needs >= 2 seeds".
    config.hessian.num_batches = 2
    config.hessian.batch_size = 64
    config.hessian.max_matvecs = 20
    config.hessian.top_k = 3
    config.hessian.lanczos_steps = 8
    config.hessian.adaptive_matvecs = 4
    config.hessian.fresh_probes = 4
    config.hessian.block_matvecs = 4
    config.hessian.density_probes = 1
    config.hessian.density_steps = 8
    config.hessian.fisher_samples = 4
    config.hessian.head_steps = 20
    # Off: the stored smoke results predate it (`tests/experiments/test_hessian_stage.py` measures it).
    config.hessian.other_data = False
    config.finetune.k_shots = (0,)
    config.finetune.seeds = (0,)
    config.finetune.probe_steps = 20
    config.finetune.steps = 10
    config.report.num_resamples = 100
    config.report.primary_tests = ()  # Every primary test compares seeds; the smoke study has one.
    return config
