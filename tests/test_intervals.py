"""Coverage of ``TraceEstimate.interval``: 95% intervals cover the truth about 95% of the time.

Slow (``python -m pytest -m slow``): 2,000 seeds per method and budget, each a compiled ``vmap`` over
keys of the estimator under ``jit``. The operator is a dense 40 x 40 matrix with an indefinite,
spread spectrum (its quadratic forms are close to normal, where Student-t intervals are exact); on
operators dominated by a few eigenvalues the samples are skewed and coverage at 10-20 samples is
about 0.92-0.94 (BUILD.md, "Honest intervals").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from tests import toy
from tests.test_fisher import _exact_fisher_trace

pytestmark = pytest.mark.slow

SEEDS = 2000
MINIMUM = {"hutchinson": 2, "hutch++": 6, "xtrace": 4}


def _coverage(estimates, truth, level=0.95):
    low, high = jax.vmap(lambda e: e.interval(level))(estimates)
    return float(np.mean((np.asarray(low) <= truth) & (truth <= np.asarray(high))))


@pytest.fixture(scope="module")
def indefinite():
    with jax.enable_x64(True):
        yield toy.matrix_with_spectrum(np.linspace(-3.0, 3.0, 40) ** 3, seed=5)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
@pytest.mark.parametrize("multiple", [1, 10])
def test_trace_intervals_cover_at_the_nominal_rate(indefinite, method, multiple):
    budget = MINIMUM[method] * multiple
    with jax.enable_x64(True):
        run = jax.jit(jax.vmap(lambda key: hessjax.trace(
            toy.matvec_of(indefinite), jnp.zeros(40), key, num_matvecs=budget, method=method)))
        estimates = run(jax.random.split(jax.random.key(0), SEEDS))
        coverage = _coverage(estimates, np.trace(indefinite))
    assert 0.93 <= coverage <= 0.97, (method, budget, coverage)


@pytest.mark.parametrize("num_samples", [2, 20])
def test_fisher_trace_intervals_cover_at_the_nominal_rate(num_samples):
    with jax.enable_x64(True):
        params = toy.mlp_params(jax.random.key(0), sizes=(5, 8, 3))
        inputs, _ = toy.classification_batch(jax.random.key(1), n=32)
        truth = _exact_fisher_trace(toy.mlp_logits, params, inputs, jnp.ones(32))
        run = jax.jit(jax.vmap(lambda key: hessjax.fisher_trace(
            toy.mlp_logits, params, inputs, key, num_samples=num_samples)))
        coverage = _coverage(run(jax.random.split(jax.random.key(0), SEEDS)), truth)
    assert 0.93 <= coverage <= 0.97, (num_samples, coverage)


def test_xtrace_error_bars_are_unbiased_where_the_spread_alone_is_not(indefinite):
    # The mean squared stderr matches the spread of the estimates across seeds, or overstates it a
    # little (conservative); the standard deviation of the leave-one-out estimates over sqrt(s) alone
    # underestimates it (0.3-0.75 of the variance at s = 20 on the operators of BUILD.md). Measured
    # with packed Rademacher probes over 6 master keys of 2,000 seeds: 1.02-1.17 (mean 1.11) on the
    # indefinite operator, 0.94-1.02 on the 1/i spectrum; three keys are pooled here.
    with jax.enable_x64(True):
        for matrix in (indefinite, toy.matrix_with_spectrum(1.0 / np.arange(1, 51), seed=3)):
            run = jax.jit(jax.vmap(lambda key, m=matrix: hessjax.trace(
                toy.matvec_of(m), jnp.zeros(len(m)), key, num_matvecs=40, method="xtrace")))
            estimates = [run(jax.random.split(jax.random.key(k), SEEDS)) for k in (1, 2, 3)]
            stderr = np.concatenate([np.asarray(e.stderr) for e in estimates])
            value = np.concatenate([np.asarray(e.value) for e in estimates])
            ratio = np.mean(np.square(stderr)) / np.var(value)
            assert 0.85 < ratio < 1.2, ratio
