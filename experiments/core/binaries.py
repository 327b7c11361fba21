"""What every absl main of `experiments/` shares: the `--config` and `--workdir` flags and `run`.

A main module defines its flags at import (it is never imported by other modules) and hands one
call to `run`, which starts multi-host JAX when the environment asks for it and reports the errors
that the user's input causes as one line instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

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


def run(body: Callable[[], Any]) -> None:
    """`app.run` of a main whose whole work is `body()` (after the flags are parsed)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        multihost.initialize()
        try:
            body()
        except USER_ERRORS as error:
            sys.exit(f"{type(error).__name__}: {error}")

    app.run(main)
