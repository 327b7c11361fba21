"""Flatness and transfer of masked-LM checkpoints: Hessian and Fisher traces, linear probes.

  python -m experiments.language_measures --workdir=RUN [--workdir=RUN2 ...] [--output=FILE.md]

For each checkpoint of each `experiments.pretrain` workdir of the language setting
(`configs/pcfg.py`), `measure` computes:

  * `pretrain_loss_gap` (+ `_stderr`): the exact gap to the Bayes-optimal masked-LM loss on the
    evaluation split (`language.masked_lm_gap`);
  * `trace` (+ `_stderr`, `matvecs`): the Hessian trace of the evaluation-mode masked-LM loss
    (`config.pretrain` masking, no adversary term) averaged over a fixed subset of the pretraining
    sentences, with their masked positions fixed too (`config.hessian.num_batches x batch_size`),
    by `hessjax.trace_until` on `hessjax.dataset_hvp_fn` at relative error `rtol`;
  * `top_eigenvalue`: the largest Hessian eigenvalue of the same loss (`hessjax.top_eigenvalues`,
    `lanczos_steps` Lanczos steps): what the trace summarizes away (critic 3);
  * `fisher_trace` (+ `_stderr`): the Fisher-sampling estimate of the same trace (Liu et al.,
    2023) on the same sentences: labels drawn from the model's own prediction at the masked
    position (`hessjax.fisher_trace` on the logits at the masked positions). The two agree in
    expectation where the model is well specified and at its optimum;
  * `linear_probe_acc/<task>`: test accuracy of a multinomial logistic regression
    (`transfer.fit_linear_head`) on the frozen encoder's features averaged over the task's span
    (`language.span_features`), fitted on `task_<task>_train`, scored on `task_<task>_test`;
  * `trace_downstream` (+ `_stderr`, `matvecs_downstream`): the Hessian trace, over every parameter
    (encoder and probe), of the probe's cross-entropy on the first `downstream_examples` training
    sentences of `downstream_task` — curvature measured without the pretraining data (critic 1).

The same subset and the same probe keys serve every checkpoint (common random numbers), so
differences between checkpoints are not probe noise. The binary prints one markdown table row per
checkpoint.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags

import hessjax
from experiments import config_utils, language, models, multihost, objectives, train, transfer
from experiments.config_utils import Field

HESSIAN_SCHEMA = {
    "seed": Field(int, 0),  # Of the sentence subset, its masks and every probe.
    "num_batches": Field(int, 4),
    "batch_size": Field(int, 128),
    "rtol": Field(float, 0.05),
    "max_matvecs": Field(int, 32),
    "trace_method": Field(str, "hutchinson"),
    "fisher_samples": Field(int, 16),
    "lanczos_steps": Field(int, 10),
    "downstream_task": Field(str, "a"),
    "downstream_examples": Field(int, 256),
}
PROBE_SCHEMA = {
    "tasks": Field((tuple, list), ("a", "b", "c")),  # A list after the config's JSON round trip.
    "probe_l2": Field(float, 1e-3),
    "probe_steps": Field(int, 25),
}
TABLE_COLUMNS = {
    "objective": "algorithm",
    "width": "width",
    "depth": "depth",
    "step": "step",
    "pretrain_loss_gap": "loss gap (nats)",
    "trace": "Hessian trace",
    "top_eigenvalue": "top eigenvalue",
    "fisher_trace": "Fisher trace",
    "trace_downstream": "downstream trace",
}


def read_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.hessian` and `config.finetune` knobs this module reads, with defaults."""
    sections = {"hessian": HESSIAN_SCHEMA, "finetune": PROBE_SCHEMA}
    settings = {}
    for section, schema in sections.items():
        values = config.get(section, ml_collections.ConfigDict())
        settings.update(config_utils.read_fields(values, schema, f"config.{section}"))
    return settings


