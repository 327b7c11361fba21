"""Programs each public function compiles on its first call, and on a second call with a new budget.

What a user of hessjax waits for first is XLA compiling, not products. For every public estimator this
script starts a fresh Python process, builds the operator (not counted), then calls the function once
and again with a new budget, and counts the XLA programs each call compiled and the seconds spent
tracing, lowering and compiling them (``jax.monitoring``'s compile-duration events). It also times the
README's library example as a whole script in a fresh process. Counts are deterministic; seconds are
not (the machine is shared): compare seconds within one run.

    python -m benchmarks.compile_counts            # the table, markdown, on stdout
    python -m benchmarks.compile_counts --append   # also append it to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# name -> (operator, first call's options, second call's options): the second changes the budget.
CALLS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "trace hutchinson": ("hvp", {"num_matvecs": 20}, {"num_matvecs": 30}),
    "trace hutchinson chunk 4": ("hvp", {"num_matvecs": 20, "chunk_size": 4},
                                 {"num_matvecs": 30, "chunk_size": 4}),
    "trace hutch++": ("hvp", {"num_matvecs": 30, "method": "hutch++"},
                      {"num_matvecs": 60, "method": "hutch++"}),
    "trace xtrace": ("hvp", {"num_matvecs": 40, "method": "xtrace"},
                     {"num_matvecs": 60, "method": "xtrace"}),
    "trace_until hutchinson": ("hvp", {"rtol": 0.05, "max_matvecs": 200},
                               {"rtol": 0.05, "max_matvecs": 300}),
    "trace_until xtrace": ("hvp", {"rtol": 0.01, "max_matvecs": 100, "method": "xtrace"},
                           {"rtol": 0.01, "max_matvecs": 150, "method": "xtrace"}),
    "diagonal": ("hvp", {"num_matvecs": 20}, {"num_matvecs": 30}),
    "block_traces": ("hvp", {"num_matvecs": 20}, {"num_matvecs": 30}),
    "lanczos": ("hvp", {"num_steps": 20}, {"num_steps": 30}),
    "top_eigenvalues": ("hvp", {"k": 3, "num_steps": 20}, {"k": 3, "num_steps": 30}),
    "spectral_density": ("hvp", {"num_probes": 4, "num_steps": 30},
                         {"num_probes": 4, "num_steps": 40}),
    "fisher_trace": ("logits", {"num_samples": 20}, {"num_samples": 30}),
    "hessian_summary": ("dataset", {}, {"max_matvecs": 100, "lanczos_steps": 25,
                                        "block_matvecs": 30, "density_steps": 25}),
    "hessian_summary, 57-parameter MLP": ("tiny", {}, {"max_matvecs": 100, "lanczos_steps": 25,
                                                       "block_matvecs": 30, "density_steps": 25}),
}


def _counts(log: Any) -> dict[str, Any]:
    """A finished `benchmarks.fresh.CompileLog`'s programs and seconds, as JSON-ready values."""
    from experiments.core import compile_seconds

    return {"programs": len(log.programs),
            "compile_s": log.seconds(compile_seconds.COMPILE_EVENT),
            "total_s": sum(log.seconds(event) for event in compile_seconds.EVENTS),
            "names": log.programs}


def _digits(batch_size: int) -> tuple[Any, Any]:
    import jax.numpy as jnp

    from benchmarks.workloads import digits

    x, y = digits(batch_size)
    return jnp.asarray(x), jnp.asarray(y)


