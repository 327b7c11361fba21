"""First-call and steady-call time of every public estimator, and the XLA programs each compiles.

Run ``python -m benchmarks.first_call`` (14 minutes on the 2-core CPU at load 8-12, the README
part 1 more; ``--part estimators|readme`` runs one; ``--quick`` checks the script in under a
minute, its figures meaningless). Each estimator runs in a fresh process (``benchmarks.fresh``),
so no compiled program leaks from one measurement into the next:

* its first call, compilation included, after the operator (``hvp_fn``) is built, and the median
  of a few steady calls after it;
* the XLA programs that first call compiled, the seconds spent lowering and compiling them, and the
  costliest ones: what to cut to cut the first call;
* for ``trace``, the programs a second call with another ``num_matvecs`` compiles (a new budget
  should need none beyond the method's chunk kernel).

Workloads: the digits MLP 64-256-256-10 (batch 1024) and the language setting's masked-LM
transformer (``experiments/configs/pcfg.py``: width 32, depth 2, 256 sentences of the ``small``
grammar). Last, the README's library example as a whole script in a fresh process (imports
included), and twice more with JAX's persistent compilation cache (filling it, then reading it).
Tables are appended to ``benchmarks/RESULTS.md`` row by row as they are measured.

Only the estimators' public calls are made and their results are only waited for, never read,
so the script works whatever result types the estimators return.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import fresh, timing

MODULE = "benchmarks.first_call"
RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
README = fresh.ROOT / "README.md"
TARGETS = {"readme": 8.0, "summary": 3.0}  # seconds, from the performance issue


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Budgets of the measured calls (the defaults of ``hessian_summary`` where it has one)."""

    num_matvecs: int = 30  # trace (each method), diagonal, block_traces
    second_num_matvecs: int = 60  # the second trace call, to count what a new budget compiles
    rtol: float = 0.05  # trace_until
    max_matvecs: int = 100
    num_steps: int = 20  # lanczos, top_eigenvalues
    top_k: int = 3
    density_probes: int = 4
    density_steps: int = 30
    fisher_samples: int = 20
    repeats: int = 3  # steady calls


QUICK = Sizes(num_matvecs=6, second_num_matvecs=12, rtol=0.5, max_matvecs=12, num_steps=4,
              top_k=2, density_probes=2, density_steps=4, fisher_samples=4, repeats=1)
TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")


def _cases(hessjax: Any, problem: Any, sizes: Sizes, key: Any) -> dict[str, Callable]:
    """``name -> make(matvec) -> call``; ``make`` takes None for the calls that need no operator."""
    like = problem.params
    cases: dict[str, Callable] = {
        f"trace {method}": lambda m, method=method: lambda: hessjax.trace(
            m, like, key, num_matvecs=sizes.num_matvecs, method=method)
        for method in TRACE_METHODS}
    cases.update({
        "trace_until": lambda m: lambda: hessjax.trace_until(
            m, like, key, rtol=sizes.rtol, max_matvecs=sizes.max_matvecs),
        "diagonal": lambda m: lambda: hessjax.diagonal(m, like, key,
                                                       num_matvecs=sizes.num_matvecs),
        "block_traces": lambda m: lambda: hessjax.block_traces(m, like, key,
                                                               num_matvecs=sizes.num_matvecs),
        "lanczos": lambda m: lambda: hessjax.lanczos(m, like, key, num_steps=sizes.num_steps),
        "top_eigenvalues": lambda m: lambda: hessjax.top_eigenvalues(
            m, like, key, k=sizes.top_k, num_steps=sizes.num_steps),
        "spectral_density": lambda m: lambda: hessjax.spectral_density(
            m, like, key, num_probes=sizes.density_probes, num_steps=sizes.density_steps),
        "fisher_trace": lambda _: lambda: hessjax.fisher_trace(
            problem.logits_fn, like, problem.inputs, key, num_samples=sizes.fisher_samples),
    })
    return cases


