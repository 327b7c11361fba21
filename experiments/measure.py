"""Curvature statistics of every checkpoint of a pretraining run (the measurement stage).

  python -m experiments.measure --workdir=RUN [--config=experiments/configs/NAME.py]

Without `--config`, the run's saved config (its `hessian` section sets the knobs). Results go to
`RUN/jobs/measure/step<N>.json` and densities to `RUN/hessian/step<N>/density.npz`; a rerun skips
finished checkpoints. What is measured: `experiments.measurement.stage`.
"""

from experiments.core import binaries
from experiments.measurement import stage
from experiments.sweep import study

_CONFIG = binaries.define_config_flag()
_WORKDIR = binaries.define_workdir_flag("The pretraining run's workdir.")

if __name__ == "__main__":
    binaries.run(lambda: study.run_stage(stage.STAGE, _WORKDIR.value, _CONFIG.value))
