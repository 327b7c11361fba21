"""The measurement stage: every curvature statistic of a checkpoint, for every setting.

  python -m experiments.measure --workdir=RUN [--config=experiments/configs/NAME.py]

For a checkpoint of a pretraining run, `measure` computes on a fixed subset of the pretraining
data (the first `num_batches x batch_size` examples of the `seed`'s data order, the same for every
checkpoint, as are the probe keys: common random numbers, so differences between checkpoints are
not probe noise):

  * `hessjax.hessian_summary` of the evaluation-mode pretraining loss: the trace and its standard
    error from `trace_until` at `rtol` (method `trace_method`), the top eigenvalues, per-layer
    traces and the spectral density (saved as `density.npz` with `nodes` and `weights` in the
    checkpoint's output directory), and from it the spectral mass clearly below 0 (`negative_mass`);
  * the products the trace needs for 5% and 1% relative standard error, extrapolated from the
    Hutchinson per-probe variance: `m = var / (rtol * trace)^2` with `var = stderr^2 * m_spent`;
  * the trace of a downstream loss (critic 1: does the trace need the pretraining data?): the
    setting says which loss and data (`Setting.downstream_problem`, e.g. a linear head fitted to
    the frozen features of a target task, differentiated over encoder and head);
  * for objectives whose outputs are categorical logits (`Objective.categorical`), the
    Fisher-sampling trace (`hessjax.fisher_trace`, labels sampled from the model); else none;
  * with `other_data` on, critic 1 without the pretraining data: the same trace and Fisher trace
    on data of another distribution that the setting names (`Setting.other_data`: in the language
    setting text of a perturbed grammar, in the vision setting the target task's images, where
    only the label-free Fisher trace applies);
  * with `embed_width` set, the trace after a function-preserving embedding of the model into that
    width (`experiments.measurement.embedded`): model sizes compared at the same function.

Each checkpoint is one job of `experiments.core.jobs`, so a rerun skips finished checkpoints. A
statistic that is not finite (a diverged checkpoint) is NaN in the result with its reason in
`nan_reason`; the other statistics and checkpoints go on. On several devices or hosts the subset is
split across all devices for every estimate (`experiments.core.multihost`).
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import ml_collections
import numpy as np

import hessjax
from experiments.core import config_utils, multihost
from experiments.core.config_utils import Field
from experiments.measurement import embedded
from experiments.measurement.dataset_trace import trace_cells, unstack
from experiments.training import evaluation, models, objectives, runs, setting

SCHEMA = {
    "seed": Field(int, 0),  # Of the data subset and of every probe.
    "num_batches": Field(int),
    "batch_size": Field(int),
    "rtol": Field(float, 0.05),
    "max_matvecs": Field(int, 200),
    "trace_method": Field(str, "hutchinson"),
    "top_k": Field(int, 3),
    "lanczos_steps": Field(int, 20),
    "block_matvecs": Field(int, 20),
    "density_probes": Field(int, 4),
    "density_steps": Field(int, 30),
    "fisher_samples": Field(int, 20),
    # Probes of the adaptive sharpness tr(T H T), T = diag(|params|) (0: not measured).
    "adaptive_matvecs": Field(int, 0),
    # Probes of the fresh-minibatch trace, each with its own batch (0: not measured).
    "fresh_probes": Field(int, 0),
    # Critic 1: the trace and Fisher trace on data of another distribution (`Setting.other_data`).
    "other_data": Field(bool, False),
    # The trace after a function-preserving embedding into this width (`embedded`; 0: off).
    "embed_width": Field(int, 0),
}
RELATIVE_ERRORS = {"matvecs_5pct": 0.05, "matvecs_1pct": 0.01}
DENSITY_FILE = "density.npz"
# The density's resolution, a fraction of its nodes' span: the margin below 0 that
# `density_negative_mass` counts, and the kernel width of its plot (`plots.load_density`).
DENSITY_RESOLUTION = 0.01
FRESH_SAMPLES_FILE = "fresh_trace_samples.npz"


def read_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `config.hessian` fields, type-checked, with defaults, and the setting's own knobs.

    Raises:
      ConfigError: the section or a field is missing or invalid (the message names it).
    """
    if "hessian" not in config:
        raise config_utils.ConfigError("config.hessian is missing.")
    settings = config_utils.read_fields(config.hessian, SCHEMA, "config.hessian")
    minimums = {"num_batches": 1, "batch_size": 1, "top_k": 0, "block_matvecs": 0}
    minimums.update(density_probes=0, adaptive_matvecs=0, fresh_probes=0)
    minimums.update(max_matvecs=2, fisher_samples=2)  # Error bars need two.
    for name, minimum in minimums.items():
        if settings[name] < minimum:
            raise config_utils.ConfigError(
                f"config.hessian.{name} must be >= {minimum}; got {settings[name]}."
            )
    if not settings["rtol"] > 0:
        raise config_utils.ConfigError(f"config.hessian.rtol must be > 0; got {settings['rtol']}.")
    config_utils.choose(
        settings["trace_method"], dict.fromkeys(("hutchinson", "hutch++", "xtrace")),
        "config.hessian.trace_method",
    )
    embedded.check_embed_width(config, settings["embed_width"])
    return {**settings, **setting.of_config(config).read_measurement_settings(config)}