def curvature(run: train.Run, params: models.Params, settings: dict[str, Any]) -> dict[str, float]:
    """The Hessian trace and the Fisher-sampling trace of the masked-LM loss (module docstring).

    Args:
      run: the pretraining run of the language setting.
      params: the parameters to measure.
      settings: `read_settings(config)`.

    Returns:
      `trace`, `trace_stderr`, `matvecs`, `top_eigenvalue`, `fisher_trace`,
      `fisher_trace_stderr`, `fisher_samples`, `seconds_hessian`.
    """
    start = time.perf_counter()
    trace_key, fisher_key, eigen_key = jax.random.split(jax.random.key(settings["seed"]), 3)
    batches = objectives.stacked_batches(
        run.objective,
        run.task.train,
        batch_size=settings["batch_size"],
        num_batches=settings["num_batches"],
        seed=settings["seed"],
    )
    loss_fn = transfer.eval_loss(run.model, run.objective, transfer.pretraining_key(run), {})
    matvec = hessjax.dataset_hvp_fn(loss_fn, params, batches)
    trace = hessjax.trace_until(
        matvec,
        params,
        trace_key,
        rtol=settings["rtol"],
        max_matvecs=settings["max_matvecs"],
        method=settings["trace_method"],
    )
    eigen = hessjax.top_eigenvalues(matvec, params, eigen_key, k=1, num_steps=settings["lanczos_steps"])
    # The inputs are `TokensAt`, so the logits are those of the masked positions, each of weight 1.
    inputs = jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:]), batches["inputs"])
    fisher = hessjax.fisher_trace(
        transfer.eval_logits(run.model, {}),
        params,
        inputs,
        fisher_key,
        num_samples=settings["fisher_samples"],
    )
    return {
        "trace": float(trace.value),
        "trace_stderr": float(trace.stderr),
        "matvecs": int(trace.num_matvecs),
        "top_eigenvalue": float(eigen.values[0]),
        "fisher_trace": float(fisher.value),
        "fisher_trace_stderr": float(fisher.stderr),
        "fisher_samples": int(fisher.num_matvecs),
        "seconds_hessian": time.perf_counter() - start,
    }


def _span_encoder(run: train.Run) -> Any:
    """The jitted span features of the run's model, one compiled function per model."""
    return transfer.shared_function(
        ("span_features", run.model),
        lambda: jax.jit(lambda p, tokens, spans: language.span_features(run.model, p, tokens, spans)),
    )


def _probe(run: train.Run, params: models.Params, settings: dict[str, Any], task: str) -> transfer.LinearHead:
    split = run.task.splits[f"task_{task}_train"]
    return transfer.fit_linear_head(
        _span_encoder(run)(params, split["tokens"], split["span"]),
        split["label"],
        run.task.grammar.num_labels,
        l2=settings["probe_l2"],
        steps=settings["probe_steps"],
    )


