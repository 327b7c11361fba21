"""Lanczos, top eigenpairs and stochastic Lanczos quadrature against ``numpy.linalg.eigh``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy


def _tridiagonal(alphas, betas):
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def test_full_lanczos_reproduces_the_spectrum(x64):
    spectrum = np.linspace(-3.0, 5.0, 25)
    matrix = toy.matrix_with_spectrum(spectrum)
    result = hessjax.lanczos(toy.matvec_of(matrix), jnp.zeros(25), jax.random.key(0), num_steps=25)
    alphas, betas = result.alphas, result.betas
    assert alphas.shape == (25,) and betas.shape == (24,) and int(result.num_matvecs) == 25
    np.testing.assert_allclose(np.linalg.eigvalsh(_tridiagonal(alphas, betas)), spectrum,
                               atol=1e-10)



@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
def test_full_lanczos_restarts_after_breakdown_and_recovers_multiplicities(x64, compiled):
    # Three distinct eigenvalues: the Krylov space of one start has dimension 3, so the recurrence
    # breaks down at step 3 and twice more before step 12; each restart must continue orthogonally.
    spectrum = np.repeat([-2.0, 1.0, 4.0], 4)
    matrix = toy.matrix_with_spectrum(spectrum, seed=5)
    run = lambda key: hessjax.lanczos(toy.matvec_of(matrix), jnp.zeros(12), key, num_steps=12)
    alphas, betas, _ = (jax.jit(run) if compiled else run)(jax.random.key(1))
    assert np.sum(np.asarray(betas) == 0) >= 2  # the restarts happened, and wrote beta = 0
    np.testing.assert_allclose(np.linalg.eigvalsh(_tridiagonal(alphas, betas)), spectrum, atol=1e-9)

def test_top_eigenvalues_match_eigh_on_a_network_hessian(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 8, 3))
    batch = toy.classification_batch(jax.random.key(1), n=32)
    hessian = toy.exact_hessian(toy.mlp_loss, params, batch)
    exact = np.linalg.eigvalsh(hessian)[::-1][:3]
    eigen = hessjax.top_eigenvalues(hessjax.hvp_fn(toy.mlp_loss, params, batch), params,
                                    jax.random.key(2), k=3, num_steps=40)
    np.testing.assert_allclose(eigen.values, exact, rtol=1e-6)
    vectors = np.stack([toy.ravel(jax.tree_util.tree_map(lambda x, i=i: x[i], eigen.vectors))
                        for i in range(3)])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-10)
    direct = np.linalg.norm(vectors @ hessian - eigen.values[:, None] * vectors, axis=1)
    np.testing.assert_allclose(eigen.residuals, direct, rtol=1e-6, atol=1e-12)
    assert np.all(np.asarray(eigen.residuals) < 1e-6 * abs(exact[0]))


def test_top_eigenvalues_are_algebraically_largest_and_survive_breakdown(x64):
    spectrum = np.zeros(30)
    spectrum[:4] = [-10.0, 3.0, 2.0, 1.0]
    matrix = toy.matrix_with_spectrum(spectrum, seed=3)
    eigen = hessjax.top_eigenvalues(toy.matvec_of(matrix), jnp.zeros(30), jax.random.key(0), k=3,
                                    num_steps=12)
    np.testing.assert_allclose(eigen.values, [3.0, 2.0, 1.0], atol=1e-9)


def test_float32_top_eigenvalue_is_accurate_to_float32():
    spectrum = np.linspace(0.0, 1.0, 200)
    spectrum[-1] = 5.0
    matrix = toy.matrix_with_spectrum(spectrum).astype(np.float32)
    eigen = hessjax.top_eigenvalues(toy.matvec_of(matrix), jnp.zeros(200, jnp.float32),
                                    jax.random.key(0), k=1, num_steps=30)
    assert eigen.values.dtype == jnp.float32
    np.testing.assert_allclose(float(eigen.values[0]), 5.0, rtol=1e-5)


def test_spectral_density_moments_are_unbiased(x64):
    spectrum = np.concatenate([np.linspace(-1.0, 2.0, 38), [6.0, 9.0]])
    matrix = toy.matrix_with_spectrum(spectrum, seed=4)
    run = jax.jit(jax.vmap(lambda key: hessjax.spectral_density(
        toy.matvec_of(matrix), jnp.zeros(40), key, num_probes=2, num_steps=8)))
    densities = run(jax.random.split(jax.random.key(0), 200))
    for p in (0, 1, 2, 3, 5):
        samples = np.asarray(jax.vmap(lambda d: d.moment(p))(densities))
        truth = np.mean(spectrum ** p)
        assert abs(samples.mean() - truth) <= 4 * samples.std() / np.sqrt(200) + 1e-10, p
    one = jax.tree_util.tree_map(lambda x: x[0], densities)
    np.testing.assert_allclose(float(one.trace()), 40 * float(one.moment(1)), rtol=1e-12)


def test_spectral_density_with_full_steps_is_exact_and_has_a_smooth_pdf(x64):
    spectrum = np.array([-2.0, 0.5, 1.0, 1.5, 4.0])
    matrix = toy.matrix_with_spectrum(spectrum, seed=5)
    density = hessjax.spectral_density(toy.matvec_of(matrix), jnp.zeros(5), jax.random.key(1),
                                       num_probes=3, num_steps=5)
    assert density.nodes.shape == (3, 5) and density.weights.shape == (3, 5)
    for row in np.asarray(density.nodes):
        np.testing.assert_allclose(np.sort(row), spectrum, atol=1e-9)
    grid = np.linspace(-6.0, 8.0, 2001)
    pdf = np.asarray(density.pdf(grid, sigma=0.2))
    np.testing.assert_allclose(np.sum(pdf) * (grid[1] - grid[0]), 1.0, rtol=1e-6)
    assert float(density.cdf(0.0)) == pytest.approx(float(density.weights[density.nodes <= 0].sum()))
    assert 0.0 < float(density.cdf(0.0)) < 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_vectors_run_lanczos_in_float32(dtype):
    spectrum = jnp.linspace(0.5, 8.0, 16)
    matvec = lambda v: (spectrum * v.astype(jnp.float32)).astype(v.dtype)
    like = jnp.zeros(16, dtype)
    eigen = hessjax.top_eigenvalues(matvec, like, jax.random.key(0), k=2, num_steps=16)
    assert eigen.values.dtype == jnp.float32 and eigen.vectors.dtype == dtype
    np.testing.assert_allclose(eigen.values, [8.0, 7.5], rtol=2e-2)
    assert int(eigen.num_matvecs) == 18
    density = hessjax.spectral_density(matvec, like, jax.random.key(0), num_probes=2, num_steps=8)
    np.testing.assert_allclose(float(density.moment(0)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(density.trace()), float(spectrum.sum()), rtol=0.2)
    assert int(density.num_matvecs) == 16
