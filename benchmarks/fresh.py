"""First calls in fresh processes, and the XLA programs a call compiles.

A first call costs what the process has not compiled yet, so a first-call figure means something
only in a process that has run nothing before it: :func:`run_child` starts one (``python -m MODULE
--child SPEC``) per measurement and reads back the JSON line the child prints with
:func:`child_result`. Inside the child, :class:`CompileLog` listens to JAX's compilation events
(``jax.monitoring``): every XLA program compiled, its name, and the seconds spent tracing, lowering
to MLIR and compiling it. Op-by-op dispatch outside ``jit`` (``jax.random.split`` on a key, an
eager ``jnp`` call) compiles a program too, and is counted like any other.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import timing
from experiments.core import compile_seconds

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRACE_EVENT, LOWER_EVENT, COMPILE_EVENT = (
    compile_seconds.TRACE_EVENT, compile_seconds.LOWER_EVENT, compile_seconds.COMPILE_EVENT)
RESULT_PREFIX = "FRESH-RESULT "


def _program_name(name: str) -> str:
    # Lowering and compilation report "jit(f)", tracing reports "f".
    return name[4:-1] if name.startswith("jit(") and name.endswith(")") else name


class CompileLog(compile_seconds.CompileEvents):
    """The compilations that happen while the context is active.

    Attributes:
        events: ``(event, function name, seconds)`` for every tracing, lowering and XLA compilation.
    """

    @property
    def programs(self) -> list[str]:
        """The names of the XLA programs compiled, in order (a name twice: two shapes)."""
        return [_program_name(name) for event, name, _ in self.events if event == COMPILE_EVENT]

    def seconds(self, event: str) -> float:
        return sum(seconds for kind, _, seconds in self.events if kind == event)

    def costliest(self, count: int = 4) -> list[tuple[str, float]]:
        """The programs with the most lowering + XLA compile seconds (summed over their shapes)."""
        totals: collections.Counter[str] = collections.Counter()
        for event, name, seconds in self.events:
            if event in (LOWER_EVENT, COMPILE_EVENT):
                totals[_program_name(name)] += seconds
        return totals.most_common(count)

    def summary(self) -> dict[str, Any]:
        """Program count, seconds per phase and the costliest programs, as JSON-ready values.

        Tracing of a ``jit`` nested in another is timed inside the outer one too, so
        ``trace_s`` can count some seconds twice; lowering and XLA compilation do not overlap.
        """
        return {"programs": len(self.programs), "program_names": self.programs,
                "compile_s": self.seconds(COMPILE_EVENT), "lower_s": self.seconds(LOWER_EVENT),
                "trace_s": self.seconds(TRACE_EVENT), "costliest": self.costliest()}


def first_and_steady(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Times ``call()``'s first call with its compilations, then the median of ``repeats`` more.

    Returns :meth:`CompileLog.summary` of the first call with ``first`` and ``steady`` (seconds)
    and ``steady_programs``: what the later calls compiled (should be 0).
    """
    with CompileLog() as log:
        start = time.perf_counter()
        timing.wait(call())
        first = time.perf_counter() - start
    samples = []
    with CompileLog() as later:
        for _ in range(repeats):
            start = time.perf_counter()
            timing.wait(call())
            samples.append(time.perf_counter() - start)
    return {**log.summary(), "first": first, "steady": statistics.median(samples),
            "repeats": repeats, "steady_programs": len(later.programs)}


def child_result(payload: Any) -> None:
    """Prints the child's result for :func:`run_child` (one JSON line)."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def environment(**variables: str) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, plus ``variables``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env.update(variables)
    return env


def run_child(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs ``python -m module --child SPEC`` in a fresh process and returns what it reported.

    Returns:
        The child's payload (a dict) with ``process_s``, the child's wall time from start to exit;
        or ``{"error": ...}`` with the end of its stderr when it failed or timed out.
    """
    command = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    elapsed = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[-400:]
        return {"error": f"exit {done.returncode}: {tail}"}
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "process_s": elapsed}


def run_script(path: pathlib.Path, timeout: float, **variables: str) -> dict[str, Any]:
    """Runs a Python script as a user would (``python path``) and times the whole process.

    JAX's own compile log (``JAX_LOG_COMPILES=1``, on stderr) gives the programs the script
    compiled without changing a line of it. ``variables`` are added to its environment.

    Returns:
        ``process_s`` (wall time from start to exit), ``programs``, ``compile_s``, ``lower_s``,
        ``trace_s`` and ``costliest`` as in :meth:`CompileLog.summary`, and ``stdout``; or
        ``{"error": ...}``.
    """
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(path)], cwd=path.parent,
                              env=environment(JAX_LOG_COMPILES="1", **variables),
                              capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    elapsed = time.perf_counter() - start
    if done.returncode:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    log = CompileLog()
    log.events = list(_logged_events(done.stderr))
    return {**log.summary(), "process_s": elapsed, "stdout": done.stdout}


_LOG_LINES = (("Finished tracing ", " for jit in ", TRACE_EVENT),
              ("Finished jaxpr to MLIR module conversion ", " in ", LOWER_EVENT),
              ("Finished XLA compilation of ", " in ", COMPILE_EVENT))


def _logged_events(stderr: str):
    """``(event, program, seconds)`` from the lines ``JAX_LOG_COMPILES=1`` writes."""
    for line in stderr.splitlines():
        for opening, middle, event in _LOG_LINES:
            at = line.find(opening)
            if at < 0:
                continue
            name, _, rest = line[at + len(opening):].rpartition(middle)
            yield event, _program_name(name), float(rest.split()[0])
