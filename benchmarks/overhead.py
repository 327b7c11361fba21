"""Per-probe overhead of the estimators over a bare vmapped product: ``python -m benchmarks.overhead``.

What a probe costs inside ``trace`` (Hutchinson), ``diagonal`` and ``block_traces``, what one
Lanczos step costs inside ``lanczos``, and what a product costs inside Hutch++ and XTrace, against
one bare ``jax.jit(jax.vmap(matvec))`` product of the same chunk size (the CPU default, 1), in
steady state. Each round times every call once, in
turn, and the ratio is taken within the round: on the shared machine the load moves between rounds,
and a ratio of neighbours is steadier than either figure. The table gives the median ratio over the
rounds and its range. About 4 minutes on the loaded 2-core CPU; ``--quick`` checks the script.

Workloads: the digits MLP 64-256-256-10 and CNN 8/16 (batch 1024) and the language setting's
masked-LM transformer (width 32, depth 2, 256 sentences). Appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

import hessjax
from benchmarks import peers, timing, workloads
from benchmarks.figures import rademacher

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
TARGET = 1.1  # the per-probe overhead target, as a multiple of the bare product
BARE = "bare jit(vmap(hvp_fn)) product"


def calls(problem: workloads.Problem, num_probes: int, num_steps: int, chunk: int
          ) -> dict[str, tuple[Callable[[], Any], int]]:
    """``name -> (call, units)``: each call does ``units`` probes (or Lanczos steps)."""
    params, key = problem.params, jax.random.key(0)
    matvec = hessjax.hvp_fn(problem.loss_fn, params, problem.batch)
    probes = rademacher(key, params, chunk)
    product = jax.jit(lambda m, v: jax.vmap(m)(v))

    def bare():
        # Dispatched like the estimators' chunk kernels: a Python loop, waited for at the end.
        return [product(matvec, probes) for _ in range(num_probes // chunk)]

    budget = dict(num_matvecs=num_probes, chunk_size=chunk)
    sketched = {f"trace ({method}), per product": (
        lambda method=method: hessjax.trace(matvec, params, key, method=method, **budget),
        peers.products_spent(method, num_probes)) for method in ("hutch++", "xtrace")}
    return {
        BARE: (bare, num_probes),
        "trace (hutchinson), per probe": (
            lambda: hessjax.trace(matvec, params, key, **budget), num_probes),
        "diagonal, per probe": (lambda: hessjax.diagonal(matvec, params, key, **budget),
                                num_probes),
        "block_traces, per probe": (lambda: hessjax.block_traces(matvec, params, key, **budget),
                                    num_probes),
        f"lanczos (num_steps={num_steps}), per step": (
            lambda: hessjax.lanczos(matvec, params, key, num_steps=num_steps), num_steps),
        **sketched,
    }


def overhead_rows(problem: workloads.Problem, section: timing.Section, *, num_probes: int,
                  num_steps: int, chunk: int, rounds: int) -> dict[str, float]:
    """Times ``calls`` in ``rounds`` interleaved rounds; rows of per-unit time and ratio to bare.

    Returns the median ratio of each estimator to the bare product.
    """
    timed = calls(problem, num_probes, num_steps, chunk)
    for call, _ in timed.values():
        timing.wait(call())  # compile
    per_unit: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, (call, units) in timed.items():
            start = time.perf_counter()
            timing.wait(call())
            per_unit[name].append((time.perf_counter() - start) / units)
    medians = {}
    for name, samples in per_unit.items():
        ratios = [s / b for s, b in zip(samples, per_unit[BARE], strict=True)]
        medians[name] = statistics.median(ratios)
        section.row(problem.name, name if name != BARE else f"{BARE}, chunk {chunk}",
                    timing.seconds(statistics.median(samples)),
                    "1 (reference)" if name == BARE else
                    f"{medians[name]:.2f}x ({min(ratios):.2f}–{max(ratios):.2f})")
    del medians[BARE]
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script only")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--chunk", type=int, default=1, help="probes per chunk (CPU default 1)")
    args = parser.parse_args(argv)
    num_probes, num_steps, rounds = (6, 4, 2) if args.quick else (18, 20, 5)
    section = timing.Section(None if args.no_record else RESULTS, [
        f"## Per-probe overhead, {timing.now()}{' (--quick)' if args.quick else ''}", "",
        f"`python -m benchmarks.overhead`: {num_probes} probes per call ({num_steps} Lanczos "
        f"steps), {rounds} interleaved rounds; ratio to the bare product within each round, "
        "median (range).", "",
        f"- machine: {timing.machine()}", f"- at start: {timing.load()}",
        f"- versions: {timing.versions_line()}"])
    section.table(("workload", "call", "time per probe (or step)", "/ bare product"))
    verdicts = []
    if args.quick:
        # The masked-LM builder is checked by benchmarks.first_call's quick run.
        problems = [lambda: workloads.problem(workloads.digits_mlp((64, 8, 10), 32)),
                    lambda: workloads.problem(workloads.digits_cnn((2, 3), 16))]
    else:
        problems = [lambda: workloads.problem(workloads.digits_mlp()),
                    lambda: workloads.problem(workloads.digits_cnn()), workloads.masked_lm]
    for build in problems:
        problem = build()
        medians = overhead_rows(problem, section, num_probes=num_probes, num_steps=num_steps,
                                chunk=args.chunk, rounds=rounds)
        verdicts += [(problem.name, name, ratio) for name, ratio in medians.items()]
    section.table(("target: per-probe overhead <= 1.1x the bare product", "call", "measured",
                   "verdict"))
    for name, call, ratio in verdicts:
        section.row(name, call, f"{ratio:.2f}x", "met" if ratio <= TARGET else "missed")
    section.text(f"- at end: {timing.load()}")


if __name__ == "__main__":
    main()