def linear_probe_accuracies(
    run: train.Run,
    params: models.Params,
    settings: dict[str, Any],
    heads: dict[str, transfer.LinearHead] | None = None,
) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe of each downstream task (module docstring).

    Args:
      run: the pretraining run of the language setting.
      params: the parameters whose encoder is probed.
      settings: `read_settings(config)`.
      heads: the probes already fitted to these parameters, by task; fitted here if None.

    Returns:
      `linear_probe_acc/<task>` for each of `config.finetune.tasks`.
    """
    accuracies = {}
    for task in settings["tasks"]:
        test_split = run.task.splits[f"task_{task}_test"]
        test_features = _span_encoder(run)(params, test_split["tokens"], test_split["span"])
        head = heads[task] if heads is not None else _probe(run, params, settings, task)
        accuracies[f"linear_probe_acc/{task}"] = head.accuracy(test_features, test_split["label"])
    return accuracies


def _probe_loss(run: train.Run) -> Any:
    """`loss(params, batch)`: the probe's mean cross-entropy on span features, one per model."""

    def build() -> Any:
        def loss(params: dict[str, Any], batch: dict[str, jax.Array]) -> jax.Array:
            features = language.span_features(run.model, params["model"], batch["tokens"], batch["span"])
            logits = features @ params["head"]["kernel"] + params["head"]["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        return loss

    return transfer.shared_function(("span_probe_loss", run.model), build)


def downstream_curvature(
    run: train.Run,
    params: models.Params,
    settings: dict[str, Any],
    head: transfer.LinearHead | None = None,
) -> dict[str, float]:
    """The Hessian trace of a downstream task's probe loss over all parameters (module docstring).

    The probe of `downstream_task` is fitted to the frozen features first (the one whose accuracy
    is reported; pass it as `head` if already fitted); then encoder and probe are perturbed
    together, on the task's first `downstream_examples` training sentences, with the same probe
    key for every checkpoint.

    Returns:
      `trace_downstream`, `trace_downstream_stderr`, `matvecs_downstream`.
    """
    task = settings["downstream_task"]
    config_utils.choose(task, dict.fromkeys(settings["tasks"]), "config.hessian.downstream_task")
    split = run.task.splits[f"task_{task}_train"]
    count = min(settings["downstream_examples"], len(split["label"]))
    batch = {name: split[name][:count] for name in ("tokens", "span", "label")}
    head = head if head is not None else _probe(run, params, settings, task)
    downstream_params = {
        "model": params,
        "head": {
            "kernel": jnp.asarray(head.kernel, jnp.float32),
            "bias": jnp.asarray(head.bias, jnp.float32),
        },
    }
    estimate = hessjax.trace_until(
        hessjax.hvp_fn(_probe_loss(run), downstream_params, batch),
        downstream_params,
        jax.random.fold_in(jax.random.key(settings["seed"]), 1),
        rtol=settings["rtol"],
        max_matvecs=settings["max_matvecs"],
        method=settings["trace_method"],
    )
    return {
        "trace_downstream": float(estimate.value),
        "trace_downstream_stderr": float(estimate.stderr),
        "matvecs_downstream": int(estimate.num_matvecs),
    }


def measure(run: train.Run, params: models.Params, settings: dict[str, Any]) -> dict[str, Any]:
    """Every statistic of the module docstring for one set of parameters."""
    gap = language.masked_lm_gap(run.model, params, run.task)
    heads = {task: _probe(run, params, settings, task) for task in settings["tasks"]}
    return {
        "pretrain_loss_gap": gap.value,
        "pretrain_loss_gap_stderr": gap.stderr,
        **curvature(run, params, settings),
        **linear_probe_accuracies(run, params, settings, heads),
        **downstream_curvature(run, params, settings, heads.get(settings["downstream_task"])),
    }


def measure_checkpoint(
    workdir: str | pathlib.Path, step: int, run: train.Run, settings: dict[str, Any]
) -> dict[str, Any]:
    """`measure` of the checkpoint `step` of the language run in `workdir`, as plain numbers.

    Args:
      workdir: the `train.pretrain` workdir of the run.
      step: a checkpoint step of it.
      run: the run (`train.load_run(workdir)` or `transfer.open_run`).
      settings: `read_settings(config)`.

    Returns:
      The statistics of `measure`, each a Python `int` or `float` (a job result of
      `experiments.study`).
    """
    params, _ = train.restore_params(workdir, step, run=run)
    return {
        name: value if isinstance(value, int) else float(value)
        for name, value in measure(run, params, settings).items()
    }


def measure_run(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """`measure` of every checkpoint of the language run in `workdir`, with its configuration.

    Returns:
      One dict per checkpoint, ascending by step: `objective`, `width`, `depth`, `num_heads`,
      `step` and the statistics.
    """
    run = train.load_run(workdir)
    if not isinstance(run.task, language.LanguageTask):
        raise config_utils.ConfigError(
            f"{workdir} is not a run of the language setting (config.data.name="
            f"{run.config.data.name!r}, expected {language.DATASET!r})."
        )
    settings = read_settings(run.config)
    identity = {
        "objective": run.objective.name,
        "width": run.config.model.width,
        "depth": run.config.model.depth,
        "num_heads": run.config.model.get("num_heads", ""),
    }
    rows = []
    for step in train.checkpoint_steps(workdir):
        rows.append({**identity, "step": step, **measure_checkpoint(workdir, step, run, settings)})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of `measure_run` as a markdown table (estimates as `value ± stderr`)."""
    probes = sorted({name for row in rows for name in row if name.startswith("linear_probe_acc/")})
    header = [*TABLE_COLUMNS.values(), *(f"probe {name.split('/')[1].upper()}" for name in probes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for name in TABLE_COLUMNS:
            value = row[name]
            if f"{name}_stderr" in row:
                cells.append(f"{value:.4g} ± {row[f'{name}_stderr']:.2g}")
            else:
                cells.append(str(value))
        cells += [f"{row[name]:.3f}" for name in probes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _define_flags() -> None:
    """The binary's flags, defined only when it runs: `experiments.study` imports this module
    and defines its own `--workdir`."""
    flags.DEFINE_multi_string("workdir", None, "Workdirs of language pretraining runs.")
    flags.DEFINE_string("output", None, "Also write the table to this file.")
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # On several hosts every process measures (replicated, not split) and only the primary writes.
    multihost.initialize()
    rows = [row for workdir in flags.FLAGS.workdir for row in measure_run(workdir)]
    table = markdown_table(rows)
    if not multihost.is_primary():
        return
    print(table)
    if flags.FLAGS.output:
        pathlib.Path(flags.FLAGS.output).write_text(table)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