def _small_mlp(sizes: tuple[int, ...] = (64, 32, 10)) -> tuple[Any, Any]:
    """A tanh MLP as plain functions of a dict; by default the README's 64-32-10 (2,410 parameters)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(2), 2)
    params = {f"dense{i}": {"kernel": jax.random.normal(k, (m, n)) / m ** 0.5, "bias": jnp.zeros(n)}
              for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

    def logits_fn(params, x):
        hidden = jnp.tanh(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])
        return hidden @ params["dense1"]["kernel"] + params["dense1"]["bias"]

    return params, logits_fn


def run_one(name: str) -> dict[str, Any]:
    """Counts what ``name`` compiles in this (fresh) process; see :data:`CALLS`."""
    import jax
    import optax

    import hessjax
    from benchmarks import fresh

    kind, first, second = CALLS[name]
    params, logits_fn = _small_mlp((5, 6, 3) if kind == "tiny" else (64, 32, 10))
    x, y = _digits(1024)
    if kind == "tiny":  # 16 examples, the first 5 features, 3 classes
        x, y = x[:16, :5], y[:16] % 3
    loss_fn = lambda p, batch: optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(p, batch[0]), batch[1]).mean()
    key = jax.random.key(0)
    if kind == "hvp":
        matvec = hessjax.hvp_fn(loss_fn, params, (x, y))
        function = getattr(hessjax, name.split()[0])
        call = lambda options: function(matvec, params, key, **options)
    elif kind == "logits":
        call = lambda options: hessjax.fisher_trace(logits_fn, params, x, key, **options)
    else:
        batches = (x[None], y[None]) if kind == "tiny" else (x.reshape(4, 256, 64), y.reshape(4, 256))
        call = lambda options: hessjax.hessian_summary(loss_fn, params, batches, key, **options)
    if kind == "hvp":
        jax.block_until_ready(matvec)
    rows = {}
    for label, options in (("first", first), ("second", {**first, **second})):
        with fresh.CompileLog() as log:
            start, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(call(options))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows[label] = {**_counts(log), "wall_s": wall, "cpu_s": cpu}
    return rows


def readme_example() -> str:
    section = README.read_text().split("## Library example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_readme() -> dict[str, Any]:
    """The README example in this process, with its compile counts."""
    from benchmarks import fresh

    with fresh.CompileLog() as log:
        start, cpu = time.perf_counter(), time.process_time()
        exec(compile(readme_example(), str(README), "exec"), {})
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"first": {**_counts(log), "wall_s": wall, "cpu_s": cpu}}


def _subprocess(args: list[str]) -> tuple[dict[str, Any], float]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.compile_counts", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def table(rows: dict[str, dict[str, Any]], script: tuple[float, float]) -> str:
    lines = ["| function | first call: programs | XLA compile s | trace+lower+compile s | wall s | "
             "CPU s | second call, new budget: programs | XLA compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        first, second = row["first"], row.get("second")
        again = (f"{second['programs']} | {second['compile_s']:.2f}" if second else "— | —")
        lines.append(f"| {name} | {first['programs']} | {first['compile_s']:.2f} | "
                     f"{first['total_s']:.2f} | {first['wall_s']:.2f} | {first['cpu_s']:.2f} | {again} |")
    lines.append("")
    lines.append(f"README library example as a whole script (`python -c`, fresh process, imports "
                 f"included): **{script[0]:.1f} s** wall, {script[1]:.1f} s CPU. The README row "
                 "above is the same code after the imports, in one process.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--names", action="store_true", help="list the compiled programs' names")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_readme() if args.one == "README example" else run_one(args.one)))
        return
    from benchmarks import timing

    load = os.getloadavg()
    rows = {}
    for name in [*CALLS, "README example"]:
        rows[name], _ = _subprocess(["--one", name])
        print(f"{name}: {rows[name]['first']['programs']} programs", file=sys.stderr)
        if args.names:
            for label, row in rows[name].items():
                print(f"  {label}: {collections.Counter(row['names']).most_common()}", file=sys.stderr)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", readme_example()], cwd=ROOT, env=environment, check=True,
                   capture_output=True)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    script = (time.perf_counter() - start, after_children.ru_utime + after_children.ru_stime
              - children.ru_utime - children.ru_stime)
    after = os.getloadavg()
    header = (f"## Compile counts, {timing.now()}\n\n`python -m benchmarks.compile_counts`: "
              f"each function in a fresh process on the README's 2,410-parameter MLP (digits, batch "
              f"1024; `hessian_summary` on 4 batches of 256; its 57-parameter row: a 5-6-3 MLP on one "
              f"batch of 16). {timing.machine()}; "
              f"{timing.versions_line()}; load average {load[0]:.2f} before, {after[0]:.2f} after.\n")
    text = header + "\n" + table(rows, script) + "\n"
    print(text)
    if args.append:
        with RESULTS.open("a") as file:
            file.write("\n" + text)


if __name__ == "__main__":
    main()
