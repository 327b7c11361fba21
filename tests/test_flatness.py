"""Reparametrisation-aware flatness against dense float64 Hessians, and its invariance.

Two small models with exact symmetries: a Flax ReLU MLP (a hidden neuron's input weights times
alpha > 0 and its output weights times 1/alpha) and an MLP whose first layer feeds a LayerNorm
without epsilon (that layer's weights and bias times alpha). Under both the raw Hessian trace changes
and the adaptive sharpness and relative flatness must not.
"""

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy

KERNEL0 = ("params", "Dense_0", "kernel")
# Positive per-neuron factors of the ReLU layer, and the LayerNorm layer's factor.
NEURON_SCALES = np.array([3.0, 0.5, 2.0, 1.0, 0.25])
LAYER_SCALE = 0.2


class _ReluMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(5, dtype=jnp.float64, param_dtype=jnp.float64)(x))
        return nn.Dense(2, dtype=jnp.float64, param_dtype=jnp.float64)(x)


# Models are built once: the same loss function object lets every test reuse the compiled products
# and estimators (compilation is most of this file's time). Their arrays are float64: use with `x64`.
@functools.cache
def _relu_model():
    model = _ReluMLP()
    x, y = toy.classification_batch(jax.random.key(1), n=24, dim=3, classes=2)
    params = model.init(jax.random.key(0), x)
    loss = lambda p, batch: toy.cross_entropy(model.apply(p, batch[0]), batch[1])
    return model.apply, loss, params, (x, y)


def _rescale_relu_neurons(params):
    """Flax kernels are (inputs, neurons): neuron s is column s of Dense_0 and row s of Dense_1."""
    dense0, dense1 = params["params"]["Dense_0"], params["params"]["Dense_1"]
    return {"params": {
        "Dense_0": {"kernel": dense0["kernel"] * NEURON_SCALES, "bias": dense0["bias"] * NEURON_SCALES},
        "Dense_1": {"kernel": dense1["kernel"] / NEURON_SCALES[:, None], "bias": dense1["bias"]}}}


def _layernorm_logits(params, x):
    h = x @ params["w1"] + params["b1"]
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True))  # epsilon 0: exact symmetry
    return jnp.tanh(h * params["gain"] + params["shift"]) @ params["w2"] + params["b2"]


@functools.cache
def _layernorm_model():
    keys = jax.random.split(jax.random.key(2), 4)
    params = {"w1": jax.random.normal(keys[0], (4, 3), jnp.float64),  # more inputs than neurons
              "b1": 0.1 * jax.random.normal(keys[1], (3,), jnp.float64),
              "gain": jnp.array([1.0, 0.7, 1.3]), "shift": jnp.array([0.1, -0.2, 0.0]),
              "w2": jax.random.normal(keys[2], (3, 3), jnp.float64), "b2": jnp.zeros(3)}
    x, y = toy.classification_batch(keys[3], n=24, dim=4, classes=3)
    loss = lambda p, batch: toy.cross_entropy(_layernorm_logits(p, batch[0]), batch[1])
    return _layernorm_logits, loss, params, (x, y)


def _rescale_layernorm_input(params):
    return {**params, "w1": params["w1"] * LAYER_SCALE, "b1": params["b1"] * LAYER_SCALE}


@functools.partial(jax.jit, static_argnums=0)
def _dense_hessian(loss, params, batch):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jax.hessian(lambda f: loss(unravel(f), batch))(flat)


def _exact_hessian(loss, params, batch):
    """``toy.exact_hessian``, compiled once per loss (that one builds a new function at every call)."""
    return np.asarray(_dense_hessian(loss, params, batch))


