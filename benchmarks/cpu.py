"""CPU benchmark of hessjax against PyHessian, curvlinops and matfree on the same work.

Run ``python -m benchmarks.cpu`` (10-18 minutes on a 2-core CPU, by its load). It prints a table
and appends it, with the date, machine, load and package versions, to ``benchmarks/RESULTS.md``.
Every figure in one table comes from the same run: compare ratios within a run, never across runs.

Workloads (identical weights in JAX and PyTorch, checked before timing): a tanh MLP 64-256-256-10
and a CNN 8/16 on standardized sklearn digits, batch 1024, float32. Accuracy checks against exact
references run in float64 (see :mod:`benchmarks.accuracy`).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads busy-wait and steal the cores from XLA (25-40% slower HVPs beside eigsh).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# PyTorch's OpenMP threads spin at barriers by default; on a shared machine (load above the core
# count) that made its gradient 6x slower (550 vs 90 ms). Passive waiting keeps the comparison fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import hessjax  # noqa: E402
from benchmarks import accuracy, peers, timing  # noqa: E402
from benchmarks.figures import product_figures, rademacher  # noqa: E402
from benchmarks.workloads import Workload, check_agreement, digits_cnn, digits_mlp  # noqa: E402

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
PROBE_CHUNKS = (1, 10, 50)
TRACE_CHUNKS = (1, 10, 50)


def trace_figures(workload: Workload, table: timing.Table, repeats: int,
                  num_probes: int) -> dict[str, float]:
    """Wall time and value of a ``num_probes``-probe Hutchinson trace, hessjax vs the peers."""
    name = workload.name
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    key = jax.random.key(0)
    figures = {}

    def report(label: str, result: timing.Timing, value: float, note: str = "") -> None:
        figures[label] = result.median
        table.add(name, f"{num_probes}-probe trace: {label}", timing.seconds(result.median),
                  f"estimate {value:.4g}; first call {timing.seconds(result.first)}" + note)

    for chunk in TRACE_CHUNKS:
        def run(chunk=chunk):
            return hessjax.trace(hessjax.hvp_fn(loss_fn, params, batch), params, key,
                                 num_matvecs=num_probes, chunk_size=chunk)

        result = timing.measure(run, repeats)
        estimate = run()
        report(f"hessjax.trace chunk_size={chunk}", result, float(estimate.value),
               f" ± {float(estimate.stderr):.2g}")

    @jax.jit
    def quadratic_form(params, batch, index):
        probe = rademacher(jax.random.fold_in(key, index), params)
        return optax.tree_utils.tree_vdot(probe, hessjax.hvp(loss_fn, params, batch, probe))

    def loop():
        return jnp.mean(jnp.stack([quadratic_form(params, batch, i) for i in range(num_probes)]))

    report("Python loop of jitted hessjax.hvp", timing.measure(loop, repeats), float(loop()))

    matfree = jax.jit(lambda key, params, batch: peers.matfree_trace(
        lambda v, p, b: hessjax.hvp(loss_fn, p, b, v), params, key, num_probes, params, batch))
    report("matfree estimator_monte_carlo (one vmap, hessjax.hvp)",
           timing.measure(lambda: matfree(key, params, batch), repeats),
           float(matfree(key, params, batch)))

    pyhessian_calls = []

    def run_pyhessian():
        pyhessian_calls.append(peers.pyhessian_trace(workload, num_probes))

    # tol=-inf keeps PyHessian from stopping early (see peers.pyhessian_trace); the probes each
    # call used are listed as a check.
    report("PyHessian trace(maxIter, tol=-inf)", timing.measure(run_pyhessian, repeats, lambda r: r),
           pyhessian_calls[-1][0], f"; probes used per call {[used for _, used in pyhessian_calls]}")

    curvlinops = {}

    def run_curvlinops():
        curvlinops["value"] = peers.curvlinops_trace(workload, num_probes)

    report("curvlinops hutchinson_trace(HessianLinearOperator)",
           timing.measure(run_curvlinops, repeats, lambda r: r), curvlinops["value"])
    return figures


def spectrum_figures(workload: Workload, table: timing.Table, repeats: int,
                     num_steps: int) -> None:
    """Top eigenvalue and spectral density: hessjax vs PyHessian (time and value)."""
    name = workload.name
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    key = jax.random.key(0)

    def top():
        return hessjax.top_eigenvalues(hessjax.hvp_fn(loss_fn, params, batch), params, key, k=1,
                                       num_steps=20)

    result = timing.measure(top, repeats)
    eigen = top()
    table.add(name, "top eigenvalue: hessjax.top_eigenvalues(k=1, num_steps=20)",
              timing.seconds(result.median),
              f"value {float(eigen.values[0]):.5g}, residual {float(eigen.residuals[0]):.2g}")
    pyhessian = {}

    def run_pyhessian():
        pyhessian["value"] = peers.pyhessian_top_eigenvalue(workload)

    result = timing.measure(run_pyhessian, repeats, lambda r: r)
    table.add(name, "top eigenvalue: PyHessian eigenvalues(top_n=1)", timing.seconds(result.median),
              f"value {pyhessian['value']:.5g} (power iteration, tol 1e-3)")

    def density():
        return hessjax.spectral_density(hessjax.hvp_fn(loss_fn, params, batch), params, key,
                                        num_probes=1, num_steps=num_steps)

    result = timing.measure(density, repeats)
    table.add(name, f"density: hessjax.spectral_density(1 probe, {num_steps} steps)",
              timing.seconds(result.median), f"trace estimate {float(density().trace()):.4g}")
    table.add(name, f"density: PyHessian density(iter={num_steps}, n_v=1)",
              *_pyhessian_density_outcome(workload, num_steps))


def _pyhessian_density_outcome(workload: Workload, num_steps: int) -> tuple[str, str]:
    """``(time, note)`` of PyHessian's density: its value, or the error it failed with."""
    start = time.perf_counter()
    try:
        peers.pyhessian_density(workload, num_steps)
    except Exception as error:  # noqa: BLE001 - the failure itself is the figure reported
        elapsed = time.perf_counter() - start
        return "failed", f"after {timing.seconds(elapsed)}: {timing.describe(error)}"
    return timing.seconds(time.perf_counter() - start), "ran"


