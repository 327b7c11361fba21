"""Vision transfer on the embedded digits: pretrain a CNN on digits 0-4, transfer to digits 5-9.

Pretraining only reads `seed`, `data`, `model` and `pretrain`; the study adds its own sections.
Every family knob is listed so that any of them can be overridden from the command line, e.g.
`--config.model.family=resnet --config.model.norm=none` or
`--config.pretrain.objective=contrastive`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The digits pretraining config: about 1,000 steps of SGD, a few seconds on a CPU."""
    config = ml_collections.ConfigDict()
    config.seed = 0

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
    return config
