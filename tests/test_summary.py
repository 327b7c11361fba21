"""``hessian_summary`` against exact answers on a small network."""

import jax
import numpy as np

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
    assert set(summary) == {"trace", "trace_stderr", "top_eigenvalues", "block_traces", "density",
                            "num_matvecs", "seconds"}
    truth = np.trace(hessian)
    assert abs(summary["trace"] - truth) < 4 * summary["trace_stderr"]
    assert summary["trace_stderr"] <= 0.05 * abs(summary["trace"]) or summary["num_matvecs"] >= 400
    np.testing.assert_allclose(summary["top_eigenvalues"], np.linalg.eigvalsh(hessian)[::-1][:2],
                               rtol=1e-6)
    blocks = jax.tree_util.tree_leaves(summary["block_traces"],
                                       is_leaf=lambda t: isinstance(t, hessjax.TraceEstimate))
    assert len(blocks) == 4
    np.testing.assert_allclose(float(summary["density"].moment(0)), 1.0, rtol=1e-10)
    trace_matvecs = summary["num_matvecs"] - (30 + 2) - 10 - 2 * 10
    assert trace_matvecs >= 10
    assert summary["seconds"] > 0
