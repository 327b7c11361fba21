"""Transfer scores of every checkpoint of a pretraining run (the setting's transfer stage).

  python -m experiments.finetune --workdir=RUN [--config=experiments/configs/NAME.py]

Without `--config`, the run's saved config. The vision setting fits a linear probe and fine-tunes
the whole model on each target task (`experiments.vision.transfer`); the language setting fits a
linear probe of each span task (`experiments.language.probes`). Results go to
`RUN/jobs/<stage>/step<N>.json`; a rerun skips finished checkpoints.
"""

from experiments.core import binaries
from experiments.sweep import study
from experiments.training import runs, setting

_CONFIG = binaries.define_config_flag()
_WORKDIR = binaries.define_workdir_flag("The pretraining run's workdir.")


def _transfer() -> None:
    config = _CONFIG.value or runs.load_config(_WORKDIR.value)
    study.run_stage(setting.of_config(config).transfer, _WORKDIR.value, _CONFIG.value)


if __name__ == "__main__":
    binaries.run(_transfer)
