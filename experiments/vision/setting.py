"""The vision setting: image classifiers pretrained on a TFDS image dataset, transferred to others.

`SETTING` (registered as `config.setting = "vision"`, `experiments.training.setting`) plugs into
the generic code:
  * data: `config.data` names a TFDS image dataset (the embedded `digits`, or any prepared one)
    and its class split (`experiments.vision.tasks`);
  * objectives: supervised and self-supervised losses (`experiments.vision.objectives`);
  * no per-step extras and no checkpoint metrics beyond the source test loss;
  * measurement: the downstream loss is a target task's cross-entropy under a fitted linear head
    (`experiments.vision.transfer.downstream_problem`; knobs `config.hessian.downstream_task`,
    `head_l2`, `head_steps`);
  * transfer: linear probe and full fine-tuning of each checkpoint (`experiments.vision.transfer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.training import models, objectives, runs, setting
from experiments.vision import objectives as vision_objectives
from experiments.vision import tasks, transfer

MEASUREMENT_SCHEMA = {
    "downstream_task": Field(str, ""),  # "": the first of `target_task_names`.
    "head_l2": Field(float, 1e-3),
    "head_steps": Field(int, 100),
}


class VisionSetting:
    """Image classification pretraining and transfer (see the module docstring)."""

    name = "vision"
    objectives = vision_objectives.OBJECTIVES
    transfer = transfer.STAGE

    def source_task(self, data_config: ml_collections.ConfigDict) -> tasks.Task:
        return tasks.source_task(data_config)

    def step_extras(
        self,
        objective: objectives.Objective,
        pretrain_config: ml_collections.ConfigDict,
        model: models.EncoderHead,
        task: setting.SourceTask,
    ) -> None:
        del objective, pretrain_config, model, task

    def checkpoint_metrics(
        self, run: runs.Run
    ) -> Callable[[models.Params, models.ModelState], dict[str, float]]:
        del run
        return lambda params, model_state: {}

    def read_measurement_settings(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        settings = config_utils.read_fields(config.hessian, MEASUREMENT_SCHEMA, "config.hessian")
        if settings["head_steps"] < 1:
            raise config_utils.ConfigError(
                f"config.hessian.head_steps must be >= 1; got {settings['head_steps']}."
            )
        return settings

    def downstream_problem(
        self,
        run: runs.Run,
        params: models.Params,
        model_state: models.ModelState,
        settings: dict[str, Any],
    ) -> setting.DownstreamProblem:
        return transfer.downstream_problem(run, params, model_state, settings)

    def derive_row(self, row: dict[str, Any]) -> None:
        del row


SETTING = VisionSetting()
