"""Probe drawing: the one-draw stream below the block size, block-by-block drawing above it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from hessjax import _vectors
from tests import toy


def test_short_probes_are_one_draw_of_the_key():
    key = jax.random.key(3)
    references = (("rademacher", lambda k, n, dtype: _vectors.rademacher_signs(k, n, dtype)),
                  ("gaussian", lambda k, n, dtype: jax.random.normal(k, (n,), dtype)))
    for probe, reference in references:
        drawn = _vectors.draw_vector(key, 500, jnp.float32, probe, block=500)
        np.testing.assert_array_equal(drawn, reference(key, 500, jnp.float32))


def test_long_probes_are_filled_block_by_block_ending_at_the_last_entry():
    key = jax.random.key(4)
    drawn = np.asarray(_vectors.draw_vector(key, 2500, jnp.float32, "rademacher", block=1000))
    block = lambda j: np.asarray(_vectors.rademacher_signs(jax.random.fold_in(key, j), 1000,
                                                           jnp.float32))
    np.testing.assert_array_equal(drawn[:1000], block(0))
    np.testing.assert_array_equal(drawn[1000:1500], block(1)[:500])
    np.testing.assert_array_equal(drawn[1500:], block(2))
    assert set(np.unique(drawn)) == {-1.0, 1.0}
    assert abs(drawn.mean()) < 4 / np.sqrt(drawn.size)
    gaussian = np.asarray(_vectors.draw_vector(key, 2500, jnp.float32, "gaussian", block=1000))
    assert abs(gaussian.mean()) < 4 / np.sqrt(2500) and abs(gaussian.var() - 1) < 0.15


def _temporary_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_blocked_draw_keeps_temporaries_to_a_few_blocks(probe):
    size, key = 1 << 22, jax.random.key(0)
    one_draw = _temporary_bytes(lambda k: _vectors.draw_vector(k, size, jnp.float32, probe,
                                                               block=size), key)
    blocked = _temporary_bytes(lambda k: _vectors.draw_vector(k, size, jnp.float32, probe,
                                                              block=1 << 16), key)
    # One Gaussian draw of JAX's counter-based generator holds about three outputs in
    # temporaries; packed signs (one random word per 32 entries) hold a small fraction of one.
    if probe == "gaussian":
        assert one_draw >= 2 * 4 * size, one_draw
    else:
        assert one_draw <= 0.5 * 4 * size, one_draw
    assert blocked <= 0.5 * 4 * size, blocked


def test_hutchinson_with_blocked_probes_is_unbiased(x64, monkeypatch):
    # A block far below n exercises the blocked stream in every estimator's kernel (a shape not
    # used elsewhere, so that no program compiled with the default block is reused).
    monkeypatch.setattr(_vectors, "DRAW_BLOCK", 16)
    spectrum = np.linspace(-1.0, 5.0, 37)
    matvec = toy.matvec_of(toy.matrix_with_spectrum(spectrum, seed=2))
    estimate = hessjax.trace(matvec, jnp.zeros(37), jax.random.key(1), num_matvecs=4000,
                             chunk_size=500)
    assert abs(float(estimate.value) - spectrum.sum()) < 4 * float(estimate.stderr)
    same = hessjax.trace(matvec, jnp.zeros(37), jax.random.key(1), num_matvecs=4000, chunk_size=7)
    np.testing.assert_allclose(same.value, estimate.value, rtol=1e-12)


@pytest.mark.parametrize("count", [1, 4])
def test_a_probe_in_flight_costs_at_most_three_vectors(count, monkeypatch):
    # Drawn flat, mapped leaf by leaf: the kernel of a Hutchinson chunk holds the draw, the probe
    # and its image (under 3n floats per probe; it was 4n with a flattened image and one draw).
    monkeypatch.setattr(_vectors, "DRAW_BLOCK", 1 << 16)
    n = 1 << 21
    like = {"a": jax.ShapeDtypeStruct((n // 2,), jnp.float32),
            "b": jax.ShapeDtypeStruct((n // 4, 2), jnp.float32)}
    layout = _vectors.Layout.of(like)
    matvec = jax.tree_util.Partial(lambda v: jax.tree_util.tree_map(lambda x: 2.0 * x, v))
    trace_module = __import__("hessjax.trace", fromlist=["_probe_moments"])
    previous = trace_module._no_samples(layout, trace_module._quadratic)
    kernel = trace_module._probe_moments.lower(
        matvec, layout, jax.random.key(0), 0, previous, count=count, probe="rademacher",
        integrand=trace_module._quadratic)
    temp = kernel.compile().memory_analysis().temp_size_in_bytes
    assert temp <= 3.1 * 4 * n * count, temp / (4 * n * count)


def test_rademacher_signs_are_balanced_independent_bits():
    from hessjax._vectors import rademacher_signs

    length = 32 * 4000 + 7  # Not a multiple of the 32 signs of a word.
    signs = np.asarray(rademacher_signs(jax.random.key(3), length, jnp.float32))
    assert signs.shape == (length,) and set(np.unique(signs)) == {-1.0, 1.0}
    # Mean 0 and no correlation between neighbours, within 4 standard errors (1 / sqrt(n)).
    bound = 4 / np.sqrt(length)
    assert abs(signs.mean()) < bound
    for lag in (1, 31, 32, 33):
        assert abs(np.mean(signs[:-lag] * signs[lag:])) < bound
    # Another key, other signs; the dtype is the one asked for.
    other = np.asarray(rademacher_signs(jax.random.key(4), length, jnp.float32))
    assert abs(np.mean(signs * other)) < bound
    assert rademacher_signs(jax.random.key(3), 5, jnp.bfloat16).dtype == jnp.bfloat16
