"""Pretrains one configuration, resumably, with Orbax checkpoints at the configured steps.

  python -m experiments.pretrain --config=experiments/configs/digits.py --workdir=runs/digits \
      [--config.pretrain.steps=500] [--overwrite]

Rerun with the same workdir to resume; see `experiments.train` for what the workdir holds. On
several hosts, run the same command on each with the `HESSJAX_*` environment (`experiments.multihost`).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import config_utils, multihost, train
from experiments.data import tfds_data

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (created if needed).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a run of a different config found in --workdir."
)
flags.mark_flags_as_required(["config", "workdir"])

# Errors caused by the user's input, reported as one message instead of a stack trace.
_USER_ERRORS = (
    config_utils.ConfigError,
    tfds_data.UnknownDatasetError,
    tfds_data.DatasetNotPreparedError,
    train.WorkdirConfigMismatchError,
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    multihost.initialize()
    try:
        train.pretrain(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except _USER_ERRORS as error:
        sys.exit(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    app.run(main)
