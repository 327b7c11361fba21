"""Curvature on many devices and hosts: meshes, sharded batches and probes, multi-host start-up.

Nothing in hessjax communicates by hand. Operators and estimators are jitted functions of their
arrays, so placing those arrays on a :class:`jax.sharding.Mesh` is all it takes: XLA's SPMD
partitioner splits each product along the sharded axes and inserts the collectives (an all-reduce
over ``"data"`` for the sum over examples in ``H v``). The helpers here build that placement:

* :func:`make_mesh`: a ``("data", "probes")`` mesh of every device (of every host);
* :func:`shard_batch` / :func:`global_batch`: the examples of a batch split along ``"data"``;
* :func:`replicate`: parameters copied to every device;
* :func:`shard_probes`: an operator whose blocks of probe vectors are split along ``"probes"`` as
  well, for batches too small to keep every device busy;
* :func:`initialize_distributed`: ``jax.distributed.initialize`` when the environment asks for it.

Example:
    >>> import jax, jax.numpy as jnp, hessjax
    >>> from hessjax import sharding
    >>> mesh = sharding.make_mesh()
    >>> params = sharding.replicate({"w": jnp.ones(3)}, mesh)
    >>> batch = sharding.shard_batch(jnp.ones((8 * jax.device_count(), 3)), mesh)
    >>> loss = lambda p, x: jnp.mean((x @ p["w"]) ** 2)
    >>> hessjax.hvp(loss, params, batch, {"w": jnp.array([1.0, 0.0, 0.0])})["w"]
    Array([2., 2., 2.], dtype=float32)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hessjax._common import as_pytree_fn

DATA = "data"
PROBES = "probes"

# Environment variables read by `initialize_distributed`.
COORDINATOR = "HESSJAX_COORDINATOR"
NUM_PROCESSES = "HESSJAX_NUM_PROCESSES"
PROCESS_ID = "HESSJAX_PROCESS_ID"
LOCAL_DEVICE_IDS = "HESSJAX_LOCAL_DEVICE_IDS"
DISTRIBUTED = "HESSJAX_DISTRIBUTED"


def make_mesh(data: int | None = None, probes: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A two-axis ``("data", "probes")`` mesh over ``devices``.

    The axes are of type ``Auto``: shardings are constraints that XLA propagates, so the library's
    kernels, written for one device, are partitioned without change (``jax.make_mesh`` defaults to
    ``Explicit`` axes, under which sharding is part of every array's type). Over several hosts the
    mesh spans the devices of all processes; ``jax.make_mesh`` orders them for fast collectives.

    Args:
        data: devices along ``"data"`` (examples of a batch are split across them). ``None``: all
            the devices not used by ``probes``.
        probes: devices along ``"probes"`` (each holds a slice of every block of probe vectors; see
            :func:`shard_probes`). 1 for pure data parallelism.
        devices: the devices to use; ``None``: ``jax.devices()`` (every device of every process).

    Returns:
        A :class:`jax.sharding.Mesh` of shape ``(data, probes)``.

    Raises:
        ValueError: if ``data * probes`` is not the number of devices.

    Example:
        >>> from hessjax import sharding
        >>> mesh = sharding.make_mesh()
        >>> mesh.axis_names, mesh.shape["probes"]
        (('data', 'probes'), 1)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"`probes` must be a positive integer; got {probes!r}.")
    if data is None:
        if len(devices) % probes:
            raise ValueError(f"`probes` ({probes}) must divide the number of devices "
                             f"({len(devices)}).")
        data = len(devices) // probes
    if not isinstance(data, int) or data * probes != len(devices):
        raise ValueError(f"`data` * `probes` must equal the number of devices ({len(devices)}); "
                         f"got data={data!r}, probes={probes}.")
    return jax.make_mesh((data, probes), (DATA, PROBES), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def _check_axis(mesh: Mesh, axis: str, name: str = "axis") -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis not in mesh.shape:
        raise ValueError(f"`{name}` {axis!r} is not an axis of the mesh; its axes are "
                         f"{tuple(mesh.axis_names)}.")
    return mesh.shape[axis]


def _example_sharding(mesh: Mesh, axis: str, batch_axis: int, ndim: int) -> NamedSharding:
    """Splits array axis ``batch_axis`` along mesh axis ``axis``; replicates leaves without it."""
    if ndim <= batch_axis:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(*(None,) * batch_axis, axis))


def shard_batch(batch: Any, mesh: Mesh, *, axis: str = DATA, batch_axis: int = 0) -> Any:
    """Places ``batch`` with its examples split across the devices of mesh axis ``axis``.

    Every process passes the same, whole batch (for a batch that each host loads a share of, use
    :func:`global_batch`). Leaves with fewer than ``batch_axis + 1`` dimensions (scalars) are
    replicated. Along the other mesh axes the batch is replicated.

    Args:
        batch: a pytree of arrays.
        mesh: the device mesh.
        axis: the mesh axis to split the examples across.
        batch_axis: the array axis that indexes examples: 0 for one batch, 1 for stacked batches
            ``(num_batches, batch_size, ...)`` as taken by :func:`hessjax.dataset_hvp_fn`.

    Returns:
        ``batch`` as ``jax.Array`` leaves with ``NamedSharding(mesh, P(..., axis))``.

    Raises:
        ValueError: if a leaf's number of examples is not a multiple of the devices along ``axis``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hessjax import sharding
        >>> mesh = sharding.make_mesh()
        >>> x = sharding.shard_batch(jnp.zeros((4 * jax.device_count(), 3)), mesh)
        >>> len(x.sharding.device_set) == jax.device_count()
        True
    """
    devices = _check_axis(mesh, axis)

    def place(path: Any, leaf: Any) -> jax.Array:
        ndim = np.ndim(leaf)
        if ndim > batch_axis and np.shape(leaf)[batch_axis] % devices:
            raise ValueError(
                f"`batch{jax.tree_util.keystr(path)}` has {np.shape(leaf)[batch_axis]} examples on "
                f"axis {batch_axis}, which is not divisible by the {devices} devices of mesh axis "
                f"{axis!r}; pad or drop examples to a multiple of {devices}.")
        return jax.device_put(leaf, _example_sharding(mesh, axis, batch_axis, ndim))

    return jax.tree_util.tree_map_with_path(place, batch)


def global_batch(local_batch: Any, mesh: Mesh, *, axis: str = DATA, batch_axis: int = 0) -> Any:
    """The global batch made of each process's share, split across mesh axis ``axis``.

    With several hosts, each loads only its share of the examples; this call makes one global
    ``jax.Array`` per leaf without moving data between hosts
    (``jax.make_array_from_process_local_data``): the examples of process ``i`` are those of its own
    devices. On one host it is :func:`shard_batch`.

    Args:
        local_batch: this process's share: a pytree of arrays, the same structure and shapes on
            every process.
        mesh: the device mesh (spanning the devices of all processes).
        axis: the mesh axis the examples are split across.
        batch_axis: the array axis that indexes examples (1 for stacked batches).

    Returns:
        A pytree of global ``jax.Array`` s whose ``batch_axis`` is the concatenation of every
        process's share.

    Raises:
        ValueError: naming the leaf, if its share cannot be split over this process's devices.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hessjax import sharding
        >>> mesh = sharding.make_mesh()  # one process: the global batch is the local one
        >>> batch = sharding.global_batch(jnp.ones((2 * jax.device_count(), 3)), mesh)
        >>> batch.shape == (2 * jax.device_count(), 3)
        True
    """
    _check_axis(mesh, axis)

    def place(path: Any, leaf: Any) -> jax.Array:
        sharding = _example_sharding(mesh, axis, batch_axis, np.ndim(leaf))
        try:
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
        except ValueError as error:
            raise ValueError(
                f"`local_batch{jax.tree_util.keystr(path)}` (shape {np.shape(leaf)}) cannot be "
                f"split along mesh axis {axis!r} over this process's "
                f"{len(sharding.addressable_devices)} devices: {error}") from error

    return jax.tree_util.tree_map_with_path(place, local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies every leaf of ``tree`` to every device of ``mesh`` (``NamedSharding(mesh, P())``).

    Parameters are replicated for data-parallel curvature: each device then computes the products of
    its examples and one all-reduce sums them. Every process must pass the same values.

    Args:
        tree: a pytree of arrays (typically the parameters).
        mesh: the device mesh.

    Returns:
        ``tree`` with replicated ``jax.Array`` leaves.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hessjax import sharding
        >>> params = sharding.replicate({"w": jnp.ones(3)}, sharding.make_mesh())
        >>> params["w"].sharding.is_fully_replicated
        True
    """
    return jax.device_put(tree, NamedSharding(mesh, P()))


