"""Pretrains one configuration, resumably, with Orbax checkpoints at the configured steps.

  python -m experiments.pretrain --config=experiments/configs/digits.py --workdir=runs/digits \
      [--config.pretrain.steps=500] [--overwrite]

Rerun with the same workdir to resume; see `experiments.training.train` for what the workdir
holds. On several hosts, run the same command on each with the `HESSJAX_*` environment
(`experiments.core.multihost`).
"""

from absl import flags

from experiments.core import binaries
from experiments.training import train

_CONFIG = binaries.define_config_flag()
_WORKDIR = binaries.define_workdir_flag("Directory of the run (created if needed).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a run of a different config found in --workdir."
)
flags.mark_flags_as_required(["config"])

if __name__ == "__main__":
    binaries.run(lambda: train.pretrain(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value))
