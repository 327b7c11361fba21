"""A tiny version of `digits.py` for tests: a small MLP, 60 steps, a few seconds end to end."""

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
    return config
