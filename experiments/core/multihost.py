"""The experiment binaries on several devices and hosts: start-up, data parallelism, one writer.

JAX is multi-controller: on several hosts every process runs the same binary over the same shared
workdir, and every process must run every computation on global arrays (each is one collective
program). What differs between processes is only what touches the disk or the host's data:

  * start-up: `initialize()`, first thing in every binary's `main`, starts multi-host JAX when the
    environment asks for it (`hessjax.sharding.initialize_distributed`: `HESSJAX_COORDINATOR`,
    `HESSJAX_NUM_PROCESSES`, `HESSJAX_PROCESS_ID`, or `HESSJAX_DISTRIBUTED=auto` on a TPU pod
    slice);
  * data parallelism, over every device of every process (`data_parallel()`): parameters and
    optimizer state are replicated (`replicate`), examples are split across the devices
    (`shard_examples`). Every batch is a function of `(seed, step)` that each process computes
    from the dataset in its memory, so the global batch is the one-device batch; each process
    hands only the rows of its own devices to them. The jitted programs do not change: XLA's SPMD
    partitioner inserts the all-reduce of the gradients (and of the Hessian-vector products);
  * files: results, metrics, configs and plots are written by the primary process only
    (`is_primary()`); checkpoints go through Orbax, whose saves every process calls and whose
    primary process writes. A `barrier` follows each write that another process reads back.

With one device all of this is the identity: the binaries run exactly as before.
"""

from __future__ import annotations

import functools
import sys
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.core import config_utils
from hessjax import sharding

T = TypeVar("T")


def initialize() -> None:
    """Starts multi-host JAX if the environment asks for it; call it before any JAX computation.

    A malformed `HESSJAX_*` environment ends the binary with one line naming the variable.
    """
    try:
        started = sharding.initialize_distributed()
    except ValueError as error:
        sys.exit(f"ValueError: {error}")
    if started:
        logging.info(
            "Process %d of %d: %d of the %d devices are local.",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def is_primary() -> bool:
    """Whether this process writes the result files (process 0; the only one on one host)."""
    return jax.process_index() == 0


def agree(value: str, what: str) -> None:
    """A barrier of every process that also checks that all of them hold the same `value`.

    Args:
      value: what must be equal on every process (e.g. the jobs still to run).
      what: the value in words, for the error.

    Raises:
      RuntimeError: the processes hold different values (typically a workdir that is not one
        shared directory).
    """
    if jax.process_count() == 1:
        return
    try:
        multihost_utils.assert_equal(np.uint32(zlib.crc32(value.encode())), what)
    except AssertionError:
        raise RuntimeError(
            f"The {jax.process_count()} processes disagree on {what}: every host must see the same "
            "workdir (a shared file system or bucket) and the same config."
        ) from None


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing on one process)."""
    agree(name, f"the barrier they wait at ({name!r})")


def primary_first(build: Callable[[], T], what: str) -> T:
    """`build()` on the primary process, then, after a barrier, on the others.

    For what writes shared files the first time it runs, e.g. preparing an embedded TFDS dataset
    into the data dir: several processes preparing it at once race on TFDS's final rename. If the
    primary process fails, the others still pass the barrier and run `build` themselves (so they fail
    with the same error instead of waiting for ever).

    Args:
      build: the function to call, the same on every process.
      what: what it does, in words (names the barrier).
    """
    if jax.process_count() == 1:
        return build()
    result, error = None, None
    if is_primary():
        try:
            result = build()
        except Exception as caught:  # noqa: BLE001 - re-raised after the barrier
            error = caught
    barrier(what)
    if error is not None:
        raise error
    return result if is_primary() else build()


def data_parallel() -> bool:
    """Whether batches are split across devices: there is more than one device, on any host."""
    return jax.device_count() > 1


@functools.cache
def _mesh() -> Mesh:
    return sharding.make_mesh()


def replicated_sharding() -> NamedSharding:
    """The placement of parameters and optimizer state: a copy on every device."""
    return NamedSharding(_mesh(), P())


def replicate(tree: Any) -> Any:
    """`tree` on every device; unchanged on one device. Every process must pass the same values."""
    return sharding.replicate(tree, _mesh()) if data_parallel() else tree


def shard_examples(batch: Any, *, batch_axis: int = 0) -> Any:
    """`batch`, the same on every process, as global arrays whose examples are split across devices.

    Each process fills only the shards of its own devices, from its own copy of `batch`: nothing
    moves between hosts (`jax.device_put` of a host array would all-gather it, every step, to
    check that the copies agree). Unchanged on one device.

    Args:
      batch: a pytree of numpy arrays, the whole global batch.
      batch_axis: the axis that indexes examples (1 for stacked batches).

    Raises:
      ValueError: naming the leaf, if it has no axis `batch_axis` or the devices do not divide its
        number of examples.
    """
    if not data_parallel():
        return batch
    mesh = _mesh()
    devices = mesh.shape[sharding.DATA]
    placement = NamedSharding(mesh, P(*(None,) * batch_axis, sharding.DATA))

    def place(path: Any, leaf: Any) -> jax.Array:
        leaf = np.asarray(leaf)
        if leaf.ndim <= batch_axis or leaf.shape[batch_axis] % devices:
            raise ValueError(
                f"`batch{jax.tree_util.keystr(path)}` (shape {leaf.shape}) cannot be split along "
                f"axis {batch_axis} across {devices} devices."
            )
        return jax.make_array_from_callback(leaf.shape, placement, lambda index: leaf[index])

    return jax.tree_util.tree_map_with_path(place, batch)


def check_batch_size(batch_size: int, where: str) -> None:
    """Checks that a batch of `batch_size` examples splits evenly across the devices.

    Args:
      batch_size: the number of examples of the batches to split.
      where: the config field it comes from, for the error (e.g. `"config.pretrain.batch_size"`).

    Raises:
      ConfigError: naming `where`, if data parallel and the devices do not divide `batch_size`.
    """
    devices = jax.device_count()
    if data_parallel() and batch_size % devices:
        raise config_utils.ConfigError(
            f"{where}={batch_size} must be a multiple of the {devices} devices (over "
            f"{jax.process_count()} processes) that its examples are split across."
        )
