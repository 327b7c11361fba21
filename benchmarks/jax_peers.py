"""hessjax's trace estimators beside the JAX peers traceax and matfree: ``python -m benchmarks.jax_peers``.

Two parts, both appended to ``benchmarks/RESULTS.md`` row by row:

1. Speed, each estimator in a fresh process (``benchmarks.fresh``): the first call (compilation
   included, after the operator is built) and the steady time per 100 products, on the digits MLP
   64-256-256-10's Hessian (``hessjax.hvp_fn``) and on its Gauss-Newton matrix
   (``hessjax.ggn_fn``, positive semi-definite: where XNysTrace applies). The peers get the same
   operator object: traceax as a lineax ``FunctionLinearOperator`` tagged symmetric
   (``peers.traceax_trace``), matfree as its ``matvec(v, *parameters)``; each peer call is one
   ``jax.jit`` of the whole estimator, as their documentation shows. hessjax is called eagerly, as
   its documentation shows.
2. Accuracy, in float64: the products each estimator needs for a 1% relative RMSE (over seeds) on
   the trained 64-32-10 MLP's exact Hessian, on its exact Gauss-Newton matrix, and on the control
   operator with eigenvalues 1/i (``benchmarks.accuracy``).

About 10 minutes on the loaded 2-core CPU (``--part speed`` or ``--part accuracy`` runs one);
``--quick`` checks the script in well under a minute. A peer that is not installed is skipped with
a row saying so (``pip install traceax==1.0.2 matfree==0.6.3``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import pathlib
import sys
from typing import Any

from benchmarks import fresh, timing

MODULE = "benchmarks.jax_peers"
RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
HESSJAX_METHODS = ("hutchinson", "hutch++", "xtrace")
# (operator, library, method) measured for speed; on the Gauss-Newton matrix the PSD estimators
# beside hessjax's.
SPEED_CASES = (
    *(("hessian", "hessjax", m) for m in HESSJAX_METHODS),
    *(("hessian", "traceax", m) for m in ("hutchinson", "hutch++", "xtrace")),
    *(("hessian", "matfree", m) for m in ("hutchinson", "xtrace")),
    ("ggn", "hessjax", "hutchinson"), ("ggn", "hessjax", "xtrace"),
    ("ggn", "traceax", "xnystrace"), ("ggn", "matfree", "xnystrace"))
# --quick: every library and operator once, every case in one process (the code is checked).
QUICK_SPEED_CASES = (("hessian", "hessjax", "xtrace"), ("hessian", "traceax", "hutch++"),
                     ("hessian", "matfree", "hutchinson"), ("ggn", "traceax", "xnystrace"),
                     ("ggn", "matfree", "xnystrace"))
QUICK_ESTIMATORS = ("hessjax xtrace", "traceax xnystrace", "matfree xtrace")
OPERATORS = {"hessian": "Hessian (hvp_fn)", "ggn": "Gauss-Newton (ggn_fn)"}


def installed(library: str) -> bool:
    return library == "hessjax" or importlib.util.find_spec(library) is not None


def _estimate(library: str, method: str):
    """``(matvec, like, key, num_matvecs) -> estimate`` of ``library``'s ``method``."""
    from benchmarks import accuracy, peers

    if library == "hessjax":
        return accuracy.hessjax_estimator(method)
    return functools.partial(
        peers.traceax_trace if library == "traceax" else peers.matfree_estimate, method)


def _child(spec: dict[str, Any]) -> None:
    """Times ``spec["cases"]`` on the digits MLP in this (fresh) process."""
    import jax
    import optax

    import hessjax
    from benchmarks import workloads

    quick = spec["quick"]
    workload = workloads.digits_mlp(*(((64, 8, 10), 32) if quick else ((64, 256, 256, 10), 1024)))
    problem = workloads.problem(workload)
    params, key = problem.params, jax.random.key(0)
    num_matvecs = 12 if quick else 100
    rows = []
    for operator, library, method in spec["cases"]:
        if operator == "hessian":
            matvec = hessjax.hvp_fn(problem.loss_fn, params, problem.batch)
        else:
            matvec = hessjax.ggn_fn(
                lambda p, b: problem.logits_fn(p, b[0]),
                lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(
                    logits, b[1]).mean(), params, problem.batch)
        timing.wait(matvec)
        estimate = _estimate(library, method)
        if library == "hessjax":
            call = functools.partial(estimate, matvec, params, key, num_matvecs)
        else:
            compiled = jax.jit(estimate, static_argnums=3)
            call = functools.partial(compiled, matvec, params, key, num_matvecs)
        row = fresh.first_and_steady(call, 1 if quick else 2)
        row.update(case=[operator, library, method], value=float(call()),
                   products=_products(method, num_matvecs))
        rows.append(row)
    fresh.child_result({"name": problem.name, "rows": rows})