NO_OPERATOR = ("fisher_trace", "hessian_summary")
CASES = (*(f"trace {method}" for method in TRACE_METHODS), "trace_until", "diagonal",
         "block_traces", "lanczos", "top_eigenvalues", "spectral_density", "fisher_trace",
         "hessian_summary")
# --quick: one process per workload and a case of each kind (an operator and a new budget; no
# operator; batches): the code is checked, nothing is measured.
QUICK_CASES = {"mlp": ("trace hutch++", "fisher_trace", "hessian_summary"),
               "masked_lm": ("fisher_trace",)}


def _child(spec: dict[str, Any]) -> None:
    """Measures ``spec["cases"]`` on ``spec["workload"]`` in this (fresh) process."""
    import jax
    import numpy as np

    import hessjax
    from benchmarks import workloads

    sizes = QUICK if spec["quick"] else Sizes()
    if spec["workload"] == "mlp":
        problem = workloads.problem(workloads.digits_mlp(*(
            ((64, 8, 10), 32) if spec["quick"] else ((64, 256, 256, 10), 1024))))
    else:
        problem = workloads.load_masked_lm(pathlib.Path(spec["cache"]))
    key = jax.random.key(0)
    cases = _cases(hessjax, problem, sizes, key)
    # hessian_summary takes batches with a leading batch-index axis: here the one batch.
    batches = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], problem.batch)
    rows = []
    for name in spec["cases"]:
        row: dict[str, Any] = {"case": name}
        if name == "hessian_summary":
            call = lambda: hessjax.hessian_summary(problem.loss_fn, problem.params, batches, key)
        elif name in NO_OPERATOR:
            call = cases[name](None)
        else:
            with fresh.CompileLog() as log:
                start = time.perf_counter()
                matvec = timing.wait(hessjax.hvp_fn(problem.loss_fn, problem.params,
                                                    problem.batch))
                row["operator_s"] = time.perf_counter() - start
            row["operator_programs"] = len(log.programs)
            call = cases[name](matvec)
        row.update(fresh.first_and_steady(call, sizes.repeats))
        if name.startswith("trace "):
            method = name.split()[1]
            with fresh.CompileLog() as log:
                timing.wait(hessjax.trace(matvec, problem.params, key,
                                          num_matvecs=sizes.second_num_matvecs, method=method))
            row["new_budget_programs"] = log.programs
        rows.append(row)
    fresh.child_result({"name": problem.name, "num_params": problem.num_params, "rows": rows})