@functools.cache
def _probe_sharded_apply(mesh: Mesh, axis: str) -> Callable[[Any, Any], Any]:
    """``(operator, v) -> operator(v)``, whose ``vmap`` splits the mapped probes along ``axis``.

    Cached per ``(mesh, axis)``: the function is the static part of the operator's pytree, so one
    object per mesh lets every later operator reuse the compiled estimators.
    """
    devices = mesh.shape[axis]

    @jax.custom_batching.custom_vmap
    def apply(operator: Any, v: Any) -> Any:
        return operator(v)

    @apply.def_vmap
    def apply_batched(axis_size: int, in_batched: Any, operator: Any, v: Any) -> tuple[Any, Any]:
        operator_batched, v_batched = in_batched

        def constrain(x: jax.Array, batched: bool) -> jax.Array:
            # A block that does not split evenly (the single vector of a Lanczos step, a remainder
            # chunk) is left to XLA's propagation: it still runs data-parallel.
            if not batched or axis_size % devices:
                return x
            spec = P(axis, *(P.UNCONSTRAINED,) * (x.ndim - 1))
            return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

        v = jax.tree_util.tree_map(constrain, v, v_batched)
        in_axes = jax.tree_util.tree_map(lambda batched: 0 if batched else None,
                                         (operator_batched, v_batched))
        # spmd_axis_name: sharding constraints inside the operator (a model's own annotations) keep
        # the probe axis split instead of gathering it.
        images = jax.vmap(lambda o, x: o(x), in_axes=in_axes, spmd_axis_name=axis)(operator, v)
        return images, jax.tree_util.tree_map(lambda _: True, images)

    return apply


