"""Timing, environment capture and markdown tables shared by the benchmark scripts."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import pathlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "torch", "PyHessian", "matfree",
            "curvlinops-for-pytorch", "traceax", "lineax", "equinox")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one benchmarked call.

    Attributes:
        first: the first call (compilation, graph building and caches included).
        median: the median of the timed repeats after the first call.
        repeats: how many repeats the median is over.
    """

    first: float
    median: float
    repeats: int

    @property
    def compile(self) -> float:
        """First-call overhead: the first call minus a steady-state call."""
        return max(self.first - self.median, 0.0)


def wait(result: Any) -> Any:
    """Blocks until every JAX array in ``result`` is computed (other leaves pass through)."""
    return jax.block_until_ready(result)


def measure(fn: Callable[[], Any], repeats: int, sync: Callable[[Any], Any] = wait) -> Timing:
    """Times ``fn()``: one first call, then the median of ``repeats`` calls.

    Args:
        fn: the call to time, without arguments; its result is passed to ``sync``.
        repeats: number of timed calls after the first.
        sync: waits for the result (JAX dispatch is asynchronous; CUDA PyTorch too).

    Returns:
        A :class:`Timing`.
    """
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        samples.append(time.perf_counter() - start)
    return Timing(first, statistics.median(samples), repeats)


def versions() -> dict[str, str]:
    """Installed versions of the packages the benchmarks compare (``"absent"`` where missing)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def versions_line() -> str:
    """:func:`versions` as one line for a report header."""
    return ", ".join(f"{name} {version}" for name, version in versions().items())


def machine() -> str:
    """CPU model and core count (from ``lscpu`` where available), and JAX's default device."""
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, JAX device {jax.devices()[0].device_kind}"


def load() -> str:
    """The 1/5/15-minute load averages, to judge how noisy the timings are."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}"


def record(text: str) -> None:
    """Prints `text` and appends it to `benchmarks/RESULTS.md`."""
    print(text)
    with pathlib.Path(__file__).with_name("RESULTS.md").open("a") as stream:
        stream.write(text)


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


@dataclasses.dataclass
class Table:
    """Rows of ``(workload, figure, value, note)`` printed as they come and rendered as markdown."""

    rows: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)

    def add(self, workload: str, figure: str, value: str, note: str = "") -> None:
        self.rows.append((workload, figure, value, note))
        print(f"  {workload:22s} {figure:58s} {value:>18s}  {note}", flush=True)

    def markdown(self) -> str:
        return markdown_table(("workload", "figure", "value", "note"), self.rows)


class RecordingTable(Table):
    """A :class:`Table` that logs each row's elapsed time and rewrites its markdown file
    (``header``, then the table) after every row, so a run cut short still leaves its rows."""

    def __init__(self, path: pathlib.Path | None, header: str):
        super().__init__()
        self.path, self.header = path, header
        self.start = time.perf_counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, workload: str, figure: str, value: str, note: str = "") -> None:
        super().add(workload, figure, value, note)
        print(f"    (+{time.perf_counter() - self.start:.0f} s)", flush=True)
        if self.path is not None:
            self.path.write_text(f"{self.header}\n\n{self.markdown()}\n")


class Section:
    """A results section appended to a markdown file piece by piece as it is measured.

    The header goes in when the section starts and every row the moment it exists, so a run cut
    short (a time limit, a crash) leaves what it measured. ``path=None`` only prints.
    """

    def __init__(self, path: pathlib.Path | None, header: Sequence[str]):
        self.path = path
        self.write("\n" + "\n".join(header) + "\n")

    def write(self, text: str) -> None:
        print(text, end="", flush=True)
        if self.path is not None:
            with self.path.open("a") as stream:
                stream.write(text)

    def table(self, columns: Sequence[str]) -> None:
        """Starts a table: the rows that follow belong to it."""
        self.write("\n" + "\n".join(markdown_table(columns, []).splitlines()) + "\n")

    def row(self, *cells: Any) -> None:
        self.write(markdown_table([""] * len(cells), [cells]).splitlines()[-1] + "\n")

    def text(self, *lines: str) -> None:
        self.write("\n" + "\n".join(lines) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def describe(error: Exception) -> str:
    """The error's type and the first line of its message, cut to 200 characters (one table cell)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def seconds(value: float) -> str:
    """Seconds with a unit that keeps three significant digits readable (ms below one second)."""
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
