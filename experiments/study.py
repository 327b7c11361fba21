"""The transfer study, end to end: pretrain -> measure -> transfer -> results and report.

  python -m experiments.study --workdir=DIR [--config=experiments/configs/NAME.py]

Without `--config` it runs `configs/pcfg.py`, the paper's language setting; `configs/digits.py`
is the image setting, `configs/smoke.py` a quick check of the pipeline. Rerunning the same
command resumes where a killed run stopped (`experiments.sweep.study`).
"""

import pathlib

from experiments.core import binaries
from experiments.sweep import study

# The default study is the paper's language setting (`--config=experiments/configs/digits.py` for
# the image one).
_CONFIG = binaries.define_config_flag(str(pathlib.Path(__file__).parent / "configs" / "pcfg.py"))
_WORKDIR = binaries.define_workdir_flag("The study's directory (created if needed).")

if __name__ == "__main__":
    binaries.run(
        lambda: study.run_study(
            _CONFIG.value, _WORKDIR.value, default_parallel=study.default_parallel()
        )
    )