def _kernel_block(hessian, params, select):
    """The Hessian block of the kernel ``select(params)``, indexed ``[i, s, j, t]`` (inputs, neurons)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    index = np.asarray(select(unravel(jnp.arange(flat.size, dtype=jnp.float64)))).astype(int)
    return hessian[np.ix_(index.ravel(), index.ravel())].reshape(index.shape + index.shape)


def _exact_relative_flatness(hessian, params, select):
    """Petzka et al.: sum over neurons s, s' (columns) of <w_s, w_s'> tr(H_{s,s'})."""
    kernel = np.asarray(select(params))
    return np.einsum("st,isit->", kernel.T @ kernel, _kernel_block(hessian, params, select))


def _exact_adaptive_sharpness(hessian, params):
    scale = np.abs(toy.ravel(params))
    return np.trace(scale[:, None] * hessian * scale[None, :])


def _kernel0(params):
    return params["params"]["Dense_0"]["kernel"]


def _w1(params):
    return params["w1"]


MODELS = {
    # (model, rescaling, the layer whose relative flatness is invariant, selected by path and by hand)
    "relu_mlp": (_relu_model, _rescale_relu_neurons, "params/Dense_0/kernel", _kernel0),
    "layernorm": (_layernorm_model, _rescale_layernorm_input, "w1", _w1),
}


@pytest.mark.parametrize("name", MODELS)
def test_estimators_match_dense_hessian(x64, name):
    build, _, layer, select = MODELS[name]
    _, loss, params, batch = build()
    hessian = _exact_hessian(loss, params, batch)
    key = jax.random.key(3)
    for estimate, exact, dimension in [
            (lambda **kw: hessjax.adaptive_sharpness(loss, params, batch, key, **kw),
             _exact_adaptive_sharpness(hessian, params), toy.ravel(params).size),
            (lambda **kw: hessjax.relative_flatness(loss, params, batch, key, layer=layer, **kw),
             _exact_relative_flatness(hessian, params, select), select(params).shape[0] * min(
                 select(params).shape))]:
        hutchinson = estimate(num_matvecs=200)
        assert abs(hutchinson.value - exact) < 4 * hutchinson.stderr, (name, hutchinson, exact)
        # A Hutch++ sketch spanning the whole space leaves no remainder: exact. (XTrace is exact only
        # for operators of rank below its sketch size, at most the dimension: these have full rank.)
        np.testing.assert_allclose(estimate(num_matvecs=3 * dimension, method="hutch++").value, exact,
                                   rtol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_measures_are_invariant_where_the_hessian_trace_is_not(x64, name):
    build, rescale, layer, select = MODELS[name]
    apply, loss, params, batch = build()
    rescaled = rescale(params)
    np.testing.assert_allclose(apply(rescaled, batch[0]), apply(params, batch[0]), rtol=1e-12)

    hessians = [_exact_hessian(loss, p, batch) for p in (params, rescaled)]
    raw = [np.trace(h) for h in hessians]
    assert abs(raw[1] - raw[0]) > 0.5 * min(raw), raw
    adaptive = [_exact_adaptive_sharpness(h, p) for h, p in zip(hessians, (params, rescaled))]
    np.testing.assert_allclose(adaptive[1], adaptive[0], rtol=1e-10)
    spectra = [np.linalg.eigvalsh(np.abs(toy.ravel(p))[:, None] * h * np.abs(toy.ravel(p)))
               for h, p in zip(hessians, (params, rescaled))]
    np.testing.assert_allclose(spectra[1], spectra[0], atol=1e-10 * np.abs(spectra[0]).max())
    relative = [_exact_relative_flatness(h, p, select) for h, p in zip(hessians, (params, rescaled))]
    np.testing.assert_allclose(relative[1], relative[0], rtol=1e-10)

    # The estimators see the same operator, so the same key gives the same value.
    key = jax.random.key(4)
    estimates = {
        "trace": lambda p: hessjax.trace(hessjax.hvp_fn(loss, p, batch), p, key, num_matvecs=10),
        "adaptive": lambda p: hessjax.adaptive_sharpness(loss, p, batch, key, num_matvecs=10),
        "relative": lambda p: hessjax.relative_flatness(loss, p, batch, key, layer=layer,
                                                        num_matvecs=10)}
    values = {k: [float(f(p).value) for p in (params, rescaled)] for k, f in estimates.items()}
    print(name, "exact raw, adaptive, relative:", raw, adaptive, relative, "estimates:", values)
    assert abs(values["trace"][1] - values["trace"][0]) > 0.5 * min(values["trace"])
    np.testing.assert_allclose(values["adaptive"][1], values["adaptive"][0], rtol=1e-8)
    np.testing.assert_allclose(values["relative"][1], values["relative"][0], rtol=1e-8)

    densities = [hessjax.spectral_density(hessjax.adaptive_operator(hessjax.hvp_fn(loss, p, batch), p),
                                          p, key, num_probes=2, num_steps=8) for p in (params, rescaled)]
    np.testing.assert_allclose(hessjax.effective_rank(densities[1]),
                               hessjax.effective_rank(densities[0]), rtol=1e-8)


def test_neurons_are_the_columns_of_a_flax_kernel(x64):
    _, loss, params, batch = _relu_model()
    hessian = _exact_hessian(loss, params, batch)
    columns = _exact_relative_flatness(hessian, params, _kernel0)
    block, kernel = _kernel_block(hessian, params, _kernel0), np.asarray(_kernel0(params))
    rows = np.einsum("ij,isjs->", kernel @ kernel.T, block)  # the other convention
    assert abs(rows - columns) > 0.1 * abs(columns), (rows, columns)

    def exact(layer, dimension=9):  # a Hutch++ sketch of the whole space of the operator
        return hessjax.relative_flatness(loss, params, batch, jax.random.key(0), layer=layer,
                                         num_matvecs=3 * dimension, method="hutch++").value

    for layer in ("params/Dense_0/kernel", KERNEL0, list(KERNEL0), _kernel0,
                  jax.tree_util.tree_leaves_with_path(params)[1][0]):
        np.testing.assert_allclose(exact(layer), columns, rtol=1e-9)
    # Selecting the transpose makes the rows the neurons (5 inputs, 3 neurons: a 5 x 3 space).
    np.testing.assert_allclose(exact(lambda p: _kernel0(p).T, 15), rows, rtol=1e-9)


def test_relative_flatness_of_the_output_layer_uses_the_smaller_factor(x64):
    _, loss, params, batch = _relu_model()
    select = lambda p: p["params"]["Dense_1"]["kernel"]  # 5 inputs, 2 neurons
    operator = hessjax.relative_flatness_operator(hessjax.hvp_fn(loss, params, batch), params,
                                                  "params/Dense_1/kernel")
    assert operator.like.shape == (5, 2)
    exact = _exact_relative_flatness(_exact_hessian(loss, params, batch), params, select)
    estimate = hessjax.trace(*operator, jax.random.key(0), num_matvecs=30, method="hutch++")
    np.testing.assert_allclose(estimate.value, exact, rtol=1e-9)


def test_measures_under_jit_equal_eager(x64):
    _, loss, params, batch = _relu_model()
    key = jax.random.key(5)
    run = lambda p: (hessjax.adaptive_sharpness(loss, p, batch, key, num_matvecs=4, eta=0.1).value,
                     hessjax.relative_flatness(loss, p, batch, key, layer=KERNEL0, num_matvecs=4).value)
    np.testing.assert_allclose(jax.jit(run)(params), run(params), rtol=1e-10)


def test_eta_adds_to_the_scale_and_breaks_exact_invariance(x64):
    _, loss, params, batch = _relu_model()
    values = []
    for p in (params, _rescale_relu_neurons(params)):
        scale = toy.ravel(hessjax.adaptive_scale(p, eta=0.1))
        np.testing.assert_allclose(scale, np.abs(toy.ravel(p)) + 0.1, rtol=1e-15)
        exact = np.sum(scale ** 2 * np.diag(_exact_hessian(loss, p, batch)))
        value = hessjax.adaptive_sharpness(loss, p, batch, jax.random.key(0), num_matvecs=96,
                                           method="hutch++", eta=0.1).value
        np.testing.assert_allclose(value, exact, rtol=1e-9)
        values.append(exact)
    assert abs(values[1] - values[0]) > 0.01 * values[0], values


def test_effective_rank_from_eigenvalues():
    assert float(hessjax.effective_rank(jnp.array([1.0] * 3 + [0.0] * 7))) == pytest.approx(3, rel=1e-6)
    assert float(hessjax.effective_rank(jnp.array([2.0, -2.0, 2.0, 0.0]))) == pytest.approx(3, rel=1e-6)
    p = np.array([0.75, 0.25])
    assert float(hessjax.effective_rank(jnp.array([3.0, -1.0]))) == pytest.approx(
        np.exp(-np.sum(p * np.log(p))), rel=1e-6)
    spectrum = jnp.array([5.0, 1.0, 0.5, 0.01, 0.0])
    rank = float(hessjax.effective_rank(spectrum))
    assert 1 < rank < 4 and float(hessjax.effective_rank(7 * spectrum)) == pytest.approx(rank, rel=1e-6)


def _density(matrix, key=0):
    return hessjax.spectral_density(toy.matvec_of(matrix), jnp.zeros(40), jax.random.key(key),
                                    num_probes=1000, num_steps=8)


def test_effective_rank_from_a_density_of_a_projector_is_its_rank(x64):
    # A diagonal projector and Rademacher probes: every probe puts exactly r/n of its mass at 1.
    density = _density(np.diag([1.0] * 4 + [0.0] * 36))
    np.testing.assert_allclose(hessjax.effective_rank(density), 4.0, rtol=1e-10)


def test_effective_rank_from_a_density_approaches_the_exact_one(x64):
    eigenvalues = np.concatenate([[4.0, 3.0, -2.0, 1.0, 0.5], np.zeros(35)])
    matrix = toy.matrix_with_spectrum(eigenvalues, seed=1)
    exact = float(hessjax.effective_rank(jnp.asarray(eigenvalues)))
    # 8 steps make each probe's quadrature exact (6 distinct eigenvalues); what is left is probe
    # noise: over 15 keys the estimate's spread was 0.064 (0.20 at 200 probes), and its mean 4.0996.
    assert abs(float(hessjax.effective_rank(_density(matrix))) - exact) < 0.25, exact


LOSS = lambda p, batch: jnp.mean((batch @ p["w"] + p["b"]) ** 2)
PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "steps": jnp.zeros(())}
BATCH = jnp.ones((4, 3))
KEY = jax.random.key(0)


@pytest.mark.parametrize("eta,error,message", [
    (-0.1, ValueError, r"`eta` must be a finite number >= 0"),
    (float("nan"), ValueError, r"`eta` must be a finite number >= 0"),
    ("0.1", TypeError, r"`eta` must be a number >= 0; got '0.1'"),
    (True, TypeError, r"`eta` must be a number"),
])
def test_bad_eta(eta, error, message):
    with pytest.raises(error, match=message):
        hessjax.adaptive_sharpness(LOSS, PARAMS, BATCH, KEY, num_matvecs=2, eta=eta)
    with pytest.raises(error, match=message):
        hessjax.adaptive_scale(PARAMS, eta=eta)


@pytest.mark.parametrize("layer,error,message", [
    ("b", ValueError, r"`layer` selected an array of shape \(2,\); expected a 2-D kernel"),
    ("steps", ValueError, r"`layer` selected an array of shape \(\); expected a 2-D kernel"),
    ("dense/kernel", ValueError, r"`layer` 'dense/kernel' matches no leaf of `params`; its leaves "
                                 r"are \['b', 'steps', 'w'\]"),
    (("w", 0), ValueError, r"`layer` 'w/0' matches no leaf"),
    ((), TypeError, r"`layer` must select one weight matrix"),
    (3, TypeError, r"`layer` must select one weight matrix"),
    (lambda p: p, TypeError, r"`layer` selected a dict; expected a 2-D floating-point array"),
    (lambda p: jnp.ones((2, 2), jnp.int32), TypeError, r"`layer` selected an array of dtype int32"),
    (lambda p: p["w"] ** 2, ValueError, r"`layer` must be a selection of entries of `params`; it is "
                                        "not linear"),
    (lambda p: 2 * p["w"], ValueError, r"`layer` must select distinct entries"),
    (lambda p: jnp.ones((3, 2)), ValueError, r"`layer` must select distinct entries"),
])
def test_bad_layer(layer, error, message):
    with pytest.raises(error, match=message):
        hessjax.relative_flatness(LOSS, PARAMS, BATCH, KEY, layer=layer, num_matvecs=2)


def test_layer_path_to_a_subtree():
    # Keys are compared whole: 'dense' matches the two leaves under it, not 'dense2'.
    params = {"dense": {"w": PARAMS["w"], "b": PARAMS["b"]}, "dense2": PARAMS["w"]}
    with pytest.raises(ValueError, match=r"`layer` 'dense' matches 2 leaves of `params`; expected the "
                                         "path of one kernel"):
        hessjax.relative_flatness_operator(lambda v: v, params, "dense")
    assert hessjax.relative_flatness_operator(lambda v: v, params, "dense2").like.shape == (3, 2)


def test_relative_flatness_of_a_slice_and_of_any_matvec():
    # A slice of a kernel selects a subset of neurons; a user matvec (here the identity) works too.
    operator = hessjax.relative_flatness_operator(lambda v: v, PARAMS, lambda p: p["w"][:, :1])
    assert operator.like.shape == (3, 1)
    estimate = hessjax.trace(*operator, KEY, num_matvecs=2)
    assert float(estimate.value) == pytest.approx(9.0, rel=1e-6)  # 3 inputs times <w_1, w_1> = 3


def test_layer_paths_into_nnx_state():
    from flax import nnx

    _, state = nnx.split(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Param)
    kernel_path = next(path for path, _ in jax.tree_util.tree_leaves_with_path(state)
                       if path[0].key == "kernel")  # (DictKey('kernel'), GetAttrKey('value'))
    kernel = next(leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)
                  if path == kernel_path)
    # With A = I, kappa = sum_s <w_s, w_s> * inputs; Hutch++ sketches the whole 3 x 3 space.
    for layer in (kernel_path, "kernel"):
        operator = hessjax.relative_flatness_operator(lambda v: v, state, layer)
        estimate = hessjax.trace(*operator, KEY, num_matvecs=27, method="hutch++")
        assert float(estimate.value) == pytest.approx(3 * float(jnp.sum(kernel ** 2)), rel=1e-5)


def test_vectors_unlike_the_operator():
    with pytest.raises(ValueError, match=r"Leaf 0 of the operator's vector has shape \(3,\); expected "
                                         r"\(2,\), the shape of the same leaf of `scale`"):
        hessjax.trace(hessjax.scaled_operator(lambda v: v, [jnp.ones(2)]), [jnp.ones(3)], KEY,
                      num_matvecs=2)
    with pytest.raises(ValueError, match=r"expected the structure of `scale`"):
        hessjax.trace(hessjax.scaled_operator(lambda v: v, [jnp.ones(2)]), (jnp.ones(2),), KEY,
                      num_matvecs=2)
    operator = hessjax.relative_flatness_operator(lambda v: v, PARAMS, "w")
    with pytest.raises(ValueError, match=r"got a vector of shape \(2, 2\); expected \(3, 2\)"):
        hessjax.trace(operator.matvec, jnp.ones((2, 2)), KEY, num_matvecs=2)
    with pytest.raises(TypeError, match=r"`scale\['w'\]` has dtype int32"):
        hessjax.scaled_operator(lambda v: v, {"w": jnp.ones(2, jnp.int32)})


@pytest.mark.parametrize("spectrum,error,message", [
    (jnp.array([1, 2]), TypeError, r"`spectrum` must be a SpectralDensity or a floating-point array"),
    ([1.0, 2.0], TypeError, r"`spectrum` must be a SpectralDensity .* got list"),
    (jnp.zeros(3), ValueError, r"`spectrum` is all zero"),
    (jnp.zeros(0), ValueError, r"`spectrum` is empty"),
])
def test_bad_spectrum(spectrum, error, message):
    with pytest.raises(error, match=message):
        hessjax.effective_rank(spectrum)