def fixed_batches(
    objective: objectives.Objective, dataset: objectives.BatchSource, settings: dict[str, Any]
) -> dict[str, Any]:
    """The fixed examples of every checkpoint: the first batches of the `seed`'s data order.

    `num_batches` batches of `batch_size` examples, stacked on a leading axis; fewer and smaller
    where the dataset is small.
    """
    batch_size = min(settings["batch_size"], dataset.num_examples)
    multihost.check_batch_size(batch_size, "config.hessian.batch_size")
    num_batches = min(settings["num_batches"], dataset.num_examples // batch_size)
    return objectives.stacked_batches(
        objective, dataset, batch_size=batch_size, num_batches=num_batches, seed=settings["seed"]
    )


def examples(stacked: Any) -> Any:
    """Stacked batches as one batch of all their examples (the leading two axes merged)."""
    return jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:]), stacked)


def _layer_traces(blocks: Any) -> dict[str, float]:
    """Per-layer traces: the block traces of a layer's kernel and bias, summed."""
    leaves = jax.tree_util.tree_flatten_with_path(
        blocks, is_leaf=lambda leaf: isinstance(leaf, hessjax.TraceEstimate)
    )[0]
    layers: dict[str, float] = {}
    for path, estimate in leaves:
        layer = "block_trace/" + "/".join(str(getattr(key, "key", key)) for key in path[:-1])
        layers[layer] = layers.get(layer, 0.0) + float(estimate.value)
    return layers


def _non_finite_reason(params: models.Params) -> str:
    """Why no curvature of these parameters can be finite, or `""` (a non-finite loss or product
    is `hessjax.NonFiniteError`'s, with its own message)."""
    if not all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(params)):
        return "the checkpoint's parameters are not finite"
    return ""


