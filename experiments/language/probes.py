"""The language setting's transfer stage: probes, baselines and fine-tuning of the span tasks.

For each task of `config.finetune.tasks` (A, B, C of the dataset's task module), every checkpoint
gets:
  * linear probes (`heads.fit_logistic`) on the frozen encoder's features of `task_<task>_train`,
    scored on `task_<task>_test`, in each view of `features.VIEWS`: `linear_probe_<task>_acc` on
    the primary view (every position's features concatenated, as in Liu et al.'s release) and
    `linear_probe_mean_<task>_acc` on the features averaged over the task's span, and
    `linear_probe_masked_<task>_acc` on the masked-LM's predictions at every position;
  * the same probe on inputs that need no pretraining, the baselines a probe score means nothing
    without: the raw input as position-wise one-hot tokens (`baseline_onehot_<task>_acc`), a bag
    of words (`baseline_bow_<task>_acc`) and the run's own encoder at initialisation, before any
    training (`baseline_random_<task>_acc`, primary view). They do not depend on the checkpoint,
    so they are computed once per run (per dataset for the first two) and reused;
  * with `finetune_steps > 0`, full fine-tuning of encoder and head (`finetune_<task>_acc`,
    `experiments.language.finetune`).

With `config.finetune.probe_standardize`, every probe input column is centred and scaled by the
task's train split first (the masked view's log-probabilities span tens of nats, so an L2 penalty
on raw columns mostly shrinks the rare words' weights), and each baseline is scored as the better
of its raw and standardized fits, chosen on the test split, in the baseline's favour: on the
`rooted` grammar standardizing one-hot tokens or a bag of words changed their accuracy by -5.5 to
+1.1 points, never helping them by more than 1.1 (docs/pcfg_results.md).

`LanguageSetting.derive_row` adds the means over tasks (`linear_probe_acc`, `finetune_acc`,
`linear_probe_mean_acc`, `linear_probe_masked_acc`) and the gain of every view's probe over the
best baseline (`linear_probe_<task>_gain`, mean `linear_probe_gain`; `linear_probe_mean_...`,
`linear_probe_masked_...`).

The probes train on the first `probe_examples` sentences of each task's train split (500 in
`configs/pcfg.py`: transfer is worth most where labels are few), each with its l2 penalty chosen
from `probe_l2_grid` by 3-fold cross-validation on those sentences, for every view and baseline
alike (standardized views of hundreds of columns want a stronger penalty than one-hot tokens, so
one fixed value would favour one side).

The downstream loss of the measurement stage (`downstream_problem`, critic 1) is one task's
primary-view probe cross-entropy on its first `downstream_examples` training sentences,
differentiated over every parameter, encoder and probe together.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from experiments.core import config_utils
from experiments.core.config_utils import Field
from experiments.language import features, finetune
from experiments.training import evaluation, heads, models, runs, setting

SCHEMA = {
    "tasks": Field((tuple, list), ("a", "b", "c")),  # A list after the config's JSON round trip.
    "probe_l2": Field(float, 1e-3),
    # Non-empty: each probe's l2 is the value of this grid with the best 3-fold cross-validated
    # accuracy on its train split, for every view and baseline alike (`probe_l2` unused).
    "probe_l2_grid": Field((tuple, list), ()),
    # The probes' training sentences: the first this many of each task's train split (0: all).
    "probe_examples": Field(int, 0),
    # Standardize each probe input column by the train split's mean and spread (the baselines get
    # the better of raw and standardized): see the module docstring.
    "probe_standardize": Field(bool, False),
    "probe_steps": Field(int, 25),
    "finetune_steps": Field(int, 0),  # 0: no fine-tuning (`finetune_*` cells stay empty).
    "finetune_batch_size": Field(int, 64),
    "finetune_learning_rate": Field(float, 1e-3),
}
# The measurement stage's knobs of the downstream loss (`config.hessian`).
MEASUREMENT_SCHEMA = {
    "downstream_task": Field(str, "a"),
    "downstream_examples": Field(int, 256),
    # Critic 1's other text (`config.hessian.other_data`): the grammar with every rule probability
    # multiplied by exp(scale * z), z standard normal (`grammar.perturbed_grammar`).
    "other_data_scale": Field(float, 1.0),
}
BASELINES = ("onehot", "bow", "random")
_PRIMARY_CELL = re.compile(r"linear_probe_([^_]+)_acc")  # A task's primary probe score.
# The probes whose gain over the best baseline and mean over tasks a row gets: every view's
# (`features.VIEWS`).
_GAIN_PREFIXES = ("linear_probe", "linear_probe_mean", "linear_probe_masked")


def read_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.finetune` knobs of the probes, with defaults."""
    settings = config_utils.read_fields(
        config.get("finetune", ml_collections.ConfigDict()), SCHEMA, "config.finetune"
    )
    grid = settings["probe_l2_grid"] = tuple(settings["probe_l2_grid"])
    if not all(isinstance(l2, (int, float)) and l2 > 0 for l2 in grid):
        raise config_utils.ConfigError(
            f"config.finetune.probe_l2_grid must list penalties > 0 (or be empty); got {grid}."
        )
    minimums = (("probe_steps", 1), ("finetune_steps", 0), ("finetune_batch_size", 1), ("probe_examples", 0))
    for name, minimum in minimums:
        if settings[name] < minimum:
            raise config_utils.ConfigError(
                f"config.finetune.{name} must be >= {minimum}; got {settings[name]}."
            )
    return settings


