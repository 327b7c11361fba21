"""Slower, more thorough statistical checks (``python -m pytest -m slow``, a separate CI job)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import hessjax
from tests import toy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_mlp():
    """A 64-32-10 tanh MLP on 512 real digits images, its loss and its exact float64 Hessian."""
    with jax.enable_x64(True):
        digits = load_digits()
        x = (digits.data - digits.data.mean(0)) / (digits.data.std(0) + 1e-6)
        batch = (jnp.asarray(x[:512]), jnp.asarray(digits.target[:512]))
        params = toy.mlp_params(jax.random.key(0), sizes=(64, 32, 10))
        yield params, batch, toy.exact_hessian(toy.mlp_loss, params, batch)


def test_error_bars_are_calibrated_on_a_real_hessian(digits_mlp):
    params, batch, hessian = digits_mlp
    truth = np.trace(hessian)
    with jax.enable_x64(True):
        matvec = hessjax.hvp_fn(toy.mlp_loss, params, batch)
        for method, budget, low in [("hutchinson", 20, 0.9), ("hutch++", 30, 0.8),
                                    ("xtrace", 20, 0.8)]:
            run = jax.jit(jax.vmap(lambda key, method=method, budget=budget: hessjax.trace(
                matvec, params, key, num_matvecs=budget, method=method)))
            estimate = run(jax.random.split(jax.random.key(1), 1000))
            values, stderrs = np.asarray(estimate.value), np.asarray(estimate.stderr)
            assert abs(values.mean() - truth) < 4 * values.std() / np.sqrt(len(values)), method
            coverage = np.mean(np.abs(values - truth) <= 2 * stderrs)
            assert low < coverage < 0.995, (method, coverage)


def test_spectra_on_a_real_hessian(digits_mlp):
    params, batch, hessian = digits_mlp
    exact = np.linalg.eigvalsh(hessian)
    with jax.enable_x64(True):
        matvec = hessjax.hvp_fn(toy.mlp_loss, params, batch)
        eigen = hessjax.top_eigenvalues(matvec, params, jax.random.key(2), k=5, num_steps=80)
        np.testing.assert_allclose(eigen.values, exact[::-1][:5], rtol=1e-6)
        densities = jax.jit(jax.vmap(lambda key: hessjax.spectral_density(
            matvec, params, key, num_probes=1, num_steps=20)))(
                jax.random.split(jax.random.key(3), 300))
    for p in (1, 2, 3):
        samples = np.asarray(jax.vmap(lambda d, p=p: d.moment(p))(densities))
        truth = np.mean(exact ** p)
        assert abs(samples.mean() - truth) < 4 * samples.std() / np.sqrt(len(samples)), p
