"""Orbax checkpoints of a run's workdir: save, list and restore named pytrees by step.

A checkpoint is a step directory under `<workdir>/checkpoints/` holding named items (`params`,
`opt_state`, ...), each a pytree. Every checkpoint is kept (later stages measure each of them),
saves are synchronous (a finished step directory is complete, which is what a killed run resumes
from) and items without leaves are not stored (Orbax refuses them; they are restored as given).
On several devices the restored trees come back replicated (`experiments.core.multihost`).
"""

from __future__ import annotations

import logging as logging_lib
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from experiments.core import multihost

CHECKPOINT_DIR = "checkpoints"


class WorkdirConfigMismatchError(ValueError):
    """The workdir holds a run of a different config."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the model of the run's config."""


class NoCheckpointsError(FileNotFoundError):
    """A pretraining workdir without any complete checkpoint."""


class _OrbaxNoiseFilter(logging_lib.Filter):
    """Drops Orbax's INFO records (it logs every file operation) and its warnings that a checkpoint
    is opened read-only (the stages only read them, once per job): both would bury the progress."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        read_only_notice = "read only" in record.getMessage().replace("_", " ")
        return record.levelno >= logging_lib.WARNING and not read_only_notice


_ORBAX_NOISE_FILTER = _OrbaxNoiseFilter()


def manager(workdir: str | pathlib.Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The checkpoint manager of `workdir` (a context manager)."""
    logging.get_absl_handler().addFilter(_ORBAX_NOISE_FILTER)  # Adding it again is a no-op.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # Keep every checkpoint: each one is measured later.
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # Leftovers of a save that was killed.
        # Small states save in milliseconds; saving synchronously means a finished checkpoint
        # directory is complete, which is what a killed run resumes from.
        enable_async_checkpointing=False,
    )
    # Orbax refuses relative paths; a user's `--workdir=runs/x` is relative to where they stand.
    return ocp.CheckpointManager((pathlib.Path(workdir) / CHECKPOINT_DIR).resolve(), options=options)


def steps(workdir: str | pathlib.Path) -> list[int]:
    """The steps of the complete checkpoints in `workdir`, ascending."""
    if not (pathlib.Path(workdir) / CHECKPOINT_DIR).exists():
        return []
    with manager(workdir, read_only=True) as opened:
        return sorted(opened.all_steps())


def _abstract(tree: Any) -> Any:
    if multihost.data_parallel():
        sharding = multihost.replicated_sharding()
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree
    )


def restore(opened: ocp.CheckpointManager, step: int, targets: dict[str, Any]) -> dict[str, Any]:
    """Restores the items in `targets` (abstract trees, e.g. from `jax.eval_shape`) at `step`.

    Items without leaves are not stored and come back as given.
    """
    stored = {name: tree for name, tree in targets.items() if jax.tree_util.tree_leaves(tree)}
    args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in stored.items()}
    restored = opened.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] if name in stored else tree for name, tree in targets.items()}


def save(opened: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> None:
    """Saves the named pytrees `items` as the checkpoint of `step` (items without leaves skipped)."""
    args = {
        name: ocp.args.StandardSave(tree)
        for name, tree in items.items()
        if jax.tree_util.tree_leaves(tree)
    }
    opened.save(step, args=ocp.args.Composite(**args))