def _products(method: str, num_matvecs: int) -> int:
    from benchmarks import peers

    return peers.products_spent(method, num_matvecs)


def speed(section: timing.Section, quick: bool) -> None:
    section.table(("operator", "estimator", "per 100 products (steady)", "first call",
                   "programs / lower+compile / tracing", "estimate"))
    cases = [case for case in (QUICK_SPEED_CASES if quick else SPEED_CASES) if installed(case[1])]
    for library in sorted({case[1] for case in SPEED_CASES} - {case[1] for case in cases}):
        section.row("—", library, f"skipped: {library} is not installed", "", "", "")
    for group in [cases] if quick else [[case] for case in cases]:
        result = fresh.run_child(MODULE, {"cases": group, "quick": quick}, 300 if quick else 600)
        if "error" in result:
            section.row("—", ", ".join(map(" ".join, group)), "failed", result["error"], "", "")
            continue
        for row in result["rows"]:
            operator, library, method = row["case"]
            section.row(f"{result['name']} {OPERATORS[operator]}", f"{library} {method}",
                        timing.seconds(row["steady"] * 100 / row["products"]),
                        timing.seconds(row["first"]),
                        f"{row['programs']} / {row['compile_s'] + row['lower_s']:.2f} s / "
                        f"{row['trace_s']:.2f} s", f"{row['value']:.4g}")


def accuracy_rows(section: timing.Section, quick: bool) -> None:
    import jax
    import numpy as np

    from benchmarks import accuracy

    num_seeds, grid = (3, (6,)) if quick else (50, accuracy.EFFICIENCY_GRID)
    section.table(("operator", "estimator", f"products for 1% relative RMSE ({num_seeds} seeds)",
                   "relative RMSE along the budgets"))
    estimators = {f"hessjax {m}": ("hessjax", m) for m in HESSJAX_METHODS}
    estimators.update({f"{library} {m}": (library, m)
                       for library in ("traceax", "matfree") for m in _peer_methods(library)})
    if quick:
        estimators = {name: estimators[name] for name in QUICK_ESTIMATORS}
    with jax.enable_x64(True):
        small = accuracy.trained_small_mlp(**({"sizes": (64, 8, 10), "batch_size": 64}
                                              if quick else {}))
        operators = {
            f"{small.name} Hessian": lambda: accuracy.exact_hessian(small),
            f"{small.name} Gauss-Newton": lambda: accuracy.exact_ggn(small),
            f"control: PSD, eigenvalues 1/i, n = {200 if quick else accuracy.CONTROL_DIMENSION}":
                lambda: accuracy.decaying_spectrum_matrix(200 if quick else
                                                          accuracy.CONTROL_DIMENSION)}
        for operator, build in operators.items():
            matrix = build()
            eigenvalues = np.linalg.eigvalsh(matrix)
            psd = eigenvalues[0] >= -1e-10 * np.abs(eigenvalues).max()
            for name, (library, method) in estimators.items():
                if not installed(library):
                    section.row(operator, name, f"skipped: {library} is not installed", "")
                    continue
                if method in _psd_only() and not psd:
                    section.row(operator, name, "not applicable", "indefinite: smallest "
                                f"eigenvalue {eigenvalues[0]:.3g}, largest {eigenvalues[-1]:.3g}")
                    continue
                # The peers' seeds one at a time: vmapped, their float64 programs hang XLA:CPU.
                result = accuracy.estimator_efficiency(
                    matrix, num_seeds=num_seeds, grid=grid,
                    estimators={name: _estimate(library, method)},
                    vmap_seeds=library == "hessjax")[name]
                section.row(operator, name, str(result["reached"] or f"> {max(result['rmse'])}"),
                            ", ".join(f"{m}: {e:.2%}" for m, e in result["rmse"].items()))


def _peer_methods(library: str) -> tuple[str, ...]:
    from benchmarks import peers

    return peers.JAX_PEER_METHODS[library]


def _psd_only() -> tuple[str, ...]:
    from benchmarks import peers

    return peers.PSD_ONLY


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script only")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--part", choices=("speed", "accuracy", "both"), default="both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return
    section = timing.Section(None if args.no_record else RESULTS, [
        f"## hessjax beside traceax and matfree, {timing.now()}{' (--quick)' if args.quick else ''}",
        "", "`python -m benchmarks.jax_peers`: speed in fresh processes (first call after the "
        "operator is built; steady = median of the next calls), accuracy in float64.", "",
        f"- machine: {timing.machine()}", f"- at start: {timing.load()}",
        f"- versions: {timing.versions_line()}"])
    if args.part in ("speed", "both"):
        speed(section, args.quick)
    if args.part in ("accuracy", "both"):
        accuracy_rows(section, args.quick)
    section.text(f"- at end: {timing.load()}")


if __name__ == "__main__":
    main(sys.argv[1:])
