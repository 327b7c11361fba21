"""Trace, diagonal and block-trace estimators: exactness, unbiasedness and calibrated error bars."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy

SPECTRUM = np.concatenate([np.linspace(-1.0, 4.0, 30), [20.0, 12.0]])


@pytest.fixture
def matrix(x64):
    return toy.matrix_with_spectrum(SPECTRUM, seed=1)


def _estimates(matvec, like, method, num_matvecs, seeds, probe="rademacher"):
    # One compiled function for all seeds: the estimator under jit and vmap over keys.
    run = jax.jit(jax.vmap(lambda key: hessjax.trace(matvec, like, key, num_matvecs=num_matvecs,
                                                     method=method, probe=probe)))
    estimate = run(jax.random.split(jax.random.key(0), seeds))
    return np.asarray(estimate.value), np.asarray(estimate.stderr)


@pytest.mark.parametrize("method,probe", [("hutchinson", "rademacher"),
                                          ("hutchinson", "gaussian"), ("hutch++", "rademacher"),
                                          ("xtrace", "rademacher"), ("xtrace", "gaussian")])
def test_estimators_are_unbiased_with_calibrated_error_bars(matrix, method, probe):
    truth = SPECTRUM.sum()
    values, stderrs = _estimates(toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)), method, 12, 400,
                                 probe)
    mean_error = values.mean() - truth
    assert abs(mean_error) < 4 * values.std() / np.sqrt(len(values)), (method, mean_error)
    coverage = np.mean(np.abs(values - truth) <= 2 * stderrs)
    assert coverage > 0.75, (method, coverage)


def test_hutchinson_error_bar_matches_spread_across_seeds(matrix):
    values, stderrs = _estimates(toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)), "hutchinson", 40,
                                 300)
    assert 0.85 < np.median(stderrs) / values.std() < 1.15
    coverage = np.mean(np.abs(values - SPECTRUM.sum()) <= 2 * stderrs)
    assert 0.88 < coverage < 0.99


@pytest.mark.parametrize("method,num_matvecs", [("hutch++", 12), ("xtrace", 8)])
def test_sketching_methods_are_exact_below_their_sketch_rank(x64, method, num_matvecs):
    spectrum = np.zeros(40)
    spectrum[:3] = [5.0, -2.0, 0.5]
    matrix = toy.matrix_with_spectrum(spectrum, seed=2)
    estimate = hessjax.trace(toy.matvec_of(matrix), jnp.zeros(40), jax.random.key(3),
                             num_matvecs=num_matvecs, method=method)
    np.testing.assert_allclose(float(estimate.value), 3.5, rtol=1e-9)
    assert int(estimate.num_matvecs) == num_matvecs
    assert float(estimate.stderr) < 1e-8


def test_budget_is_rounded_down_to_the_methods_multiple(matrix):
    like = jnp.zeros(len(SPECTRUM))
    assert int(hessjax.trace(toy.matvec_of(matrix), like, jax.random.key(0), num_matvecs=17,
                             method="hutch++").num_matvecs) == 15
    assert int(hessjax.trace(toy.matvec_of(matrix), like, jax.random.key(0), num_matvecs=17,
                             method="xtrace").num_matvecs) == 16


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_result_does_not_depend_on_chunk_size_and_matches_jit(matrix, method):
    matvec, like, key = toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)), jax.random.key(5)
    values = [float(hessjax.trace(matvec, like, key, num_matvecs=24, method=method,
                                  chunk_size=chunk).value) for chunk in (1, 5, 24)]
    jitted = jax.jit(lambda key: hessjax.trace(matvec, like, key, num_matvecs=24, method=method,
                                               chunk_size=5))
    values.append(float(jitted(key).value))
    np.testing.assert_allclose(values, values[0], rtol=1e-12)


def test_estimates_on_a_real_network_hessian(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 8, 3))
    batch = toy.classification_batch(jax.random.key(1), n=32)
    truth = np.trace(toy.exact_hessian(toy.mlp_loss, params, batch))
    matvec = hessjax.hvp_fn(toy.mlp_loss, params, batch)
    for method in ("hutchinson", "hutch++", "xtrace"):
        values, _ = _estimates(matvec, params, method, 30, 100)
        assert abs(values.mean() - truth) < 4 * values.std() / np.sqrt(len(values)), method


def test_trace_until_stops_at_the_tolerance_and_equals_a_fixed_budget(matrix):
    matvec, like, key = toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)), jax.random.key(2)
    estimate = hessjax.trace_until(matvec, like, key, rtol=0.05, max_matvecs=2000, chunk_size=5)
    spent = int(estimate.num_matvecs)
    assert float(estimate.stderr) <= 0.05 * abs(float(estimate.value))
    assert spent < 2000 and spent % 5 == 0
    fixed = hessjax.trace(matvec, like, key, num_matvecs=spent, chunk_size=5)
    np.testing.assert_allclose(float(fixed.value), float(estimate.value), rtol=1e-12)
    earlier = hessjax.trace(matvec, like, key, num_matvecs=spent - 5, chunk_size=5)
    assert float(earlier.stderr) > 0.05 * abs(float(earlier.value)) or spent - 5 < 10
    jitted = jax.jit(lambda key: hessjax.trace_until(matvec, like, key, rtol=0.05,
                                                     max_matvecs=2000, chunk_size=5))(key)
    assert int(jitted.num_matvecs) == spent
    np.testing.assert_allclose(float(jitted.value), float(estimate.value), rtol=1e-12)


def test_trace_until_gives_up_at_max_matvecs(matrix):
    estimate = hessjax.trace_until(toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)),
                                   jax.random.key(0), rtol=1e-6, max_matvecs=23, chunk_size=10)
    assert int(estimate.num_matvecs) == 23


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_trace_until_grows_sketching_methods(matrix, method):
    estimate = hessjax.trace_until(toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)),
                                   jax.random.key(0), rtol=0.02, max_matvecs=300, method=method)
    assert float(estimate.stderr) <= 0.02 * abs(float(estimate.value))
    assert int(estimate.num_matvecs) <= 300


def test_common_random_numbers_reduce_the_variance_of_differences(matrix):
    like = jnp.zeros(len(SPECTRUM))
    perturbed = matrix + 0.05 * toy.matrix_with_spectrum(np.linspace(0, 1, len(SPECTRUM)), seed=9)
    keys = jax.random.split(jax.random.key(0), 100)
    run = jax.jit(jax.vmap(lambda m, k: hessjax.trace(toy.matvec_of(m), like, k,
                                                      num_matvecs=10).value, in_axes=(None, 0)))
    same = run(perturbed, keys) - run(matrix, keys)
    independent = run(perturbed, keys) - run(matrix, jax.random.split(jax.random.key(1), 100))
    assert same.std() < 0.2 * independent.std()


def test_diagonal_is_exact_for_diagonal_matrices_and_converges(x64):
    like = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    scale = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([[4.0, 5.0], [6.0, 7.0]])}
    diagonal_matvec = lambda v: jax.tree_util.tree_map(jnp.multiply, scale, v)
    exact = hessjax.diagonal(diagonal_matvec, like, jax.random.key(0), num_matvecs=1)
    np.testing.assert_allclose(toy.ravel(exact.value), toy.ravel(scale))
    assert int(exact.num_matvecs) == 1 and np.isnan(toy.ravel(exact.stderr)).all()

    params = toy.mlp_params(jax.random.key(0), sizes=(4, 5, 3))
    batch = toy.classification_batch(jax.random.key(1), n=16, dim=4)
    truth = np.diag(toy.exact_hessian(toy.mlp_loss, params, batch))
    result = hessjax.diagonal(hessjax.hvp_fn(toy.mlp_loss, params, batch), params,
                              jax.random.key(2), num_matvecs=4000, chunk_size=500)
    estimate, stderr = toy.ravel(result.value), toy.ravel(result.stderr)
    assert np.abs(estimate - truth).max() < 0.1 * np.abs(truth).max()
    assert np.all(np.abs(estimate - truth) < 5 * stderr + 1e-12)


def test_block_traces_sum_to_the_trace_and_are_unbiased(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(4, 5, 3))
    batch = toy.classification_batch(jax.random.key(1), n=16, dim=4)
    matvec = hessjax.hvp_fn(toy.mlp_loss, params, batch)
    blocks = hessjax.block_traces(matvec, params, jax.random.key(3), num_matvecs=20)
    total = hessjax.trace(matvec, params, jax.random.key(3), num_matvecs=20)
    leaves = jax.tree_util.tree_leaves(blocks, is_leaf=lambda x: isinstance(x, hessjax.TraceEstimate))
    assert len(leaves) == 4 and all(int(leaf.num_matvecs) == 20 for leaf in leaves)
    np.testing.assert_allclose(sum(float(leaf.value) for leaf in leaves), float(total.value),
                               rtol=1e-10)
    hessian = toy.exact_hessian(toy.mlp_loss, params, batch)
    bounds = np.cumsum([0] + [x.size for x in jax.tree_util.tree_leaves(params)])
    truths = [np.trace(hessian[a:b, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    many = jax.jit(jax.vmap(lambda key: hessjax.block_traces(matvec, params, key, num_matvecs=20)))(
        jax.random.split(jax.random.key(4), 200))
    for truth, leaf in zip(truths, jax.tree_util.tree_leaves(
            many, is_leaf=lambda x: isinstance(x, hessjax.TraceEstimate))):
        values = np.asarray(leaf.value)
        assert abs(values.mean() - truth) < 4 * values.std() / np.sqrt(len(values)) + 1e-12


@pytest.mark.parametrize("method,num_matvecs", [("xtrace", 8), ("xtrace", 6), ("xtrace", 40),
                                                ("hutch++", 9), ("hutch++", 12), ("hutch++", 60)])
def test_sketching_methods_past_the_dimension_are_exact_and_count_what_they_spend(method,
                                                                                   num_matvecs):
    # A sketch of at least n vectors spans the space: the trace is exact from n products.
    a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    estimate = hessjax.trace(lambda v: a @ v, jnp.zeros(3), jax.random.key(0), num_matvecs=num_matvecs,
                             method=method)
    np.testing.assert_allclose(float(estimate.value), 6.0, rtol=1e-6)
    assert int(estimate.num_matvecs) == 3
    assert float(estimate.stderr) == 0 and np.isinf(float(estimate.dof))
    low, high = estimate.interval(0.95)
    assert float(low) == float(high) == float(estimate.value)


def test_sketching_methods_just_below_the_dimension_still_sketch(x64):
    matrix = toy.matrix_with_spectrum(np.linspace(1.0, 2.0, 6), seed=3)
    # Both from 5 samples: Hutch++'s 5 residual probes (dof 4), XTrace's 5 sketch vectors (its
    # calibrated effective dof 1.5 x 4).
    for method, num_matvecs, spent, dof in [("xtrace", 10, 10, 6.0), ("hutch++", 15, 15, 4.0)]:
        estimate = hessjax.trace(toy.matvec_of(matrix), jnp.zeros(6), jax.random.key(0),
                                 num_matvecs=num_matvecs, method=method)
        assert int(estimate.num_matvecs) == spent and float(estimate.dof) == dof, method


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_trace_until_with_sketches_past_the_dimension_reports_what_it_spent(method):
    a = jnp.diag(jnp.arange(1.0, 9.0))
    matvec = lambda v: a @ v
    estimate = hessjax.trace_until(matvec, jnp.zeros(8), jax.random.key(1), rtol=1e-9,
                                   max_matvecs=200, method=method)
    np.testing.assert_allclose(float(estimate.value), 36.0, rtol=1e-5)
    assert float(estimate.stderr) == 0
    # Budgets b, 2b, ... until a sketch spans the 8 dimensions, which then costs 8 products.
    first = {"hutch++": 12, "xtrace": 8}[method]
    assert int(estimate.num_matvecs) == first + 8


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_vectors_are_accumulated_in_float32(dtype):
    # 600 samples: a bfloat16 count stops at 256, a float16 sum of squares of ~3000 overflows.
    scale = jnp.linspace(1.0, 100.0, 64).astype(dtype)
    matvec = lambda v: scale * v
    like = jnp.zeros(64, dtype)
    truth = float(jnp.sum(scale.astype(jnp.float32)))
    estimates = [hessjax.trace(matvec, like, jax.random.key(0), num_matvecs=600, chunk_size=chunk,
                               probe="gaussian") for chunk in (1, 7, 600)]
    for estimate in estimates:
        assert estimate.value.dtype == jnp.float32 and int(estimate.dof) == 599
        assert abs(float(estimate.value) - truth) < 4 * float(estimate.stderr)
        assert np.isfinite(float(estimate.stderr)) and float(estimate.stderr) > 0
    np.testing.assert_allclose([float(e.value) for e in estimates], float(estimates[0].value),
                               rtol=1e-5)
    np.testing.assert_allclose([float(e.stderr) for e in estimates], float(estimates[0].stderr),
                               rtol=1e-4)
    jitted = jax.jit(lambda key: hessjax.trace(matvec, like, key, num_matvecs=600, chunk_size=7,
                                               probe="gaussian"))(jax.random.key(0))
    np.testing.assert_allclose(float(jitted.value), float(estimates[0].value), rtol=1e-5)
    for method in ("hutch++", "xtrace"):
        sketched = hessjax.trace(matvec, like, jax.random.key(0), num_matvecs=60, method=method)
        assert abs(float(sketched.value) - truth) < 4 * float(sketched.stderr), method
    diagonal = hessjax.diagonal(matvec, like, jax.random.key(0), num_matvecs=2)
    np.testing.assert_allclose(np.asarray(diagonal.value, np.float32), np.asarray(scale, np.float32))


def test_trace_until_under_jit_spends_what_it_spends_eagerly(matrix):
    matvec, like, key = toy.matvec_of(matrix), jnp.zeros(len(SPECTRUM)), jax.random.key(0)
    for max_matvecs, chunk_size in [(20, 50), (23, 10), (7, 3)]:
        run = lambda key, m=max_matvecs, c=chunk_size: hessjax.trace_until(
            matvec, like, key, rtol=1e-9, max_matvecs=m, chunk_size=c)
        eager, jitted = run(key), jax.jit(run)(key)
        assert int(eager.num_matvecs) == int(jitted.num_matvecs) == max_matvecs
        np.testing.assert_allclose(float(jitted.value), float(eager.value), rtol=1e-12)
        np.testing.assert_allclose(float(jitted.dof), max_matvecs - 1)
    # Stopping early inside the remainder logic: the rule holds before the last, shorter chunk.
    run = lambda key: hessjax.trace_until(matvec, like, key, rtol=0.5, max_matvecs=23, chunk_size=10,
                                          min_matvecs=2)
    assert int(jax.jit(run)(key).num_matvecs) == int(run(key).num_matvecs) == 10


def test_student_t_intervals_match_scipy():
    from scipy import stats

    dof = np.array([1.0, 2.0, 3.0, 7.0, 29.0, 30.0, 100.0, 1e4, np.inf])
    estimate = hessjax.TraceEstimate(jnp.zeros(len(dof)), jnp.ones(len(dof)), jnp.asarray(10),
                                     jnp.asarray(dof, jnp.float32))
    for level in (0.5, 0.9, 0.95, 0.99, 0.999):
        low, high = jax.jit(lambda e, level=level: e.interval(level))(estimate)
        np.testing.assert_allclose(high, stats.t.ppf((1 + level) / 2, dof), rtol=1e-5)
        np.testing.assert_allclose(low, -np.asarray(high))
    with pytest.raises(ValueError, match=r"`level` must be in \(0, 1\)"):
        estimate.interval(95)


def test_the_library_imports_and_computes_intervals_without_scipy():
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'scipy': raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import jax.numpy as jnp, hessjax\n"
            "e = hessjax.TraceEstimate(jnp.array(0.0), jnp.array(1.0), jnp.array(2), jnp.array(1.0))\n"
            "print(round(float(e.interval(0.95)[1]), 3))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12.706"


def test_xtrace_leave_two_out_estimates_match_explicit_sketches(x64):
    # The closed form behind XTrace's error bar, against a QR of each reduced sketch.
    import importlib

    trace_module = importlib.import_module("hessjax.trace")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    a = a + a.T
    omega = rng.choice([-1.0, 1.0], size=(5, 12))
    q, r = np.linalg.qr(a @ omega.T)
    h = q.T @ a @ q
    w = q.T @ omega.T
    s_cols = trace_module._normalized_inverse_transpose_columns(jnp.asarray(r))
    pairs = np.asarray(trace_module._leave_two_out_estimates(jnp.asarray(h), jnp.asarray(w),
                                                             jnp.asarray(r), s_cols))
    for i, j in [(0, 1), (1, 0), (3, 2), (4, 0), (2, 4)]:
        kept = [k for k in range(5) if k not in (i, j)]
        basis = np.linalg.qr(a @ omega[kept].T)[0]
        outside = omega[j] - basis @ (basis.T @ omega[j])
        explicit = np.trace(basis.T @ a @ basis) + outside @ a @ outside
        np.testing.assert_allclose(pairs[i, j], explicit, rtol=1e-10)
