"""Every documented bad input gets a clear error naming the argument, before heavy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
BATCH = (jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
KEY = jax.random.key(0)
IDENTITY = lambda v: v


def _loss(params, batch):
    return jnp.mean((batch[0] @ params["w"] + params["b"]) ** 2)


@pytest.mark.parametrize("builder", [
    lambda loss: hessjax.hvp(loss, PARAMS, BATCH, PARAMS),
    lambda loss: hessjax.hvp_fn(loss, PARAMS, BATCH),
    lambda loss: hessjax.dataset_hvp_fn(loss, PARAMS, [BATCH, BATCH])(PARAMS),
    lambda loss: hessjax.ggn_fn(lambda p, b: b[0] @ p["w"], lambda o, b: loss(PARAMS, b) * o,
                                PARAMS, BATCH)(PARAMS),
])
def test_non_scalar_loss(builder):
    with pytest.raises(ValueError, match=r"shape \(4, 2\); expected a scalar"):
        builder(lambda p, b: b[0] @ p["w"])


def test_integer_loss():
    with pytest.raises(TypeError, match=r"`loss_fn` returned dtype int32"):
        hessjax.hvp_fn(lambda p, b: jnp.sum(b[1]), PARAMS, BATCH)


@pytest.mark.parametrize("params,message", [
    ({"w": jnp.ones(3, jnp.int32)}, r"`params\['w'\]` has dtype int32; expected a floating dtype"),
    ({"w": 1.0}, r"`params\['w'\]` is a float; expected every leaf"),
    ({"w": [1.0, 2.0]}, r"`params\['w'\]\[0\]` is a float"),
    ({}, r"`params` has no array leaves"),
])
def test_bad_params(params, message):
    with pytest.raises((TypeError, ValueError), match=message):
        hessjax.hvp_fn(_loss, params, BATCH)


def test_vector_unlike_like():
    with pytest.raises(ValueError, match=r"`v` has pytree structure"):
        hessjax.hvp(_loss, PARAMS, BATCH, {"w": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match=r"Leaf 1 of `v` has shape \(2, 3\); expected \(3, 2\)"):
        hessjax.hvp(_loss, PARAMS, BATCH, {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)})
    wrong_matvec = lambda v: {"w": v["w"]}
    with pytest.raises(ValueError, match=r"`matvec\(v\)` has pytree structure"):
        hessjax.trace(wrong_matvec, PARAMS, KEY, num_matvecs=4)
    with pytest.raises(TypeError, match=r"`like\['b'\]` has dtype int32"):
        hessjax.trace(IDENTITY, {"b": jnp.zeros(2, jnp.int32)}, KEY, num_matvecs=4)


@pytest.mark.parametrize("method,num,minimum", [("hutchinson", 1, 2), ("hutch++", 5, 6),
                                                ("xtrace", 3, 4)])
def test_budget_too_small_for_the_method(method, num, minimum):
    with pytest.raises(ValueError, match=rf"`num_matvecs` must be >= {minimum}.*got {num}"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=num, method=method)


def test_budget_error_says_which_multiple():
    with pytest.raises(ValueError, match=r"spends multiples of 3"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=2, method="hutch++")
    with pytest.raises(ValueError, match=r"spends multiples of 2"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=2, method="xtrace")


def test_unknown_method_probe_and_bad_types():
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=4, method="hutch")
    with pytest.raises(ValueError, match=r"`probe` must be one of"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=4, probe="sphere")
    with pytest.raises(TypeError, match=r"`num_matvecs` must be an integer"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=4.0)
    with pytest.raises(TypeError, match=r"`key` must be a single jax.random key"):
        hessjax.trace(IDENTITY, PARAMS, 0, num_matvecs=4)
    with pytest.raises(TypeError, match=r"`matvec` must be callable"):
        hessjax.trace(np.eye(5), PARAMS, KEY, num_matvecs=4)
    with pytest.raises(ValueError, match=r"`chunk_size` must be >= 1"):
        hessjax.trace(IDENTITY, PARAMS, KEY, num_matvecs=4, chunk_size=0)


def test_eigen_arguments():
    with pytest.raises(ValueError, match=r"`k` \(5\) must be <= `num_steps` \(4\)"):
        hessjax.top_eigenvalues(IDENTITY, PARAMS, KEY, k=5, num_steps=4)
    with pytest.raises(ValueError, match=r"`num_steps` \(9\) exceeds the dimension of the space \(8\)"):
        hessjax.lanczos(IDENTITY, PARAMS, KEY, num_steps=9)
    with pytest.raises(ValueError, match=r"`num_steps` \(9\) exceeds the dimension"):
        hessjax.spectral_density(IDENTITY, PARAMS, KEY, num_probes=2, num_steps=9)
    with pytest.raises(ValueError, match=r"`num_probes` must be >= 1"):
        hessjax.spectral_density(IDENTITY, PARAMS, KEY, num_probes=0, num_steps=3)


@pytest.mark.parametrize("rtol", [0.0, -0.1, float("nan"), float("inf")])
def test_rtol_must_be_positive(rtol):
    with pytest.raises(ValueError, match=r"`rtol` must be a positive finite number"):
        hessjax.trace_until(IDENTITY, PARAMS, KEY, rtol=rtol, max_matvecs=10)


def test_sketching_trace_until_under_jit_is_refused():
    with pytest.raises(ValueError, match=r"call it outside jax.jit"):
        jax.jit(lambda key: hessjax.trace_until(IDENTITY, PARAMS, key, rtol=0.1, max_matvecs=20,
                                                method="xtrace"))(KEY)


NAN_MATVEC = lambda v: jax.tree_util.tree_map(lambda x: x * jnp.nan, v)
INF_LOSS = lambda p, b: jnp.sum(jnp.exp(1e4 * p["w"]))


@pytest.mark.parametrize("call", [
    lambda: hessjax.trace(NAN_MATVEC, PARAMS, KEY, num_matvecs=4),
    lambda: hessjax.trace(NAN_MATVEC, PARAMS, KEY, num_matvecs=6, method="hutch++"),
    lambda: hessjax.trace(NAN_MATVEC, PARAMS, KEY, num_matvecs=4, method="xtrace"),
    lambda: hessjax.trace_until(NAN_MATVEC, PARAMS, KEY, rtol=0.1, max_matvecs=20),
    lambda: hessjax.diagonal(NAN_MATVEC, PARAMS, KEY, num_matvecs=2),
    lambda: hessjax.block_traces(NAN_MATVEC, PARAMS, KEY, num_matvecs=2),
    lambda: hessjax.lanczos(NAN_MATVEC, PARAMS, KEY, num_steps=3),
    lambda: hessjax.top_eigenvalues(NAN_MATVEC, PARAMS, KEY, k=1, num_steps=3),
    lambda: hessjax.spectral_density(NAN_MATVEC, PARAMS, KEY, num_probes=1, num_steps=3),
    lambda: hessjax.trace(hessjax.hvp_fn(INF_LOSS, PARAMS, BATCH), PARAMS, KEY, num_matvecs=4),
])
def test_non_finite_operator_is_an_error(call):
    with pytest.raises(hessjax.NonFiniteError, match=r"non-finite"):
        call()


def test_non_finite_error_is_a_value_error_that_says_what_was_non_finite():
    assert issubclass(hessjax.NonFiniteError, ValueError)
    with pytest.raises(hessjax.NonFiniteError, match=r"The operator's products are non-finite"):
        hessjax.trace(NAN_MATVEC, PARAMS, KEY, num_matvecs=4)
    with pytest.raises(hessjax.NonFiniteError, match=r"The loss value is non-finite \(inf\)"):
        hessjax.trace(hessjax.hvp_fn(INF_LOSS, PARAMS, BATCH), PARAMS, KEY, num_matvecs=4)
    with pytest.raises(hessjax.NonFiniteError, match=r"The sampled score gradients are non-finite"):
        hessjax.fisher_trace(lambda p, x: x @ p["w"] * jnp.nan, PARAMS, BATCH[0], KEY, num_samples=2)


# Constant in the parameters: every product is finite (the Hessian of the finite part), only the
# loss value tells that the curvature of this loss is meaningless.
MINUS_INF_LOSS = lambda p, b: _loss(p, b) + jnp.log(0.0)


@pytest.mark.parametrize("call", [
    lambda: hessjax.trace(hessjax.hvp_fn(MINUS_INF_LOSS, PARAMS, BATCH), PARAMS, KEY, num_matvecs=4),
    lambda: hessjax.trace(hessjax.dataset_hvp_fn(MINUS_INF_LOSS, PARAMS, [BATCH, BATCH]), PARAMS, KEY,
                          num_matvecs=4, method="xtrace"),
    lambda: hessjax.top_eigenvalues(hessjax.hvp_fn(MINUS_INF_LOSS, PARAMS, BATCH), PARAMS, KEY, k=1,
                                    num_steps=2),
    lambda: hessjax.diagonal(hessjax.ggn_fn(lambda p, b: b[0] @ p["w"],
                                            lambda o, b: jnp.sum(o ** 2) + jnp.log(0.0), PARAMS, BATCH),
                             PARAMS, KEY, num_matvecs=2),
    lambda: hessjax.hessian_summary(MINUS_INF_LOSS, PARAMS, [BATCH], KEY, max_matvecs=4),
])
def test_non_finite_loss_with_finite_products_is_an_error(call):
    with pytest.raises(hessjax.NonFiniteError, match=r"The loss value is non-finite \(-inf\)"):
        call()


def test_non_finite_loss_under_jit_is_not_checked():
    # No host check under jit (documented): the estimate of the finite part comes back.
    matvec = hessjax.hvp_fn(MINUS_INF_LOSS, PARAMS, BATCH)
    estimate = jax.jit(lambda key: hessjax.trace(matvec, PARAMS, key, num_matvecs=4))(KEY)
    assert np.isfinite(float(estimate.value))


def test_non_finite_operator_under_jit_propagates_nan():
    estimate = jax.jit(lambda key: hessjax.trace(NAN_MATVEC, PARAMS, key, num_matvecs=4))(KEY)
    assert np.isnan(float(estimate.value))


@pytest.mark.parametrize("image", [lambda v: 1j * v, lambda v: (2.7 * v).astype(jnp.int32)],
                         ids=["complex", "integer"])
def test_matvec_must_return_real_floating_vectors(image):
    like = jnp.zeros(5)
    with pytest.raises(TypeError, match=r"`matvec` returned dtype (complex64|int32).*expected a real "
                                        r"floating dtype"):
        hessjax.trace(image, like, KEY, num_matvecs=4)
    with pytest.raises(TypeError, match=r"`matvec` returned dtype"):
        hessjax.top_eigenvalues(image, like, KEY, k=1, num_steps=2)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_like_without_entries(method):
    with pytest.raises(ValueError, match=r"`like` has no entries"):
        hessjax.trace(IDENTITY, {"a": jnp.zeros(0), "b": jnp.zeros((2, 0))}, KEY, num_matvecs=6,
                      method=method)


@pytest.mark.parametrize("call", [
    lambda like: hessjax.diagonal(IDENTITY, like, KEY, num_matvecs=2),
    lambda like: hessjax.block_traces(IDENTITY, like, KEY, num_matvecs=2),
    lambda like: hessjax.trace_until(IDENTITY, like, KEY, rtol=0.1, max_matvecs=4),
    lambda like: hessjax.lanczos(IDENTITY, like, KEY, num_steps=1),
    lambda like: hessjax.spectral_density(IDENTITY, like, KEY, num_probes=1, num_steps=1),
])
def test_like_without_entries_everywhere(call):
    with pytest.raises(ValueError, match=r"`like` has no entries"):
        call({"a": jnp.zeros(0)})


def test_operator_from_params_of_another_structure_names_like():
    matvec = hessjax.hvp_fn(_loss, PARAMS, BATCH)
    with pytest.raises(ValueError, match=r"`like` has pytree structure .*the operator from `hvp_fn` "
                                         r"takes vectors like the `params`"):
        hessjax.trace(matvec, jnp.zeros(8), KEY, num_matvecs=4)
    with pytest.raises(ValueError, match=r"`v` has pytree structure .*expected the structure of the "
                                         r"`params` given to `hvp_fn`"):
        matvec(jnp.zeros(8))


def test_batches_with_mismatched_leading_axes():
    with pytest.raises(ValueError, match=r"same leading \(batch\) axis; got leading sizes \[3, 4\]"):
        hessjax.dataset_hvp_fn(_loss, PARAMS, (jnp.ones((4, 4, 3)), jnp.ones((3, 4))))
    with pytest.raises(ValueError, match=r"`batches` is empty"):
        hessjax.dataset_hvp_fn(_loss, PARAMS, [])


def test_fisher_trace_arguments():
    logits_fn = lambda p, x: x @ p["w"]
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 2"):
        hessjax.fisher_trace(logits_fn, PARAMS, BATCH[0], KEY, num_samples=1)
    with pytest.raises(ValueError, match=r"weights returned by `logits_fn` have shape \(3,\)"):
        hessjax.fisher_trace(lambda p, x: (x @ p["w"], jnp.ones(3)), PARAMS, BATCH[0], KEY,
                             num_samples=2)


def test_toy_models_are_valid_inputs():
    # Guards the fixtures used across the suite: they must pass the same validation.
    hessjax.hvp_fn(toy.mlp_loss, toy.mlp_params(jax.random.key(0), dtype=jnp.float32),
                   toy.classification_batch(jax.random.key(0), dtype=jnp.float32))
