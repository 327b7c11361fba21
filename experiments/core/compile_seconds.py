"""Seconds a block of code spends compiling: the compile part of a stage's cost.

A checkpoint's first measurement in a process compiles what the later ones reuse, and a rerun with
JAX's persistent compilation cache (`binaries.enable_compilation_cache`) reads it instead; wall
seconds alone cannot tell the two costs apart. :class:`CompileEvents` records the durations JAX
reports through `jax.monitoring` while it is active: tracing to a jaxpr, lowering to MLIR and the
backend's compilation (or, with the persistent cache, fetching the compiled program);
:class:`CompileSeconds` sums them (`benchmarks.fresh.CompileLog` reads them per program). The events
are process-wide; the study runs one job at a time per process.
"""

from __future__ import annotations

from typing import Any

import jax

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
EVENTS = (TRACE_EVENT, LOWER_EVENT, COMPILE_EVENT)

_ACTIVE: list[CompileEvents] = []
_LISTENING = False


def _listen(event: str, duration: float, **kwargs: Any) -> None:
    if event in EVENTS:
        for log in _ACTIVE:
            log.events.append((event, str(kwargs.get("fun_name", "?")), duration))


class CompileEvents:
    """`with CompileEvents() as log: ...`, then `log.events`: `(event, function name, seconds)` for
    every tracing, lowering and backend compilation while the context was active."""

    def __enter__(self) -> CompileEvents:
        global _LISTENING
        if not _LISTENING:
            jax.monitoring.register_event_duration_secs_listener(_listen)
            _LISTENING = True
        self.events: list[tuple[str, str, float]] = []
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _ACTIVE.remove(self)


class CompileSeconds(CompileEvents):
    """`with CompileSeconds() as compiling: ...`, then `compiling.seconds`."""

    @property
    def seconds(self) -> float:
        return sum(duration for _, _, duration in self.events)
