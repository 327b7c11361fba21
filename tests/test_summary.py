"""``hessian_summary`` against exact answers on a small network."""

import jax
import numpy as np
import pytest

import hessjax
from tests import toy


def test_hessian_summary_of_a_dataset(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 6, 3))
    x, y = toy.classification_batch(jax.random.key(1), n=24)
    hessian = toy.exact_hessian(toy.mlp_loss, params, (x, y))
    summary = hessjax.hessian_summary(toy.mlp_loss, params, [(x[:12], y[:12]), (x[12:], y[12:])],
                                      jax.random.key(2), rtol=0.05, max_matvecs=400, top_k=2,
                                      lanczos_steps=30, block_matvecs=10, density_probes=2,
                                      density_steps=10)
    assert isinstance(summary, hessjax.HessianSummary)
    assert float(summary.loss) == float(toy.mlp_loss(params, (x, y)))
    truth = np.trace(hessian)
    trace = summary.trace
    assert abs(float(trace.value) - truth) < 4 * float(trace.stderr)
    assert float(trace.stderr) <= 0.05 * abs(float(trace.value)) or summary.matvecs_trace >= 400
    np.testing.assert_allclose(summary.top_eigenvalues.values, np.linalg.eigvalsh(hessian)[::-1][:2],
                               rtol=1e-6)
    blocks = jax.tree_util.tree_leaves(summary.block_traces,
                                       is_leaf=lambda t: isinstance(t, hessjax.TraceEstimate))
    assert len(blocks) == 4
    np.testing.assert_allclose(float(summary.density.moment(0)), 1.0, rtol=1e-10)
    assert summary.matvecs_trace == int(trace.num_matvecs) >= 10
    # With Hutchinson the block traces are the trace's own probes: no products of their own.
    assert (summary.matvecs_eigen, summary.matvecs_blocks, summary.matvecs_density) == (32, 0, 20)
    assert summary.num_matvecs == summary.matvecs_trace + 32 + 20
    assert summary.seconds > 0


def test_hessian_summary_block_traces_share_the_trace_probes(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 6, 3))
    x, y = toy.classification_batch(jax.random.key(1), n=24)
    hessian = toy.exact_hessian(toy.mlp_loss, params, (x, y))
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    options = dict(rtol=0.05, max_matvecs=300, top_k=0, density_probes=0)
    summary = hessjax.hessian_summary(toy.mlp_loss, params, batches, jax.random.key(2),
                                      block_matvecs=40, **options)
    spent = summary.matvecs_trace
    assert spent >= 40 and summary.matvecs_blocks == 0
    # What the two separate calls with the summary's trace key give, for twice the products.
    matvec = hessjax.dataset_hvp_fn(toy.mlp_loss, params, batches)
    trace_key = jax.random.split(jax.random.key(2), 3)[0]
    alone = hessjax.trace_until(matvec, params, trace_key, rtol=0.05, max_matvecs=300,
                                min_matvecs=40)
    blocks = hessjax.block_traces(matvec, params, trace_key, num_matvecs=spent)
    assert int(alone.num_matvecs) == spent
    np.testing.assert_allclose(float(summary.trace.value), float(alone.value), rtol=1e-12)
    np.testing.assert_allclose(float(summary.trace.stderr), float(alone.stderr), rtol=1e-9)
    leaves = lambda tree: jax.tree_util.tree_leaves(
        tree, is_leaf=lambda t: isinstance(t, hessjax.TraceEstimate))
    for shared, separate in zip(leaves(summary.block_traces), leaves(blocks), strict=True):
        np.testing.assert_allclose(float(shared.value), float(separate.value), rtol=1e-10)
        np.testing.assert_allclose(float(shared.stderr), float(separate.stderr), rtol=1e-9)
        assert int(shared.num_matvecs) == spent and float(shared.dof) == spent - 1
    # The blocks sum to the trace; each is unbiased for its diagonal block of the exact Hessian.
    total = sum(float(b.value) for b in leaves(summary.block_traces))
    np.testing.assert_allclose(total, float(summary.trace.value), rtol=1e-10)
    sizes = [int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
    diagonal = np.diag(hessian)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for estimate, start, size in zip(leaves(summary.block_traces), starts, sizes, strict=True):
        exact = diagonal[start:start + size].sum()
        assert abs(float(estimate.value) - exact) <= 5 * float(estimate.stderr) + 1e-9
    # Hutch++ has no per-probe blocks: its block traces are a separate call.
    other = hessjax.hessian_summary(toy.mlp_loss, params, batches, jax.random.key(2),
                                    block_matvecs=10, method="hutch++", **options)
    assert other.matvecs_blocks == 10


def test_hessian_summary_skips_parts_and_checks_the_key_first():
    params = toy.mlp_params(jax.random.key(0), sizes=(3, 4, 3), dtype=jax.numpy.float32)
    batch = toy.classification_batch(jax.random.key(1), n=8, dim=3, dtype=jax.numpy.float32)
    summary = hessjax.hessian_summary(toy.mlp_loss, params, [batch], jax.random.key(2), top_k=0,
                                      block_matvecs=0, density_probes=0, max_matvecs=10)
    assert summary.top_eigenvalues is None and summary.block_traces is None
    assert summary.density is None and summary.num_matvecs == summary.matvecs_trace
    with pytest.raises(TypeError, match=r"`key` must be a single jax.random key"):
        hessjax.hessian_summary(toy.mlp_loss, params, [batch], 0)
