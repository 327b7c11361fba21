"""What every absl main of `experiments/` shares: the `--config` and `--workdir` flags and `run`.

A main module defines its flags at import (it is never imported by other modules) and hands one
call to `run`, which turns on JAX's persistent compilation cache, starts multi-host JAX when the
environment asks for it, and reports the errors that the user's input causes as one line instead
of a traceback.

The compilation cache: on a CPU, compiling the small models' programs costs more than running
them, so every binary (and every worker process a study spawns) stores its compiled programs in
`$HESSJAX_COMPILATION_CACHE` (default `~/.cache/hessjax/xla`; empty: off), and a rerun or the next
stage reuses what an earlier process compiled. Programs of any compile time are cached.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments.core import checkpoints, config_utils, jobs, multihost

# Errors caused by the user's input, which the binaries report as one message.
USER_ERRORS = (
    config_utils.ConfigError,  # Unknown names (settings, datasets, objectives), bad fields.
    FileNotFoundError,  # No run in the workdir, no checkpoint, a dataset not prepared.
    checkpoints.CheckpointMismatchError,
    checkpoints.WorkdirConfigMismatchError,
    jobs.StudyIncompleteError,
)


def define_config_flag(
    default: str | None = None,
) -> flags.FlagHolder[ml_collections.ConfigDict | None]:
    """`--config=experiments/configs/NAME.py`, with `--config.SECTION.FIELD=VALUE` overrides."""
    return config_flags.DEFINE_config_file(
        "config", default, "Config file (overrides: --config.SECTION.FIELD=VALUE).", lock_config=True
    )


def define_workdir_flag(help_text: str = "The working directory.") -> flags.FlagHolder[str]:
    """`--workdir`, required."""
    return flags.DEFINE_string("workdir", None, help_text, required=True)


COMPILATION_CACHE_VARIABLE = "HESSJAX_COMPILATION_CACHE"


def enable_compilation_cache(environ: dict[str, str] | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (see the module docstring); returns its dir.

    Set through the environment (`JAX_COMPILATION_CACHE_DIR` and the size thresholds), so that
    worker processes spawned later inherit it; call it before JAX compiles anything.
    """
    environ = os.environ if environ is None else environ
    default = os.path.join(os.path.expanduser("~"), ".cache", "hessjax", "xla")
    directory = environ.get(COMPILATION_CACHE_VARIABLE, default)
    if not directory:
        return None
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", directory)
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )
    jax.config.update(
        "jax_persistent_cache_min_entry_size_bytes",
        int(environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
    )
    return environ["JAX_COMPILATION_CACHE_DIR"]


def run(body: Callable[[], Any]) -> None:
    """`app.run` of a main whose whole work is `body()` (after the flags are parsed)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        enable_compilation_cache()
        multihost.initialize()
        try:
            body()
        except USER_ERRORS as error:
            sys.exit(f"{type(error).__name__}: {error}")

    app.run(main)
