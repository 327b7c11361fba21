"""The vision setting: image classifiers pretrained on a TFDS image dataset, transferred to others.

`SETTING` (registered as `config.setting = "vision"`, `experiments.training.setting`) plugs into
the generic code:
  * data: `config.data` names a TFDS image dataset (the embedded `digits`, or any prepared one)
    and its class split (`experiments.vision.tasks`);
  * objectives: supervised and self-supervised losses (`experiments.vision.objectives`);
  * no per-step extras and no checkpoint metrics beyond the source test loss;
  * measurement: the downstream loss is a target task's cross-entropy under a fitted linear head
    (`experiments.vision.transfer.downstream_problem`; knobs `config.hessian.downstream_task`,
    `head_l2`, `head_steps`); critic 1's other distribution is that task's images
    (`experiments.vision.transfer.other_data`);
  * transfer: linear probe and full fine-tuning of each checkpoint (`experiments.vision.transfer`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.training import setting
from experiments.vision import objectives as vision_objectives
from experiments.vision import tasks
from experiments.vision import transfer as vision_transfer

MEASUREMENT_SCHEMA = {
    "downstream_task": Field(str, ""),  # "": the first of `target_task_names`.
    "head_l2": Field(float, 1e-3),
    "head_steps": Field(int, 100),
}


class VisionSetting(setting.SettingDefaults):
    """Image classification pretraining and transfer (see the module docstring)."""

    name = "vision"
    objectives = vision_objectives.OBJECTIVES
    transfer = vision_transfer.STAGE

    source_task = staticmethod(tasks.source_task)
    downstream_problem = staticmethod(vision_transfer.downstream_problem)
    other_data = staticmethod(vision_transfer.other_data)

    def read_measurement_settings(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        settings = config_utils.read_fields(config.hessian, MEASUREMENT_SCHEMA, "config.hessian")
        if settings["head_steps"] < 1:
            raise config_utils.ConfigError(
                f"config.hessian.head_steps must be >= 1; got {settings['head_steps']}."
            )
        return settings


SETTING = VisionSetting()
