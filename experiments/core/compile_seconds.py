"""Seconds a block of code spends compiling: the compile part of a stage's cost.

A checkpoint's first measurement in a process compiles what the later ones reuse, and a rerun with
JAX's persistent compilation cache (`binaries.enable_compilation_cache`) reads it instead; wall
seconds alone cannot tell the two costs apart. :class:`CompileSeconds` sums the durations JAX
reports through `jax.monitoring` while it is active: tracing to a jaxpr, lowering to MLIR and the
backend's compilation (or, with the persistent cache, fetching the compiled program). The events
are process-wide; the study runs one job at a time per process.
"""

from __future__ import annotations

from typing import Any

import jax

EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)

_ACTIVE: list[CompileSeconds] = []
_LISTENING = False


def _listen(event: str, duration: float, **_: Any) -> None:
    if event in EVENTS:
        for counter in _ACTIVE:
            counter.seconds += duration


class CompileSeconds:
    """`with CompileSeconds() as compiling: ...`, then `compiling.seconds`."""

    def __enter__(self) -> CompileSeconds:
        global _LISTENING
        if not _LISTENING:
            jax.monitoring.register_event_duration_secs_listener(_listen)
            _LISTENING = True
        self.seconds = 0.0
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _ACTIVE.remove(self)
