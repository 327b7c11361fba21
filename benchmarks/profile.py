"""Profile evidence for the targets the CPU benchmark misses: ``python -m benchmarks.profile``.

Two questions, answered without timing noise (the shared CPU makes timings move by 20% or more):

1. How many floating-point operations does one Hessian-vector product cost, as a multiple of a
   gradient? XLA's cost analysis of the compiled programs counts them: the gradient, the one-shot
   ``hessjax.hvp``, and the per-probe share of ``vmap(hessjax.hvp_fn(...))`` over a chunk. On a
   compute-bound CPU this ratio is a floor for the per-probe time ratio.
2. Why does Hutch++/XTrace not beat Hutchinson by much on the trained small MLP? Hutchinson's
   variance with Rademacher probes is ``2 (‖H‖_F² − Σ H_ii²)``; Hutch++ and XTrace remove the top of
   the spectrum first, which helps only if the top eigenvalues hold much of ``‖H‖_F²``.
"""

from __future__ import annotations

import jax
import numpy as np

import hessjax
from benchmarks import accuracy
from benchmarks.figures import rademacher
from benchmarks.timing import markdown_table
from benchmarks.workloads import Workload, digits_cnn, digits_mlp


def flops(fn, *args) -> float:
    """Floating-point operations of ``jax.jit(fn)(*args)`` by XLA's cost analysis."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis["flops"])


def flop_rows(workload: Workload, chunks: tuple[int, ...] = (1, 10, 50)) -> list[tuple[str, ...]]:
    """Rows ``(workload, product, flops, multiple of a gradient)``."""
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    v = rademacher(jax.random.key(0), params)
    gradient = flops(jax.grad(loss_fn), params, batch)
    rows = [("gradient", gradient),
            ("hessjax.hvp (one-shot)", flops(lambda p, b, t: hessjax.hvp(loss_fn, p, b, t),
                                             params, batch, v)),
            ("hessjax.hvp_fn (linearize)", flops(lambda p, b: hessjax.hvp_fn(loss_fn, p, b),
                                                 params, batch))]
    matvec = hessjax.hvp_fn(loss_fn, params, batch)
    for chunk in chunks:
        probes = rademacher(jax.random.key(0), params, chunk)
        total = flops(lambda m, probes: jax.vmap(m)(probes), matvec, probes)
        rows.append((f"hvp_fn per probe, chunk {chunk}", total / chunk))
    return [(workload.name, label, f"{value:.3g}", f"{value / gradient:.2f}x")
            for label, value in rows]


def spectrum_rows() -> list[tuple[str, str]]:
    """How the trained small MLP's Hessian spreads ``‖H‖_F²`` (what Hutch++/XTrace can remove)."""
    with jax.enable_x64(True):
        hessian = accuracy.exact_hessian(accuracy.trained_small_mlp())
    eigenvalues = np.sort(np.linalg.eigvalsh(hessian))[::-1]
    energy = np.cumsum(np.sort(eigenvalues**2)[::-1]) / np.sum(eigenvalues**2)
    frobenius = float(np.sum(hessian**2))
    off_diagonal = frobenius - float(np.sum(np.diag(hessian) ** 2))
    trace = float(np.trace(hessian))
    rows = [("dimension n", str(hessian.shape[0])),
            ("trace / top eigenvalue", f"{trace:.4g} / {eigenvalues[0]:.4g}"),
            ("stable rank ‖H‖_F² / λ_max²", f"{frobenius / eigenvalues[0] ** 2:.1f}"),
            ("off-diagonal share of ‖H‖_F² (drives Rademacher Hutchinson)",
             f"{off_diagonal / frobenius:.1%}"),
            ("Hutchinson probes for 1% relative RMSE, 2(‖H‖_F² − Σ H_ii²) / (0.01 tr)²",
             f"{2 * off_diagonal / (0.01 * trace) ** 2:.0f}")]
    rows += [(f"share of ‖H‖_F² in the top {k} eigenvalues (removable by a rank-{k} sketch)",
              f"{energy[k - 1]:.1%}") for k in (2, 8, 32, 128, 400)]
    return rows


def main() -> None:
    rows = [row for workload in (digits_mlp(), digits_cnn()) for row in flop_rows(workload)]
    print(markdown_table(("workload", "program", "flops (XLA cost analysis)", "/ gradient"), rows))
    print()
    print(markdown_table(("trained small MLP Hessian (float64)", "value"), spectrum_rows()))


if __name__ == "__main__":
    main()
