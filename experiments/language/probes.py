"""The language setting's transfer stage: linear probes of the span tasks on frozen features.

For each task of `config.finetune.tasks` (A, B, C: `experiments.language.span_tasks.TASKS`), a multinomial
logistic regression (`heads.fit_logistic`) is fitted on the frozen encoder's features averaged
over the task's span (`features.span_features`) of `task_<task>_train`, and scored on
`task_<task>_test`: `linear_probe_acc/<task>`, whose mean is the row's `linear_probe_acc`
(`LanguageSetting.derive_row`).

The downstream loss of the measurement stage (`downstream_problem`, critic 1) is one task's probe
cross-entropy on its first `downstream_examples` training sentences, differentiated over every
parameter, encoder and probe together.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import optax

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.language import features
from experiments.training import evaluation, heads, models, runs, setting

SCHEMA = {
    "tasks": Field((tuple, list), ("a", "b", "c")),  # A list after the config's JSON round trip.
    "probe_l2": Field(float, 1e-3),
    "probe_steps": Field(int, 25),
}
# The measurement stage's knobs of the downstream loss (`config.hessian`).
MEASUREMENT_SCHEMA = {
    "downstream_task": Field(str, "a"),
    "downstream_examples": Field(int, 256),
}


def read_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.finetune` knobs of the probes, with defaults."""
    return config_utils.read_fields(
        config.get("finetune", ml_collections.ConfigDict()), SCHEMA, "config.finetune"
    )


def _span_encoder(run: runs.Run) -> Any:
    """The jitted span features of the run's model, one compiled function per model."""
    return evaluation.shared_function(
        ("span_features", run.model),
        lambda: jax.jit(
            lambda p, tokens, spans: features.span_features(run.model, p, tokens, spans)
        ),
    )


def fit_probe(
    run: runs.Run, params: models.Params, settings: dict[str, Any], task: str
) -> heads.LinearHead:
    """The logistic-regression probe of `task` fitted to the frozen features of its train split."""
    split = run.task.splits[f"task_{task}_train"]
    return heads.fit_logistic(
        _span_encoder(run)(params, split["tokens"], split["span"]),
        split["label"],
        run.task.grammar.num_labels,
        l2=settings["probe_l2"],
        steps=settings["probe_steps"],
    )


def score(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None,
) -> dict[str, float]:
    """Test accuracy of a probe of each task: `linear_probe_acc/<task>` (the transfer stage)."""
    del model_state, output_dir  # No normalization statistics; no files.
    accuracies = {}
    for task in settings["tasks"]:
        test_split = run.task.splits[f"task_{task}_test"]
        test_features = _span_encoder(run)(params, test_split["tokens"], test_split["span"])
        head = fit_probe(run, params, settings, task)
        accuracies[f"linear_probe_acc/{task}"] = head.accuracy(test_features, test_split["label"])
    return accuracies


STAGE = setting.CheckpointStage("probe", read_settings, score, ("linear_probe_acc",))


def _probe_loss(run: runs.Run) -> Any:
    """`loss(params, batch)`: the probe's mean cross-entropy on span features, one per model."""

    def build() -> Any:
        def loss(params: dict[str, Any], batch: dict[str, jax.Array]) -> jax.Array:
            span = features.span_features(run.model, params["model"], batch["tokens"], batch["span"])
            logits = params["head"].apply(span)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        return loss

    return evaluation.shared_function(("span_probe_loss", run.model), build)


def read_measurement_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The downstream-loss knobs (`config.hessian`) and the probes' (`config.finetune`)."""
    settings = {
        **config_utils.read_fields(config.hessian, MEASUREMENT_SCHEMA, "config.hessian"),
        **read_settings(config),
    }
    config_utils.choose(
        settings["downstream_task"], dict.fromkeys(settings["tasks"]), "config.hessian.downstream_task"
    )
    if settings["downstream_examples"] < 1:
        raise config_utils.ConfigError(
            "config.hessian.downstream_examples must be >= 1; got "
            f"{settings['downstream_examples']}."
        )
    return settings


def downstream_problem(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
) -> setting.DownstreamProblem:
    """The probe loss of `downstream_task` on its first `downstream_examples` train sentences."""
    del model_state
    task = settings["downstream_task"]
    split = run.task.splits[f"task_{task}_train"]
    count = min(settings["downstream_examples"], len(split["label"]))
    batch = {name: split[name][None, :count] for name in ("tokens", "span", "label")}
    head = fit_probe(run, params, settings, task)
    both = {"model": params, "head": jax.tree.map(jax.numpy.asarray, head)}
    return setting.DownstreamProblem(_probe_loss(run), both, batch)