def accuracy_figures(large: Workload, table: timing.Table, num_seeds: int, grid: tuple[int, ...],
                     num_steps: int) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """Float64 checks against exact references.

    Returns the estimator-efficiency budgets on the trained MLP's Hessian and on the control operator.
    """
    with jax.enable_x64(True):
        table.add(large.name, "exact top eigenvalue (float64 eigsh)",
                  f"{accuracy.exact_top_eigenvalue(large):.5g}")

        small = accuracy.trained_small_mlp()
        name = small.name
        hessian = accuracy.exact_hessian(small)
        eigenvalues = np.linalg.eigvalsh(hessian)
        table.add(name, "exact trace / top eigenvalue (dense float64 Hessian)",
                  f"{np.trace(hessian):.5g}", f"top eigenvalue {eigenvalues[-1]:.5g}, "
                  f"n = {hessian.shape[0]}")
        params, batch = small.jax_params(jnp.float64), small.jax_batch(jnp.float64)
        matvec = hessjax.hvp_fn(small.jax_loss(), params, batch)
        key = jax.random.key(0)
        eigen = hessjax.top_eigenvalues(matvec, params, key, k=1, num_steps=20)
        table.add(name, "top eigenvalue: hessjax (float64, 20 steps) relative error",
                  f"{abs(float(eigen.values[0]) - eigenvalues[-1]) / eigenvalues[-1]:.2e}")
        pyhessian_top = peers.pyhessian_top_eigenvalue(small)
        table.add(name, "top eigenvalue: PyHessian (float32) relative error",
                  f"{abs(pyhessian_top - eigenvalues[-1]) / eigenvalues[-1]:.2e}")

        density = hessjax.spectral_density(matvec, params, key, num_probes=1, num_steps=num_steps)
        errors = accuracy.density_errors(eigenvalues, np.asarray(density.nodes),
                                         np.asarray(density.weights))
        table.add(name, f"density: hessjax (1 probe, {num_steps} steps) vs exact spectrum",
                  f"W1 {errors['W1']:.2e}", ", ".join(
                      f"{k} rel. err {v:.2e}" for k, v in errors.items() if k != "W1"))
        try:
            nodes, weights = peers.pyhessian_density(small, num_steps)
        except Exception as error:  # noqa: BLE001 - the failure itself is the figure reported
            table.add(name, "density: PyHessian vs exact spectrum", "failed",
                      timing.describe(error))
        else:
            errors = accuracy.density_errors(eigenvalues, nodes, weights)
            table.add(name, "density: PyHessian vs exact spectrum", f"W1 {errors['W1']:.2e}",
                      str(errors))

        efficiency = accuracy.estimator_efficiency(hessian, num_seeds=num_seeds, grid=grid)
        control = accuracy.estimator_efficiency(
            accuracy.decaying_spectrum_matrix(), num_seeds=num_seeds, grid=grid)
    reached = _efficiency_rows(table, name, efficiency, num_seeds)
    control_reached = _efficiency_rows(
        table, f"control: PSD, eigenvalues 1/i, n = {accuracy.CONTROL_DIMENSION}", control, num_seeds)
    return reached, control_reached


