"""Tests of the pretraining objectives and of the evaluation-mode loss for the Hessian stage."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.core import config_utils
from experiments.training import objectives, runs, train
from experiments.vision import objectives as vision_objectives


def _run(config: ml_collections.ConfigDict, objective: str) -> runs.Run:
    config.pretrain.objective = objective
    config.pretrain.optimizer = "adamw"
    config.pretrain.learning_rate = 0.01
    return runs.build_run(config)


@pytest.mark.parametrize("name", sorted(vision_objectives.OBJECTIVES))
def test_loss_is_finite_and_decreases(smoke_config, name):
    run = _run(smoke_config, name)
    params, model_state = run.init()
    opt_state = run.optimizer.init(params)
    # A fixed batch: the loss on it must drop by 5% within a few steps on the training data.
    probe = objectives.training_batch(run.objective, run.task.train, 64, seed=99, step=0)
    eval_loss = jax.jit(run.eval_loss(model_state))
    initial = float(eval_loss(params, probe))
    train_step = train.make_train_step(run)
    for step in range(15):
        batch = objectives.training_batch(run.objective, run.task.train, 64, run.seed, step)
        params, opt_state, model_state, loss = train_step(params, opt_state, model_state, batch)
        assert np.isfinite(float(loss))
    final = float(jax.jit(run.eval_loss(model_state))(params, probe))
    assert np.isfinite(initial) and final < 0.95 * initial, (initial, final)


def test_batches_have_the_shapes_each_loss_needs(smoke_config):
    shapes = {}
    for name in vision_objectives.OBJECTIVES:
        run = _run(smoke_config.copy_and_resolve_references(), name)
        batch = objectives.training_batch(run.objective, run.task.train, 4, seed=0, step=0)
        shapes[name] = {key: value.shape for key, value in batch.items()}
    assert shapes["cross_entropy"] == {"inputs": (4, 8, 8, 1), "labels": (4,)}
    assert shapes["contrastive"] == {"inputs": (8, 8, 8, 1)}
    assert shapes["denoising"] == {"inputs": (4, 8, 8, 1), "targets": (4, 64)}


def _nt_xent_reference(projections: np.ndarray, temperature: float) -> float:
    z = projections / np.linalg.norm(projections, axis=1, keepdims=True)
    n = len(z)
    total = 0.0
    for i in range(n):
        partner = (i + n // 2) % n
        logits = np.array([z[i] @ z[j] / temperature for j in range(n) if j != i])
        positive = z[i] @ z[partner] / temperature
        total += np.log(np.exp(logits).sum()) - positive
    return total / n


def test_contrastive_loss_matches_a_direct_implementation():
    objective = vision_objectives.contrastive(ml_collections.ConfigDict({"temperature": 0.3}))
    projections = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    loss = objective.loss(jnp.asarray(projections), {})
    np.testing.assert_allclose(float(loss), _nt_xent_reference(projections, 0.3), rtol=1e-5)


def test_label_smoothing_and_squared_error_values():
    logits = jnp.zeros((2, 4))
    batch = {"labels": np.array([0, 3], np.int32)}
    smoothed = vision_objectives.label_smoothing(ml_collections.ConfigDict({"label_smoothing": 0.2}))
    np.testing.assert_allclose(float(smoothed.loss(logits, batch)), np.log(4), rtol=1e-6)
    outputs = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    squared = vision_objectives.squared_error(ml_collections.ConfigDict())
    np.testing.assert_allclose(float(squared.loss(outputs, batch)), 0.25, rtol=1e-6)


def test_eval_loss_is_pure_and_uses_fixed_batchnorm_statistics(smoke_config):
    smoke_config.model.family = "resnet"
    smoke_config.model.norm = "batch"
    smoke_config.model.width = 4
    run = _run(smoke_config, "cross_entropy")
    params, model_state = run.init()
    batch = objectives.training_batch(run.objective, run.task.train, 16, seed=0, step=0)
    loss_fn = jax.jit(run.eval_loss(model_state))
    first, second = float(loss_fn(params, batch)), float(loss_fn(params, batch))
    assert first == second and np.isfinite(first)
    # With running statistics, the mean loss over a batch is the mean of per-example losses.
    singles = [
        float(loss_fn(params, {k: v[i : i + 1] for k, v in batch.items()})) for i in range(4)
    ]
    half = {k: v[:4] for k, v in batch.items()}
    np.testing.assert_allclose(float(loss_fn(params, half)), np.mean(singles), rtol=1e-5)
    # The Hessian stage differentiates it twice.
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)
    hvp = jax.jvp(jax.grad(lambda p: loss_fn(p, batch)), (params,), (tangent,))[1]
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(hvp))


def test_unknown_objective_lists_the_valid_ones():
    config = ml_collections.ConfigDict({"objective": "mae"})
    with pytest.raises(config_utils.ConfigError, match=r"'mae'.*\['contrastive', 'cross_entropy'"):
        objectives.get_objective(config, vision_objectives.OBJECTIVES)


def test_objective_knobs_are_type_checked():
    config = ml_collections.ConfigDict({"objective": "label_smoothing", "label_smoothing": "0.1"})
    with pytest.raises(config_utils.ConfigError, match="config.pretrain.label_smoothing must be"):
        objectives.get_objective(config, vision_objectives.OBJECTIVES)
