"""Curvature-vector products against dense Hessians from ``jax.hessian`` (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy

CASES = {
    "mlp": (toy.mlp_params, toy.mlp_loss, toy.classification_batch),
    "cnn": (toy.cnn_params, toy.cnn_loss, toy.image_batch),
}


def _case(name, seed=0):
    make_params, loss, make_batch = CASES[name]
    key = jax.random.key(seed)
    return make_params(key), loss, make_batch(jax.random.fold_in(key, 7))


def _random_like(params, seed):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hvp_and_hvp_fn_match_dense_hessian(x64, name):
    params, loss, batch = _case(name)
    hessian = toy.exact_hessian(loss, params, batch)
    v = _random_like(params, 1)
    expected = hessian @ toy.ravel(v)
    np.testing.assert_allclose(toy.ravel(hessjax.hvp(loss, params, batch, v)), expected,
                               rtol=1e-10, atol=1e-12)
    matvec = hessjax.hvp_fn(loss, params, batch)
    np.testing.assert_allclose(toy.ravel(matvec(v)), expected, rtol=1e-10, atol=1e-12)


def test_hvp_fn_vmaps_over_probes(x64):
    params, loss, batch = _case("mlp")
    hessian = toy.exact_hessian(loss, params, batch)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    probes = jax.random.normal(jax.random.key(3), (4, flat.size), flat.dtype)
    images = jax.vmap(lambda z: jax.flatten_util.ravel_pytree(
        hessjax.hvp_fn(loss, params, batch)(unravel(z)))[0])(probes)
    np.testing.assert_allclose(images, probes @ hessian, rtol=1e-10, atol=1e-12)


def test_products_work_under_jit(x64):
    params, loss, batch = _case("cnn")
    v = _random_like(params, 2)
    expected = toy.exact_hessian(loss, params, batch) @ toy.ravel(v)
    jitted = jax.jit(lambda p, b, v: hessjax.hvp_fn(loss, p, b)(v))
    np.testing.assert_allclose(toy.ravel(jitted(params, batch, v)), expected, rtol=1e-10)
    jitted = jax.jit(lambda p, b, v: hessjax.hvp(loss, p, b, v))
    np.testing.assert_allclose(toy.ravel(jitted(params, batch, v)), expected, rtol=1e-10)


@pytest.mark.parametrize("unroll", [None, 1])
def test_dataset_hvp_of_stacked_batches_is_hessian_of_mean_loss(x64, unroll):
    params = toy.mlp_params(jax.random.key(0))
    x, y = toy.classification_batch(jax.random.key(1), n=24)
    stacked = (x.reshape(4, 6, -1), y.reshape(4, 6))
    v = _random_like(params, 5)
    matvec = hessjax.dataset_hvp_fn(toy.mlp_loss, params, stacked, unroll=unroll)
    expected = toy.exact_hessian(toy.mlp_loss, params, (x, y)) @ toy.ravel(v)
    np.testing.assert_allclose(toy.ravel(matvec(v)), expected, rtol=1e-10, atol=1e-12)
    jitted = jax.jit(lambda m, v: m(v))
    np.testing.assert_allclose(toy.ravel(jitted(matvec, v)), expected, rtol=1e-10, atol=1e-12)


def test_dataset_hvp_weights_unequal_batches_by_size(x64):
    params = toy.mlp_params(jax.random.key(0))
    x, y = toy.classification_batch(jax.random.key(1), n=20)
    batches = iter([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:20], y[8:20])])
    matvec = hessjax.dataset_hvp_fn(toy.mlp_loss, params, batches)
    v = _random_like(params, 6)
    expected = toy.exact_hessian(toy.mlp_loss, params, (x, y)) @ toy.ravel(v)
    np.testing.assert_allclose(toy.ravel(matvec(v)), expected, rtol=1e-10, atol=1e-12)


def test_ggn_matches_explicit_jacobians_and_is_psd(x64):
    params, _, (x, y) = _case("mlp")
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    model = lambda p, batch: toy.mlp_logits(p, batch[0])
    loss_of_output = lambda logits, batch: toy.cross_entropy(logits, batch[1])
    jacobian = jax.jacobian(lambda f: model(unravel(f), (x, y)).ravel())(flat)
    logits = model(params, (x, y))
    output_hessian = jax.hessian(
        lambda o: loss_of_output(o.reshape(logits.shape), (x, y)))(logits.ravel())
    expected = np.asarray(jacobian.T @ output_hessian @ jacobian)
    matvec = hessjax.ggn_fn(model, loss_of_output, params, (x, y))
    dense = np.stack([toy.ravel(matvec(unravel(e))) for e in jnp.eye(flat.size)])
    np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-12)
    assert np.linalg.eigvalsh(dense).min() > -1e-10
    hessian = toy.exact_hessian(toy.mlp_loss, params, (x, y))
    assert np.linalg.eigvalsh(hessian).min() < -1e-6, "the toy Hessian should be indefinite"


def test_float32_products_stay_float32():
    params, loss, batch = toy.mlp_params(jax.random.key(0), dtype=jnp.float32), toy.mlp_loss, \
        toy.classification_batch(jax.random.key(1), dtype=jnp.float32)
    out = hessjax.hvp_fn(loss, params, batch)(params)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(out)} == {np.dtype(np.float32)}


def _scaled_loss(scale, params, batch):
    return scale * toy.mlp_loss(params, batch)


def test_partial_losses_bind_arrays_as_arguments_and_compile_once(x64):
    # A loss with constants that change between calls (BatchNorm statistics per checkpoint) given as
    # a `Partial`: the constants are arguments of the compiled products, not baked into them.
    import importlib

    from hessjax import products

    trace_module = importlib.import_module("hessjax.trace")  # the module, not the function

    key = jax.random.key(0)
    params = toy.mlp_params(key)
    batch = toy.classification_batch(jax.random.key(1))
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    reference = hessjax.hvp(toy.mlp_loss, params, batch, v)
    sizes = []
    for scale in (2.0, 3.0, 0.5):
        loss_fn = jax.tree_util.Partial(_scaled_loss, jnp.asarray(scale))
        for name, product in (("hvp", hessjax.hvp(loss_fn, params, batch, v)),
                              ("hvp_fn", hessjax.hvp_fn(loss_fn, params, batch)(v)),
                              ("dataset", hessjax.dataset_hvp_fn(loss_fn, params, [batch])(v))):
            for got, want in zip(jax.tree_util.tree_leaves(product),
                                 jax.tree_util.tree_leaves(reference)):
                np.testing.assert_allclose(got, scale * want, rtol=1e-10, err_msg=name)
        hessjax.trace(hessjax.hvp_fn(loss_fn, params, batch), params, key, num_matvecs=4)
        sizes.append((products._hvp._cache_size(), products._linearized_gradient._cache_size(),
                      trace_module._probe_moments._cache_size()))
    assert sizes[0] == sizes[1] == sizes[2], sizes
    # A new closure is a new function: it compiles afresh (the documented alternative).
    hessjax.hvp(lambda p, b: 2.0 * toy.mlp_loss(p, b), params, batch, v)
    assert products._hvp._cache_size() == sizes[0][0] + 1


def test_partials_with_non_array_arguments_stay_static():
    # A string or a Python number bound in a Partial is a setting used in Python (control flow,
    # shapes), not an array: the Partial stays static.
    loss_fn = jax.tree_util.Partial(lambda mode, p, b: jnp.sum(p ** 2) * (2.0 if mode == "double"
                                                                            else 1.0), "double")
    product = hessjax.hvp(loss_fn, jnp.ones(3), None, jnp.ones(3))
    np.testing.assert_allclose(product, 4.0 * np.ones(3))
    sized = jax.tree_util.Partial(lambda n, p, b: jnp.sum(jnp.ones(n) * p ** 2), 3)
    np.testing.assert_allclose(hessjax.hvp_fn(sized, jnp.ones(3), None)(jnp.ones(3)), 2.0 * np.ones(3))


def test_committed_parameters_compile_each_chunk_kernel_once():
    # Parameters put on a device (a restored checkpoint, `jax.device_put`) make every compiled
    # result committed; the estimators' own first inputs (no samples yet, the first Lanczos vector)
    # are placed like them, so a kernel's first and later calls share one program, and the trace,
    # `trace_until`, the block traces and `hessian_summary` of one operator share one kernel.
    import importlib

    from hessjax import _vectors, fisher

    trace_module = importlib.import_module("hessjax.trace")  # the module, not the function
    device = jax.devices()[0]
    params = jax.device_put(toy.mlp_params(jax.random.key(3), dtype=jnp.float32), device)
    batches = [jax.device_put(toy.classification_batch(jax.random.key(4), n=8, dtype=jnp.float32),
                              device)]
    matvec = hessjax.dataset_hvp_fn(toy.mlp_loss, params, batches)
    key = jax.random.key(5)
    moments, products = trace_module._probe_moments._cache_size, _vectors._apply_chunk._cache_size
    before = moments(), products()
    hessjax.trace_until(matvec, params, key, rtol=1e-9, max_matvecs=6, chunk_size=2)
    assert moments() == before[0] + 1  # three chunks, one program
    for call in (lambda: hessjax.trace(matvec, params, key, num_matvecs=5, chunk_size=2),
                 lambda: hessjax.block_traces(matvec, params, key, num_matvecs=4, chunk_size=2),
                 lambda: hessjax.hessian_summary(toy.mlp_loss, params, batches, key, rtol=1e-9,
                                                 max_matvecs=6, chunk_size=2, top_k=1,
                                                 lanczos_steps=4, block_matvecs=4,
                                                 density_probes=0)):
        call()
        assert moments() == before[0] + 2  # + the remainder chunk of one probe, once
    assert products() == before[1] + 1  # Lanczos: the first vector's product and the later ones'
    hessjax.top_eigenvalues(matvec, params, key, k=1, num_steps=5)
    assert products() == before[1] + 1
    scores = fisher._score_moments._cache_size()
    hessjax.fisher_trace(toy.mlp_logits, params, batches[0][0], key, num_samples=6, chunk_size=2)
    assert fisher._score_moments._cache_size() == scores + 1