def _efficiency_rows(table: timing.Table, name: str, efficiency: dict[str, dict],
                     num_seeds: int) -> dict[str, int | None]:
    reached = {}
    for method, result in efficiency.items():
        reached[method] = result["reached"]
        curve = ", ".join(f"{m}: {e:.2%}" for m, e in result["rmse"].items())
        table.add(name, f"matvecs for 1% relative RMSE ({num_seeds} seeds): {method}",
                  str(result["reached"] or f"> {max(result['rmse'])}"), curve)
    return reached


def target_rows(products: dict[str, dict], traces: dict[str, dict], reached: dict[str, int | None],
                control: dict[str, int | None], num_probes: int) -> list[tuple[str, ...]]:
    """The issue's targets, each with the measured figure and met/missed."""
    rows = []
    for name, figures in products.items():
        best = min(figures[f"per_probe_{c}"] for c in PROBE_CHUNKS if c > 1)
        value = best / figures["jax_gradient"]
        rows.append((f"{name}: hvp_fn per probe (best vmapped chunk) <= 1.5x gradient",
                     f"{value:.2f}x", "met" if value <= 1.5 else "missed"))
    for (name, figures), needed in zip(traces.items(), (2.0, 1.2), strict=False):
        peer = figures["PyHessian trace(maxIter, tol=-inf)"]
        for label in ("hessjax.trace chunk_size=10", min(
                (k for k in figures if k.startswith("hessjax.trace")), key=figures.get)):
            speedup = peer / figures[label]
            rows.append((f"{name}: {num_probes}-probe trace >= {needed}x faster than PyHessian "
                         f"({label})", f"{speedup:.2f}x", "met" if speedup >= needed else "missed"))
    for operator, budgets in (("trained MLP Hessian", reached), ("control, eigenvalues 1/i", control)):
        hutchinson = budgets["hutchinson"]
        best = min((m for k, m in budgets.items() if k != "hutchinson" and m), default=None)
        if hutchinson and best:
            value, met = f"{hutchinson / best:.2f}x", hutchinson / best >= 3
        else:
            value, met = f"hutchinson {hutchinson}, best other {best}", bool(best and not hutchinson)
        rows.append((f"{operator}: XTrace or Hutch++ reach 1% with >= 3x fewer matvecs than Hutchinson",
                     value, "met" if met else "missed (or undecided within the grid)"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats: checks the script, figures meaningless")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    batch_size, repeats, trace_repeats = (128, 2, 1) if args.quick else (1024, 7, 2)
    num_probes, num_steps, num_seeds = (10, 20, 10) if args.quick else (100, 100, 50)
    grid = (6, 12) if args.quick else accuracy.EFFICIENCY_GRID

    header = [f"## {timing.now()}{' (--quick)' if args.quick else ''}", "",
              f"- machine: {timing.machine()}",
              f"- at start: {timing.load()}",
              f"- versions: {timing.versions_line()}",
              f"- torch threads: {_torch_threads()}; " + ", ".join(
                  f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"))]
    print("\n".join(header), flush=True)
    table = timing.Table()
    workloads = [digits_mlp(batch_size=batch_size), digits_cnn(batch_size=batch_size)]
    for workload in workloads:
        errors = check_agreement(workload, hvp=hessjax.hvp)
        table.add(workload.name, "JAX vs torch relative error: loss / gradient / HVP",
                  " / ".join(f"{e:.1e}" for e in errors.values()), f"{workload.num_params} params")
    products = {w.name: product_figures(w, table, repeats, chunks=PROBE_CHUNKS)
                for w in workloads}
    traces = {w.name: trace_figures(w, table, trace_repeats, num_probes) for w in workloads}
    spectrum_figures(workloads[0], table, trace_repeats, num_steps)
    reached, control = accuracy_figures(workloads[0], table, num_seeds, grid, num_steps)
    targets = timing.markdown_table(("target", "measured", "verdict"),
                                    target_rows(products, traces, reached, control, num_probes))
    footer = f"- at end: {timing.load()}"
    report = "\n".join([*header, footer, "", table.markdown(), "", targets, ""])
    print("\n" + footer + "\n\n" + targets, flush=True)
    if not args.no_record:
        with RESULTS.open("a") as results:
            results.write("\n" + report)


def _torch_threads() -> str:
    try:
        import torch
    except ImportError:
        return "torch absent"
    return str(torch.get_num_threads())


if __name__ == "__main__":
    main()
