"""Tests of the model families: sizes, parameter counts, the encoder/head split and BatchNorm."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.core import config_utils
from experiments.training import evaluation, models, objectives
from experiments.vision import objectives as vision_objectives

IMAGE_SHAPE = (8, 8, 1)
FAMILIES = {
    "mlp": {},
    "cnn": {},
    "resnet_batchnorm": {"family": "resnet", "norm": "batch"},
    "resnet_no_norm": {"family": "resnet", "norm": "none"},
    "vit": {"patch_size": 2, "num_heads": 2},
}


def _config(name: str, width: int, depth: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"family": name, "width": width, "depth": depth, **FAMILIES[name]}
    )


def _jitted_apply(model, train):
    return jax.jit(
        lambda params, state, images: models.apply_model(model, params, state, images, train=train)
    )


def _shapes(name: str, width: int, depth: int, num_outputs: int = 10):
    model = models.build_model(_config(name, width, depth), num_outputs)
    return jax.eval_shape(lambda: models.init_model(model, 0, IMAGE_SHAPE))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_builds_at_two_sizes(name):
    small_params, small_state = _shapes(name, 8, 1)
    large_params, _ = _shapes(name, 16, 2)
    assert set(small_params) == {"encoder", "head"}
    small, large = models.num_params(small_params), models.num_params(large_params)
    assert 0 < small < large
    assert set(small_state) == ({"batch_stats"} if name == "resnet_batchnorm" else set())
    print(f"{name}: {small} and {large} parameters")


def test_parameter_counts_are_exact_for_the_mlp():
    params, _ = _shapes("mlp", width=16, depth=2, num_outputs=10)
    assert models.num_params(params["encoder"]) == (64 * 16 + 16) + (16 * 16 + 16)
    assert models.num_params(params) == models.num_params(params["encoder"]) + 16 * 10 + 10


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_forward_pass_and_features(name):
    model = models.build_model(_config(name, 8, 2), 3)
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    images = jax.random.normal(jax.random.key(1), (4, *IMAGE_SHAPE))
    outputs, _ = _jitted_apply(model, train=False)(params, state, images)
    features = jax.jit(functools.partial(models.features, model))(params, state, images)
    assert outputs.shape == (4, 3) and bool(jnp.all(jnp.isfinite(outputs)))
    head_only = model.head.apply({"params": params["head"]}, features)
    np.testing.assert_allclose(outputs, head_only, rtol=1e-5, atol=1e-6)


def test_equal_models_share_one_compiled_initializer():
    """Seeds of one configuration build equal modules: they compile `init` once (a compile costs
    seconds on a GPU), and each seed's parameters are still its own, as a fresh `jax.jit` gives."""
    config = _config("mlp", 8, 2)
    first, second = models.build_model(config, 3), models.build_model(config, 3)
    assert first is not second and first == second
    before = models._compiled_init.cache_info()
    params = [models.init_model(model, seed, IMAGE_SHAPE)[0]
              for model, seed in ((first, 0), (second, 1), (second, 0))]
    after = models._compiled_init.cache_info()
    assert after.hits - before.hits >= 2 and after.misses - before.misses <= 1
    fresh = jax.jit(second.init, static_argnames="train")(
        jax.random.key(1, impl="rbg"), jnp.zeros((1, *IMAGE_SHAPE)), train=False)["params"]
    jax.tree.map(np.testing.assert_array_equal, params[1], fresh)
    jax.tree.map(np.testing.assert_array_equal, params[0], params[2])
    leaves = zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]), strict=True)
    assert any(not np.array_equal(a, b) for a, b in leaves)
    other = models.build_model(_config("mlp", 16, 2), 3)
    models.init_model(other, 0, IMAGE_SHAPE)
    assert models._compiled_init.cache_info().misses - after.misses == 1


def test_batchnorm_train_updates_statistics_and_eval_uses_them():
    model = models.build_model(_config("resnet_batchnorm", 8, 1), 3)
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    images = 3.0 + jax.random.normal(jax.random.key(1), (16, *IMAGE_SHAPE))
    _, new_state = _jitted_apply(model, train=True)(params, state, images)
    before, after = (jax.tree_util.tree_leaves(s) for s in (state, new_state))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    # Evaluation mode: each example's output does not depend on the rest of the batch.
    evaluate = _jitted_apply(model, train=False)
    eval_all, _ = evaluate(params, new_state, images)
    eval_one, _ = evaluate(params, new_state, images[:1])
    np.testing.assert_allclose(eval_all[:1], eval_one, rtol=1e-5, atol=1e-6)
    _, same_state = models.apply_model(model, params, new_state, images, train=False)
    assert same_state is new_state


def test_mlp_head_has_a_hidden_layer():
    config = _config("mlp", 8, 1)
    config.head_hidden = 5
    model = models.build_model(config, 7, head="mlp")
    params, _ = jax.eval_shape(lambda: models.init_model(model, 0, IMAGE_SHAPE))
    assert models.num_params(params["head"]) == (8 * 5 + 5) + (5 * 7 + 7)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(config_utils.ConfigError, match=r"'transformer'.*\['cnn', 'mlp', 'resnet'"):
        models.build_model(
            ml_collections.ConfigDict({"family": "transformer", "width": 8, "depth": 1}), 3
        )
    config = _config("resnet_batchnorm", 8, 1)
    config.norm = "layer"
    with pytest.raises(config_utils.ConfigError, match=r"config.model.norm.*\['batch', 'none'\]"):
        models.build_model(config, 3)
    with pytest.raises(config_utils.ConfigError, match=r"head.*\['linear', 'mlp'\]"):
        models.build_model(_config("mlp", 8, 1), 3, head="conv")