def readme_example() -> str:
    """The first code block under "## Library example" in README.md (as tests/test_readme.py reads it)."""
    section = README.read_text().split("## Library example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _costliest(result: dict[str, Any]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in result["costliest"])


def _compiled(result: dict[str, Any]) -> str:
    return (f"{result['programs']} / {result['compile_s'] + result['lower_s']:.2f} s / "
            f"{result['trace_s']:.2f} s")


def _script_row(section: timing.Section, label: str, result: dict[str, Any]) -> None:
    if "error" in result:
        section.row(label, result["error"], "", "")
    else:
        section.row(label, timing.seconds(result["process_s"]), _compiled(result),
                    _costliest(result))


def estimator_rows(section: timing.Section, quick: bool, scratch: pathlib.Path
                   ) -> dict[tuple[str, str], dict[str, Any]]:
    """The estimators' table and the second-budget table; returns each row's figures."""
    from benchmarks import workloads

    cache = scratch / "masked_lm.pkl"
    workloads.masked_lm(workloads.TINY_MASKED_LM if quick else workloads.MASKED_LM,
                        data_dir=str(scratch) if quick else None, save=cache)
    section.table(("workload", "call", "first call", "steady call", "first / steady",
                   "programs / lower+compile / tracing", "costliest programs (s)",
                   "hvp_fn first call"))
    figures, budgets = {}, []
    for workload in ("mlp", "masked_lm"):
        for cases in [list(QUICK_CASES[workload])] if quick else [[case] for case in CASES]:
            result = fresh.run_child(MODULE, {"workload": workload, "cases": cases,
                                              "quick": quick, "cache": str(cache)},
                                     120 if quick else 600)
            if "error" in result:
                section.row(workload, ", ".join(cases), "failed", "", "", "", result["error"], "")
                continue
            for row in result["rows"]:
                figures[(workload, row["case"])] = row
                count = row.get("operator_programs")
                operator = (f"{timing.seconds(row['operator_s'])} ({count} "
                            f"program{'' if count == 1 else 's'})" if count is not None else "—")
                section.row(result["name"], row["case"], timing.seconds(row["first"]),
                            timing.seconds(row["steady"]), f"{row['first'] / row['steady']:.0f}x",
                            _compiled(row), _costliest(row), operator)
                if "new_budget_programs" in row:
                    budgets.append((result["name"], row["case"], row["new_budget_programs"]))
    sizes = QUICK if quick else Sizes()
    section.table(("workload", "call", f"programs a second call with num_matvecs="
                   f"{sizes.second_num_matvecs} (first: {sizes.num_matvecs}) compiles"))
    for name, case, programs in budgets:
        section.row(name, case, f"{len(programs)}: {', '.join(programs) or '—'}")
    return figures


def readme_rows(section: timing.Section, scratch: pathlib.Path) -> dict[str, Any]:
    """The README example as a whole script, then twice with a persistent compilation cache."""
    section.table(("script", "wall time (fresh process, imports included)",
                   "programs / lower+compile / tracing", "costliest programs (s)"))
    script = scratch / "readme_example.py"
    script.write_text(readme_example())
    readme = fresh.run_script(script, 600)
    _script_row(section, "README library example", readme)
    # What JAX's persistent compilation cache would save a user's second run.
    cache_dir = {"JAX_COMPILATION_CACHE_DIR": str(scratch / "jax_cache"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    for label in ("first run filling", "second run reading"):
        _script_row(section, f"README library example, {label} a persistent compilation cache",
                    fresh.run_script(script, 600, **cache_dir))
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, one process per workload: checks the script only")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--part", choices=("estimators", "readme", "both"), default="both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return
    section = timing.Section(None if args.no_record else RESULTS, [
        f"## First calls and compiled programs, {timing.now()}"
        f"{' (--quick)' if args.quick else ''}", "",
        "`python -m benchmarks.first_call`: each estimator in a fresh process; first call after "
        "the operator is built (compilation included), steady call = median of the next "
        f"{(QUICK if args.quick else Sizes()).repeats}.", "",
        f"- machine: {timing.machine()}", f"- at start: {timing.load()}",
        f"- versions: {timing.versions_line()}",
        f"- XLA_FLAGS: {os.environ.get('XLA_FLAGS', '(unset)')}"])
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    readme: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        if args.part in ("estimators", "both"):
            figures = estimator_rows(section, args.quick, pathlib.Path(scratch))
        # The README example takes 15-30 s of compiling: not in the quick check.
        if args.part in ("readme", "both") and not args.quick:
            readme = readme_rows(section, pathlib.Path(scratch))
    summary = figures.get(("mlp", "hessian_summary"))
    verdicts = [("README library example as a whole script <= 8 s", readme.get("process_s")),
                ("first hessian_summary on the digits MLP <= 3 s",
                 summary["first"] if summary else None)]
    section.table(("target", "measured", "verdict"))
    for (label, value), limit in zip(verdicts, TARGETS.values(), strict=True):
        section.row(label, "not measured" if value is None else timing.seconds(value),
                    "—" if value is None else ("met" if value <= limit else "missed"))
    section.text(f"- at end: {timing.load()}")


if __name__ == "__main__":
    main(sys.argv[1:])