def _measured(
    names: tuple[str, ...], params: models.Params, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`measure()`, or NaN for each of `names` with the reason when the curvature is not finite."""
    reason = _non_finite_reason(params)
    if not reason:
        try:
            return measure()
        except hessjax.NonFiniteError as error:
            reason = str(error)
    return {**dict.fromkeys(names, math.nan), "nan_reason": dict.fromkeys(names, reason)}


def _pretraining_statistics(
    params: models.Params,
    loss_fn: objectives.LossFn,
    batches: Any,
    key: jax.Array,
    settings: dict[str, Any],
    density_path: pathlib.Path | None,
) -> dict[str, Any]:
    summary = hessjax.hessian_summary(
        loss_fn,
        params,
        multihost.shard_examples(batches, batch_axis=1),
        key,
        rtol=settings["rtol"],
        max_matvecs=settings["max_matvecs"],
        top_k=settings["top_k"],
        lanczos_steps=settings["lanczos_steps"],
        block_matvecs=settings["block_matvecs"],
        density_probes=settings["density_probes"],
        density_steps=settings["density_steps"],
    )
    trace, stderr = float(summary.trace.value), float(summary.trace.stderr)
    per_probe_variance = stderr**2 * summary.matvecs_trace
    eigen = summary.top_eigenvalues
    statistics = {
        "trace": trace,
        "trace_stderr": stderr,
        "trace_per_param": trace / models.num_params(params),
        "matvecs": summary.num_matvecs,
        "matvecs_trace": summary.matvecs_trace,
        **{
            name: max(2, math.ceil(per_probe_variance / (target * trace) ** 2))
            for name, target in RELATIVE_ERRORS.items()
        },
        "top_eigenvalue": float(eigen.values[0]) if eigen is not None else None,
        "top_eigenvalues": np.asarray(eigen.values) if eigen is not None else np.zeros((0,)),
        # The largest residual |A v - lambda v| of the reported eigenpairs: how far to trust them.
        "top_eigenvalue_residual": float(np.max(eigen.residuals)) if eigen is not None else None,
        **(_layer_traces(summary.block_traces) if summary.block_traces else {}),
    }
    density = summary.density
    if density is not None:
        statistics["density_negative_mass"] = negative_mass(density)
        statistics["effective_rank"] = float(hessjax.effective_rank(density))
        if density_path is not None and multihost.is_primary():
            density_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                density_path, nodes=np.asarray(density.nodes), weights=np.asarray(density.weights)
            )
    return statistics


def negative_mass(density: hessjax.SpectralDensity) -> float:
    """The density's mass clearly below 0: at or below -`DENSITY_RESOLUTION` x its nodes' span.

    Not `cdf(0)`: a few Lanczos steps put a Hessian's near-zero bulk (about 98% of the mass in the
    language study) in one node within about 1e-4 of 0, on either side of it from one checkpoint to
    the next, so `cdf(0)` jumped between about 0.005 and 0.99.
    """
    span = float(np.ptp(np.asarray(density.nodes)))
    return float(density.cdf(-DENSITY_RESOLUTION * span))


def _flatness_statistics(
    params: models.Params,
    loss_fn: objectives.LossFn,
    batches: Any,
    key: jax.Array,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Measures that rescalings leaving the function unchanged cannot move (critic 3).

    `adaptive_sharpness` is the trace of `T H T` with `T = diag(|params|)`: unchanged when a
    LayerNorm's input weights or a ReLU unit's in- and out-weights are rescaled, which moves the
    raw trace (`hessjax.adaptive_operator`); `weight_norm` is reported beside it.
    """
    statistics = {
        "weight_norm": float(
            np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
        )
    }
    if settings["adaptive_matvecs"]:
        matvec = hessjax.dataset_hvp_fn(
            loss_fn, params, multihost.shard_examples(batches, batch_axis=1)
        )
        estimate = hessjax.trace(
            hessjax.adaptive_operator(matvec, params),
            params,
            key,
            num_matvecs=settings["adaptive_matvecs"],
        )
        statistics.update(
            adaptive_sharpness=float(estimate.value),
            adaptive_sharpness_stderr=float(estimate.stderr),
        )
    return statistics