def _encoder(run: runs.Run, view: str) -> Any:
    """The jitted features of one view of the run's model, one compiled function per model."""
    function = features.VIEWS[view]
    mask_id = run.task.grammar.mask_id
    return evaluation.shared_function(
        ("probe_features", view, run.model, mask_id),
        lambda: jax.jit(lambda p, tokens, spans: function(run.model, p, tokens, spans, mask_id)),
    )


def _split(run: runs.Run, task: str, part: str, examples: int = 0) -> dict[str, np.ndarray]:
    """A task split; of a train split, its first `examples` sentences (0: all)."""
    split = run.task.splits[f"task_{task}_{part}"]
    if part != "train" or not examples:
        return split
    count = len(split["label"])
    if examples > count:
        raise config_utils.ConfigError(
            f"config.finetune.probe_examples = {examples} exceeds the {count} sentences of "
            f"task_{task}_train."
        )
    return {name: values[:examples] for name, values in split.items()}


def _train_split(run: runs.Run, task: str, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    return _split(run, task, "train", settings["probe_examples"])


def _cross_validated_l2(
    inputs: np.ndarray, labels: np.ndarray, num_classes: int, settings: dict[str, Any]
) -> float:
    """The penalty of `probe_l2_grid` with the best mean accuracy over 3 contiguous folds (the
    first on ties)."""
    folds = np.array_split(np.arange(len(labels)), 3)

    def accuracy(l2: float, held: np.ndarray) -> float:
        kept = np.setdiff1d(np.arange(len(labels)), held)
        head = heads.fit_logistic(
            inputs[kept], labels[kept], num_classes, l2=l2, steps=settings["probe_steps"]
        )
        return head.accuracy(inputs[held], labels[held])

    scores = [np.mean([accuracy(l2, held) for held in folds]) for l2 in settings["probe_l2_grid"]]
    return float(settings["probe_l2_grid"][int(np.argmax(scores))])


def _fit(features_of: Any, run: runs.Run, settings: dict[str, Any], task: str) -> heads.LinearHead:
    split = _train_split(run, task, settings)
    # Classes up to the largest label of the task (a fit costs time in proportion to them).
    labels = np.concatenate([_split(run, task, "train")["label"], _split(run, task, "test")["label"]])
    num_classes = int(labels.max()) + 1
    inputs = np.asarray(features_of(split), np.float64)
    l2 = settings["probe_l2"]
    if settings["probe_l2_grid"]:
        l2 = _cross_validated_l2(inputs, split["label"], num_classes, settings)
    return heads.fit_logistic(inputs, split["label"], num_classes, l2=l2, steps=settings["probe_steps"])


def _standardized(features_of: Any, run: runs.Run, task: str, settings: dict[str, Any]) -> Any:
    """`features_of` with every column centred and scaled by the task's train split (a constant
    column becomes 0)."""
    train = np.asarray(features_of(_train_split(run, task, settings)), np.float64)
    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return lambda split: (np.asarray(features_of(split), np.float64) - mean) / scale


def _probe_accuracy(
    features_of: Any, run: runs.Run, settings: dict[str, Any], task: str, standardize: bool
) -> float:
    """Test accuracy of a probe fitted to `features_of(split)` of the task's train split, each
    column standardized by the train split's statistics when `standardize`."""
    if standardize:
        features_of = _standardized(features_of, run, task, settings)
    test = _split(run, task, "test")
    return _fit(features_of, run, settings, task).accuracy(features_of(test), test["label"])


def _baseline_accuracy(
    features_of: Any, run: runs.Run, settings: dict[str, Any], task: str
) -> float:
    """A baseline's probe accuracy: with `probe_standardize`, the better of its raw and
    standardized inputs (on the test split: in the baseline's favour, so the gain is conservative)."""
    kinds = (False, True) if settings["probe_standardize"] else (False,)
    return max(_probe_accuracy(features_of, run, settings, task, kind) for kind in kinds)


def _encoded(run: runs.Run, params: models.Params, view: str) -> Any:
    return lambda split: np.asarray(_encoder(run, view)(params, split["tokens"], split["span"]))


def fit_probe(
    run: runs.Run, params: models.Params, settings: dict[str, Any], task: str
) -> heads.LinearHead:
    """The primary-view logistic-regression probe of `task` fitted to its train split."""
    return _fit(_encoded(run, params, features.PRIMARY_VIEW), run, settings, task)


def _probe_settings_key(run: runs.Run, settings: dict[str, Any]) -> str:
    names = ("tasks", "probe_l2", "probe_steps", "probe_standardize", "probe_l2_grid", "probe_examples")
    probe = {name: settings[name] for name in names}
    return json.dumps([run.task.name, run.config.data.to_json(sort_keys=True), probe])


def baselines(run: runs.Run, settings: dict[str, Any]) -> dict[str, float]:
    """`baseline_<kind>_<task>_acc` of every task: probes of one-hot tokens, a bag of words and
    the run's encoder at initialisation; computed once per dataset (and run) and reused."""
    vocab = run.task.input_vocab_size
    inputs = {
        "onehot": lambda split: features.one_hot_tokens(split["tokens"], vocab),
        "bow": lambda split: features.bag_of_words(split["tokens"], vocab),
    }
    key = _probe_settings_key(run, settings)

    def of_inputs() -> dict[str, float]:
        return {
            f"baseline_{kind}_{task}_acc": _baseline_accuracy(inputs[kind], run, settings, task)
            for kind in inputs
            for task in settings["tasks"]
        }

    def of_initialisation() -> dict[str, float]:
        initial, _ = run.init()
        encoded = _encoded(run, initial, features.PRIMARY_VIEW)
        return {
            f"baseline_random_{task}_acc": _baseline_accuracy(encoded, run, settings, task)
            for task in settings["tasks"]
        }

    return {
        **evaluation.shared_function(("language_input_baselines", key), of_inputs),
        **evaluation.shared_function(
            ("language_random_baseline", key, run.model, run.seed), of_initialisation
        ),
    }


def score(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None,
) -> dict[str, float]:
    """Every transfer score of a checkpoint and the run's baselines (see the module docstring)."""
    del model_state, output_dir  # No normalization statistics; no files.
    start = time.perf_counter()
    result = {}
    for task in settings["tasks"]:
        for view in features.VIEWS:
            name = "linear_probe" if view == features.PRIMARY_VIEW else f"linear_probe_{view}"
            encoded = _encoded(run, params, view)
            result[f"{name}_{task}_acc"] = _probe_accuracy(
                encoded, run, settings, task, settings["probe_standardize"]
            )
        if settings["finetune_steps"]:
            result[f"finetune_{task}_acc"] = finetune.fine_tune(run, params, settings, task)
    result.update(baselines(run, settings))
    result["seconds_probe"] = time.perf_counter() - start
    return result


def derive_row(row: dict[str, Any]) -> None:
    """Adds the means over tasks and the primary probe's gain over the best baseline of each task
    (`linear_probe_<task>_gain`, mean `linear_probe_gain`) to a results row."""
    # (`linear_probe_mean_acc` is the mean view's mean over tasks, not a task "mean".)
    tasks = sorted(
        match[1]
        for name in row
        if (match := _PRIMARY_CELL.fullmatch(name)) and match[1] not in features.VIEWS
    )
    for prefix in _GAIN_PREFIXES:
        gains = []
        for task in tasks:
            others = [row.get(f"baseline_{kind}_{task}_acc") for kind in BASELINES]
            score_cell = row.get(f"{prefix}_{task}_acc")
            if score_cell is not None and all(other is not None for other in others):
                gains.append(score_cell - max(others))
                row[f"{prefix}_{task}_gain"] = gains[-1]
        if tasks and len(gains) == len(tasks):
            row[f"{prefix}_gain"] = sum(gains) / len(gains)
    for prefix in (*_GAIN_PREFIXES, "finetune"):
        cells = [row.get(f"{prefix}_{task}_acc") for task in tasks]
        if tasks and all(cell is not None for cell in cells):
            row[f"{prefix}_acc"] = sum(cells) / len(cells)


STAGE = setting.CheckpointStage("probe", read_settings, score, ("linear_probe_acc",))


def _probe_loss(run: runs.Run) -> Any:
    """`loss(params, batch)`: the probe's mean cross-entropy on primary-view features."""
    view = features.VIEWS[features.PRIMARY_VIEW]

    def build() -> Any:
        def loss(params: dict[str, Any], batch: dict[str, jax.Array]) -> jax.Array:
            encoded = view(run.model, params["model"], batch["tokens"], batch["span"])
            logits = params["head"].apply(encoded)
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
    if not settings["other_data_scale"] > 0:
        raise config_utils.ConfigError(
            f"config.hessian.other_data_scale must be > 0; got {settings['other_data_scale']}."
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
    """The probe loss of `downstream_task` on its first `downstream_examples` train sentences, at
    the primary-view probe fitted to exactly those sentences with the fixed `probe_l2` (so the
    curvature is measured at the minimizer of the regularized loss, whatever the transfer stage's
    `probe_examples` and penalty grid)."""
    del model_state
    task = settings["downstream_task"]
    split = _split(run, task, "train")
    count = min(settings["downstream_examples"], len(split["label"]))
    batch = {name: split[name][None, :count] for name in ("tokens", "span", "label")}
    head = fit_probe(run, params, {**settings, "probe_examples": count, "probe_l2_grid": ()}, task)
    both = {"model": params, "head": jax.tree.map(jax.numpy.asarray, head)}
    return setting.DownstreamProblem(_probe_loss(run), both, batch)