def test_wrong_field_types_and_values_name_the_field():
    config = ml_collections.ConfigDict({"family": "mlp", "width": "16", "depth": 1})
    with pytest.raises(config_utils.ConfigError, match="config.model.width must be int; got str"):
        models.build_model(config, 3)
    config = ml_collections.ConfigDict({"family": "mlp", "width": 16, "depth": True})
    with pytest.raises(config_utils.ConfigError, match="config.model.depth must be int; got bool"):
        models.build_model(config, 3)
    with pytest.raises(config_utils.ConfigError, match="config.model.depth is missing"):
        models.build_model(ml_collections.ConfigDict({"family": "mlp", "width": 16}), 3)
    with pytest.raises(config_utils.ConfigError, match="num_heads must divide"):
        models.build_model(
            ml_collections.ConfigDict({"family": "vit", "width": 10, "depth": 1, "num_heads": 4}), 3
        )


def test_batchnorm_eval_loss_takes_the_statistics_as_arguments():
    # The Hessian stage measures one checkpoint after another; with BatchNorm each has its own
    # running statistics. `evaluation.eval_loss` binds them as arguments (a `Partial`), so the
    # curvature products compile once, not once per checkpoint, and still use each state.
    import importlib

    import hessjax

    products = importlib.import_module("hessjax.products")
    model = models.build_model(_config("resnet_batchnorm", 4, 1), 3)
    objective = vision_objectives.cross_entropy(ml_collections.ConfigDict())
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    images = 3.0 + jax.random.normal(jax.random.key(1), (8, *IMAGE_SHAPE))
    batch = {"inputs": images, "labels": jnp.arange(8) % 3}
    states = [state]
    for _ in range(2):  # two later "checkpoints": statistics moved by training-mode passes
        states.append(_jitted_apply(model, train=True)(params, states[-1], images)[1])
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    sizes, products_seen = [], []
    for model_state in states:
        loss_fn = evaluation.eval_loss(model, objective, "test_bn", model_state)
        reference = objectives.make_eval_loss(model, objective, model_state)
        np.testing.assert_allclose(loss_fn(params, batch), reference(params, batch), rtol=1e-6)
        product = hessjax.hvp_fn(loss_fn, params, batch)(v)
        expected = hessjax.hvp(reference, params, batch, v)
        for got, want in zip(jax.tree_util.tree_leaves(product), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
        products_seen.append(jax.flatten_util.ravel_pytree(product)[0])
        sizes.append(products._linearized_gradient._cache_size())
    assert sizes[0] == sizes[1] == sizes[2], sizes
    assert not np.allclose(products_seen[0], products_seen[2])  # the statistics were used


def _text_model(depth: int):
    config = ml_collections.ConfigDict(
        {"family": "text_transformer", "width": 16, "depth": depth, "num_heads": 2, "mlp_ratio": 2}
    )
    model = models.build_model(config, 11, input_vocab_size=11)
    return model, models.init_model(model, 0, (6,))[0]


@pytest.mark.parametrize("depth", [1, 3])
def test_tokens_at_gives_the_rows_of_the_full_outputs(depth):
    model, params = _text_model(depth)
    rng = np.random.default_rng(depth)
    tokens = rng.integers(0, 11, (5, 6))
    positions = rng.integers(0, 6, (5, 2))  # Two positions per sentence, repeats allowed.
    full, _ = _jitted_apply(model, train=False)(params, {}, tokens)
    at, _ = _jitted_apply(model, train=False)(params, {}, models.TokensAt(tokens, positions))
    assert at.shape == (5, 2, 11)
    np.testing.assert_allclose(
        at, np.take_along_axis(np.asarray(full), positions[..., None], axis=1), rtol=1e-5, atol=1e-5
    )
    # The last block really is cut down: fewer flops than the full forward pass.
    cost = {
        name: jax.jit(lambda p, x: models.apply_model(model, p, {}, x, train=False)[0])
        .lower(params, inputs)
        .compile()
        .cost_analysis()["flops"]
        for name, inputs in (("full", tokens), ("at", models.TokensAt(tokens, positions)))
    }
    assert cost["at"] < cost["full"], cost


def test_tokens_at_needs_one_row_of_positions_per_sentence():
    model, params = _text_model(1)
    tokens = np.zeros((4, 6), np.int32)
    with pytest.raises(ValueError, match=r"TokensAt.positions must have shape \(batch, k\)"):
        models.apply_model(model, params, {}, models.TokensAt(tokens, np.zeros(4, np.int32)), train=False)
    with pytest.raises(ValueError, match=r"TokensAt.positions must have shape \(batch, k\)"):
        models.apply_model(model, params, {}, models.TokensAt(tokens, np.zeros((3, 1))), train=False)