def _fresh_batch_trace(
    run: runs.Run,
    params: models.Params,
    loss_fn: objectives.LossFn,
    key: jax.Array,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None,
) -> dict[str, Any]:
    """The trace with data noise (the paper's estimator): each probe with its own minibatch.

    Probe `i` is a Rademacher vector from `fold_in(key, i)` applied to the Hessian of the batch
    of training step `num_batches + i` of the subset's data order (fresh examples, and fresh masks
    in the language setting). The per-probe samples are saved (`FRESH_SAMPLES_FILE`), and the
    estimates after the first 2, 4, 8, ... probes are `trace_at_<N>`: how many probes (each with
    `batch_size` examples) rank the checkpoints as the full budget does (critic 2).
    """
    if not settings["fresh_probes"]:
        return {}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    batch_size = min(settings["batch_size"], run.task.train.num_examples)
    samples = []
    for i in range(settings["fresh_probes"]):
        batch = objectives.training_batch(
            run.objective, run.task.train, batch_size, settings["seed"], settings["num_batches"] + i
        )
        probe = jax.random.rademacher(jax.random.fold_in(key, i), flat.shape, flat.dtype)
        image = hessjax.hvp(loss_fn, params, multihost.shard_examples(batch), unravel(probe))
        samples.append(float(probe @ jax.flatten_util.ravel_pytree(image)[0]))
    samples = np.asarray(samples)
    if not np.all(np.isfinite(samples)):
        raise hessjax.NonFiniteError("The fresh-minibatch trace's products are not finite.")
    if output_dir is not None and multihost.is_primary():
        output_dir.mkdir(parents=True, exist_ok=True)
        np.savez(output_dir / FRESH_SAMPLES_FILE, samples=samples)
    # The estimate after the first N probes (N probes x batch_size examples): critic 2's rank
    # stability, `trace_at_<N>` against the full-budget trace.
    budgets = [2**k for k in range(1, len(samples).bit_length()) if 2**k < len(samples)]
    return {
        "trace_fresh": float(samples.mean()),
        "trace_fresh_stderr": float(samples.std(ddof=1) / np.sqrt(len(samples))),
        **{f"trace_at_{n}": float(samples[:n].mean()) for n in budgets},
    }


def _downstream_trace(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    key: jax.Array,
    settings: dict[str, Any],
) -> dict[str, Any]:
    loss_fn, downstream_params, batches = run.setting.downstream_problem(
        run, params, model_state, settings
    )
    downstream_params = multihost.replicate(downstream_params)

    names = ("trace_downstream", "trace_downstream_stderr")
    return _measured(
        names,
        downstream_params,
        lambda: trace_cells(names[0], loss_fn, downstream_params, batches, key, settings),
    )


def _fisher_trace(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    batches: Any,
    key: jax.Array,
    settings: dict[str, Any],
    name: str = "fisher_trace",
) -> dict[str, Any]:
    names = (name, f"{name}_stderr")
    if not run.objective.categorical:
        return dict.fromkeys(names)
    logits_fn = evaluation.eval_logits(run.model, model_state)

    def measure() -> dict[str, Any]:
        inputs = multihost.shard_examples(examples(batches["inputs"]))
        estimate = hessjax.fisher_trace(
            logits_fn, params, inputs, key, num_samples=settings["fisher_samples"]
        )
        return dict(zip(names, (float(estimate.value), float(estimate.stderr)), strict=True))

    return _measured(names, params, measure)


