"""The `Setting` interface and its registry: what a study setting plugs into the generic code.

A setting (images, masked-LM language, ...) is one package under `experiments/` with a module
that defines `SETTING`, an object with the members of `Setting`. The generic code — the training
loop (`experiments.training.train`), the measurement stage (`experiments.measurement`), the study
(`experiments.sweep`), jobs, checkpoints and the report — only ever calls these members, and
finds the setting by the one config field `config.setting` through `SETTINGS`, which names each
setting's module without importing it. Adding a setting is its own folder plus one line here.

What a setting supplies:
  * `source_task(config.data)`: the pretraining data (`SourceTask`);
  * `objectives`: its objectives or training algorithms by name (`config.pretrain.objective`);
  * `step_extras(...)`: a term added to the training loss whose state is updated outside the
    compiled step (the language setting's adversary), or None;
  * `checkpoint_metrics(run)`: metrics logged at each checkpoint beside the source test loss
    (e.g. the exact gap to the optimal loss, as `loss_gap` and `loss_gap_stderr`; numbers become
    results columns, lists are logged only: the language setting's per-sentence gaps);
  * `read_measurement_settings(config)` and `downstream_problem(...)`: which downstream loss and
    data the measurement stage differentiates (critic 1: curvature without the pretraining data);
  * `transfer`: its per-checkpoint transfer stage (`CheckpointStage`), and `derive_row`, which
    completes a results row from its cells;
  * `derive_run(...)`: completes the rows of one run from its checkpoints' logged metrics (the
    language setting's `on_plateau`), and `check_config(config)`, which checks its settings
    before a study runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import ml_collections

from experiments.core import config_utils
from experiments.training import models, objectives

if TYPE_CHECKING:
    from experiments.training.runs import Run

# Setting name (`config.setting`) -> the module that defines its `SETTING`.
SETTINGS = {
    "vision": "experiments.vision.setting",
    "language": "experiments.language.setting",
}


class SourceTask(Protocol):
    """The pretraining data of a setting.

    Attributes:
      name: a readable description, e.g. `"digits[0, 1, 2, 3, 4]"`.
      train: the pretraining examples.
      test: the held-out examples of the source test loss.
      num_classes: the outputs of a classifier over its labels (the vocabulary for a masked LM).
      input_shape: the shape of one input example.
      input_vocab_size: the number of token ids of token inputs; 0 for images.
    """

    name: str
    train: objectives.BatchSource
    test: objectives.BatchSource

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def input_vocab_size(self) -> int: ...


class StepExtras(Protocol):
    """A term added to the training loss, with state updated between compiled steps.

    The training loop calls, at every step, `state = update(step, params, state)` and then the
    compiled step on the batch plus `{"extras_state": state, "extras_batch": batch(seed, step)}`,
    whose loss adds `penalty(params, state, extras_batch)`. The state is checkpointed with the
    run (item `step_extras`), so a resumed run continues exactly.
    """

    def init(self, params: models.Params) -> Any:
        """The state at step 0."""

    def update(self, step: int, params: models.Params, state: Any) -> Any:
        """The state for training step `step`, before the step runs."""

    def batch(self, seed: int, step: int) -> dict[str, Any]:
        """The extra inputs of step `step`, a function of `(seed, step)` only."""

    def penalty(self, params: models.Params, state: Any, batch: Mapping[str, Any]) -> jax.Array:
        """The term added to the loss; traceable."""


class DownstreamProblem(NamedTuple):
    """A downstream loss whose Hessian the measurement stage estimates.

    Attributes:
      loss_fn: `loss_fn(params, batch) -> scalar`.
      params: the parameters it is differentiated in (e.g. the encoder with a fitted head).
      batches: the batches, stacked on a leading axis (`hessjax.dataset_hvp_fn`).
    """

    loss_fn: objectives.LossFn
    params: Any
    batches: Any


class OtherData(NamedTuple):
    """Data of another distribution than the pretraining data's (critic 1).

    Attributes:
      description: what the data is, in words (logged and reported).
      source: an `objectives.BatchSource` of it.
      objective: the objective that cuts its batches (`objectives.stacked_batches`).
      pretraining_loss: whether those batches fit the pretraining loss, so that its Hessian trace
        can be measured on them (`trace_other_data`); the label-free Fisher trace with the model's
        own samples (`fisher_trace_other_data`) needs only their `inputs`.
    """

    description: str
    source: Any
    objective: objectives.Objective
    pretraining_loss: bool

@dataclasses.dataclass(frozen=True)
class CheckpointStage:
    """A stage run once per checkpoint after pretraining (one job each).

    Attributes:
      name: the stage, the first segment of its job ids.
      read_settings: `config -> settings`, validated once per study.
      score: `(run, params, model_state, settings, output_dir) -> job result` (table cells, and a
        `nan_reason` mapping for NaN cells); `output_dir` is where the checkpoint's files go (None:
        nowhere).
      failure_columns: the cells left NaN, with the failure as the reason, when the job fails.
    """

    name: str
    read_settings: Callable[[ml_collections.ConfigDict], dict[str, Any]]
    score: Callable[
        [Run, models.Params, models.ModelState, dict[str, Any], pathlib.Path | None], dict[str, Any]
    ]
    failure_columns: tuple[str, ...]


class Setting(Protocol):
    """What a study setting supplies to the generic code (see the module docstring).

    Attributes:
      name: its registry name, the value of `config.setting`.
      objectives: objective name (`config.pretrain.objective`) -> factory.
      transfer: its per-checkpoint transfer stage.
    """

    name: str
    objectives: Mapping[str, objectives.ObjectiveFactory]
    transfer: CheckpointStage

    def source_task(self, data_config: ml_collections.ConfigDict) -> SourceTask:
        """The pretraining task of `config.data` (built into the data dir on first use)."""

    def step_extras(
        self,
        objective: objectives.Objective,
        pretrain_config: ml_collections.ConfigDict,
        model: models.EncoderHead,
        task: SourceTask,
    ) -> StepExtras | None:
        """The extra training term of `objective`, or None."""

    def checkpoint_metrics(
        self, run: Run
    ) -> Callable[[models.Params, models.ModelState], dict[str, Any]]:
        """Metrics of a checkpoint logged beside the source test loss (may return `{}`)."""

    def read_measurement_settings(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The setting's own knobs of the measurement stage, validated."""

    def downstream_problem(
        self,
        run: Run,
        params: models.Params,
        model_state: models.ModelState,
        settings: dict[str, Any],
    ) -> DownstreamProblem:
        """The downstream loss and data of a checkpoint (critic 1)."""

    def other_data(self, run: Run, settings: dict[str, Any]) -> OtherData | None:
        """Data of another distribution for critic 1 (`config.hessian.other_data`), or None."""

    def embed(self, params: models.Params, like: Any) -> models.Params | None:
        """`params` embedded into the wider architecture of `like` (its parameters' shapes)
        without changing the model's function (`config.hessian.embed_width`), or None when the
        setting has no such embedding."""

    def derive_row(self, row: dict[str, Any]) -> None:
        """Completes a results row in place once every stage's cells are in."""

    def derive_run(
        self,
        rows: list[dict[str, Any]],
        records: dict[int, dict[str, Any]],
        config: ml_collections.ConfigDict,
        run_dir: pathlib.Path,
    ) -> None:
        """Completes the rows of one run (one per checkpoint, after `derive_row`) from what
        pretraining logged at its checkpoints (`records`: step -> metrics, arrays included), e.g.
        which checkpoints are on the loss plateau (`on_plateau`)."""

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Refuses, before a study's jobs run, settings of `derive_run` that cannot work (raises
        `ConfigError` naming the field)."""


class SettingDefaults:
    """The members of `Setting` that most settings leave as they are: no per-step extras, no
    checkpoint metrics beyond the source test loss, rows complete as the stages fill them."""

    def step_extras(
        self,
        objective: objectives.Objective,
        pretrain_config: ml_collections.ConfigDict,
        model: models.EncoderHead,
        task: SourceTask,
    ) -> StepExtras | None:
        del objective, pretrain_config, model, task
        return None

    def checkpoint_metrics(
        self, run: Run
    ) -> Callable[[models.Params, models.ModelState], dict[str, float]]:
        del run
        return lambda params, model_state: {}

    def other_data(self, run: Run, settings: dict[str, Any]) -> OtherData | None:
        del run, settings
        return None

    def embed(self, params: models.Params, like: Any) -> models.Params | None:
        del params, like
        return None

    def derive_row(self, row: dict[str, Any]) -> None:
        del row

    def derive_run(
        self,
        rows: list[dict[str, Any]],
        records: dict[int, dict[str, Any]],
        config: ml_collections.ConfigDict,
        run_dir: pathlib.Path,
    ) -> None:
        del rows, records, config, run_dir

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        del config


def get(name: str) -> Setting:
    """The setting registered as `name`.

    Raises:
      ConfigError: `name` is not registered (the message lists the registered settings).
    """
    module = config_utils.choose(name, SETTINGS, "config.setting")
    return importlib.import_module(module).SETTING


def of_config(config: ml_collections.ConfigDict) -> Setting:
    """The setting of `config.setting`."""
    name = config_utils.read_fields(config, {"setting": config_utils.Field(str)}, "config")
    return get(name["setting"])