def shard_probes(matvec: Callable[[Any], Any], mesh: Mesh, *,
                 axis: str = PROBES) -> jax.tree_util.Partial:
    """The operator ``matvec`` with every block of probe vectors split across mesh axis ``axis``.

    Estimators apply the operator to blocks of probes with ``vmap`` (``chunk_size`` probes for
    ``trace``, ``diagonal`` and ``block_traces``, the sketches of Hutch++/XTrace, the
    ``num_probes`` recurrences of ``spectral_density``). Wrapped by this function, the ``vmap`` of
    the operator constrains each block to ``P(axis, ...)``: on a ``data x probes`` mesh, device
    ``(d, p)`` applies the operator to probe slice ``p`` on example slice ``d``, and XLA
    all-reduces over ``"data"`` only. Use it when the batch alone is too small to keep every device
    busy. Blocks whose size is not a multiple of the devices along ``axis`` (a single Lanczos
    vector) are not split across probes. Results are those of ``matvec``: the probes are the same,
    only where they are computed changes. Pick ``chunk_size`` a multiple of ``mesh.shape[axis]``.

    Args:
        matvec: ``v -> A v`` (e.g. from :func:`hessjax.hvp_fn` on a sharded batch).
        mesh: the device mesh.
        axis: the mesh axis to split probes across.

    Returns:
        A ``jax.tree_util.Partial`` matvec, accepted by every estimator. It is meant for the
        estimators' ``vmap``; differentiate the unwrapped ``matvec`` instead.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> from hessjax import sharding
        >>> mesh = sharding.make_mesh(data=1, probes=jax.device_count())
        >>> matvec = sharding.shard_probes(lambda v: 2.0 * v, mesh)
        >>> est = hessjax.trace(matvec, jnp.zeros(5), jax.random.key(0), num_matvecs=8)
        >>> float(est.value)
        10.0
    """
    _check_axis(mesh, axis)
    return jax.tree_util.Partial(_probe_sharded_apply(mesh, axis), as_pytree_fn(matvec))