def _other_data_statistics(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    loss_fn: objectives.LossFn,
    key: jax.Array,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Critic 1: curvature on data of another distribution than the pretraining data's.

    `trace_other_data` is the pretraining loss's Hessian trace on it (where its batches fit that
    loss), `fisher_trace_other_data` the label-free Fisher trace with the model's own samples;
    probes and subset size as on the pretraining data; nothing when the setting has no other data.
    """
    other = run.setting.other_data(run, settings)
    if other is None:
        return {}
    batches = fixed_batches(other.objective, other.source, settings)
    trace_key, fisher_key = jax.random.split(key)
    cells = _fisher_trace(
        run, params, model_state, batches, fisher_key, settings, "fisher_trace_other_data"
    )
    if other.pretraining_loss:
        names = ("trace_other_data", "trace_other_data_stderr")
        measured = _measured(
            names, params, lambda: trace_cells(names[0], loss_fn, params, batches, trace_key, settings)
        )
        reasons = {**cells.pop("nan_reason", {}), **measured.pop("nan_reason", {})}
        cells.update(measured, **({"nan_reason": reasons} if reasons else {}))
    return cells


def measure(
    run: runs.Run,
    params: models.Params,
    model_state: models.ModelState,
    settings: dict[str, Any],
    output_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Every curvature statistic of one set of parameters (see the module docstring).

    Args:
      run: the pretraining run (model, objective, data, config, setting).
      params: the parameters to measure.
      model_state: their non-trainable collections.
      settings: `read_settings(config)`.
      output_dir: where to save the spectral density (`DENSITY_FILE`), if anywhere.

    Returns:
      A job result: the statistics (`trace`, `trace_stderr`, `trace_per_param`, `matvecs` (all
      products on the pretraining Hessian), `matvecs_trace`, `matvecs_5pct`, `matvecs_1pct`,
      `top_eigenvalue`, `top_eigenvalues`, `block_trace/<layer>`, `density_negative_mass`,
      `trace_downstream` (+ `_stderr`), `matvecs_downstream`, `fisher_trace` (+ `_stderr`; `None`
      for non-categorical objectives), `adaptive_sharpness` (+ `_stderr`), `weight_norm`,
      `effective_rank`, `trace_fresh` (+ `_stderr`), with `other_data` on `trace_other_data`
      (+ `_stderr`), `matvecs_other_data` and `fisher_trace_other_data` (+ `_stderr`), with
      `embed_width` `trace_embedded` (+ `_stderr`), `matvecs_embedded`,
      `pretrain_loss_subset_embedded` (`experiments.measurement.embedded`),
      `pretrain_loss_subset`, `seconds_hessian`
      (wall time, including compilation for the first checkpoint of a model and objective in a
      process) and its parts `seconds_curvature`, `seconds_downstream`, `seconds_fisher`,
      `seconds_flatness`, `seconds_fresh`, `seconds_other_data`, `seconds_embedded`), and a
      `nan_reason` mapping
      for the NaN ones.
    """
    start = time.perf_counter()
    params, model_state = multihost.replicate((params, model_state))
    key = jax.random.key(settings["seed"])
    pretraining_key, downstream_key, fisher_key = jax.random.split(key, 3)
    batches = fixed_batches(run.objective, run.task.train, settings)
    loss_fn = evaluation.eval_loss(
        run.model, run.objective, evaluation.pretraining_key(run), model_state
    )
    subset_loss = float(np.mean([loss_fn(params, b) for b in unstack(batches)]))
    density_path = output_dir / DENSITY_FILE if output_dir is not None else None
    # Keys of the later statistics are folded in, so the earlier ones keep their probes.
    adaptive_key, fresh_key = jax.random.fold_in(key, 10), jax.random.fold_in(key, 11)
    other_key, embedded_key = jax.random.fold_in(key, 12), jax.random.fold_in(key, 13)
    names = ("trace", "trace_stderr", "trace_per_param", "top_eigenvalue")
    # Each part is timed: `seconds_<part>` (the first checkpoint of a process includes compiling).
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "curvature": lambda: _measured(
            names,
            params,
            lambda: _pretraining_statistics(
                params, loss_fn, batches, pretraining_key, settings, density_path
            ),
        ),
        "downstream": lambda: _downstream_trace(
            run, params, model_state, downstream_key, settings
        ),
        "fisher": lambda: _fisher_trace(run, params, model_state, batches, fisher_key, settings),
        "flatness": lambda: _measured(
            ("adaptive_sharpness",),
            params,
            lambda: _flatness_statistics(params, loss_fn, batches, adaptive_key, settings),
        ),
        "fresh": lambda: _measured(
            ("trace_fresh",),
            params,
            lambda: _fresh_batch_trace(run, params, loss_fn, fresh_key, settings, output_dir),
        ),
    }
    if settings["other_data"]:
        parts["other_data"] = lambda: _other_data_statistics(
            run, params, model_state, loss_fn, other_key, settings
        )
    if settings["embed_width"]:
        parts["embedded"] = lambda: _measured(
            ("trace_embedded", "trace_embedded_stderr"),
            params,
            lambda: embedded.embedded_trace(
                run, params, model_state, batches, embedded_key, settings
            ),
        )
    result: dict[str, Any] = {"pretrain_loss_subset": subset_loss, "nan_reason": {}}
    for name, part in parts.items():
        part_start = time.perf_counter()
        cells = part()
        result["nan_reason"].update(cells.pop("nan_reason", {}))
        result.update(cells, **{f"seconds_{name}": time.perf_counter() - part_start})
    result["seconds_hessian"] = time.perf_counter() - start
    return result


STAGE = setting.CheckpointStage(
    "measure", read_settings, measure, ("trace", "top_eigenvalue", "trace_downstream")
)