def _integer(environ: Mapping[str, str], name: str) -> int:
    value = environ[name].strip()
    if not value.isdigit():
        raise ValueError(f"Environment variable {name} must be a non-negative integer; got "
                         f"{value!r}.")
    return int(value)


def _cluster_has_several_processes(environ: Mapping[str, str]) -> bool:
    """Whether a launcher JAX detects by itself (Slurm, Open MPI) started more than one process."""
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if count in environ and environ[count].isdigit() and int(environ[count]) > 1:
            return True
    return False


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Starts multi-host JAX (``jax.distributed.initialize``) when the environment asks for it.

    Call it first thing in a binary, before any JAX computation. The environment decides:

    * ``HESSJAX_COORDINATOR=host:port``, ``HESSJAX_NUM_PROCESSES=N``, ``HESSJAX_PROCESS_ID=i`` (and
      optionally ``HESSJAX_LOCAL_DEVICE_IDS=0,1``): explicit start-up, for any launcher;
    * ``HESSJAX_DISTRIBUTED=auto``: JAX's own cluster detection (Cloud TPU pod slices, GKE, Slurm,
      Open MPI); on a TPU pod slice, run the same command on every worker with this set;
    * a Slurm or Open MPI launch of more than one process: detected as with ``auto``;
    * ``HESSJAX_DISTRIBUTED=off``, or none of the above: nothing happens (one host).

    Calling it again after a successful start-up does nothing.

    Args:
        environ: the environment to read; ``None``: ``os.environ``.

    Returns:
        ``True`` if JAX runs as several processes (initialized now or before), ``False`` otherwise.

    Raises:
        ValueError: an incomplete or malformed set of ``HESSJAX_*`` variables, naming them.
        RuntimeError: from JAX, if a computation already ran in this process.

    Example:
        >>> from hessjax import sharding
        >>> sharding.initialize_distributed({})
        False
    """
    environ = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return True
    mode = environ.get(DISTRIBUTED, "").lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"Environment variable {DISTRIBUTED} must be 'auto' or 'off'; got "
                         f"{environ[DISTRIBUTED]!r}.")
    if mode == "off":
        return False
    if COORDINATOR in environ:
        missing = [name for name in (NUM_PROCESSES, PROCESS_ID) if name not in environ]
        if missing:
            raise ValueError(f"{COORDINATOR} is set, so {' and '.join(missing)} must be set too "
                             "(the number of processes and this process's index).")
        num_processes = _integer(environ, NUM_PROCESSES)
        process_id = _integer(environ, PROCESS_ID)
        if not 0 <= process_id < num_processes:
            raise ValueError(f"{PROCESS_ID} must be in [0, {NUM_PROCESSES}={num_processes}); got "
                             f"{process_id}.")
        local_device_ids = None
        if environ.get(LOCAL_DEVICE_IDS):
            try:
                local_device_ids = [int(i) for i in environ[LOCAL_DEVICE_IDS].split(",")]
            except ValueError:
                raise ValueError(f"{LOCAL_DEVICE_IDS} must be comma-separated integers; got "
                                 f"{environ[LOCAL_DEVICE_IDS]!r}.") from None
        if num_processes == 1:
            return False
        jax.distributed.initialize(environ[COORDINATOR], num_processes, process_id,
                                   local_device_ids=local_device_ids)
        return True
    if mode == "auto" or _cluster_has_several_processes(environ):
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False
