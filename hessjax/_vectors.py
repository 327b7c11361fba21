"""Flat views of parameter-shaped vectors, random probes, running moments and probe loops.

Estimators see a vector (a pytree shaped like the parameters) as one flat array, so the linear algebra
they need (QR, Gram-Schmidt, sketches) is plain array code. :class:`Layout` is the hashable description
of that correspondence; it is a static argument of the jitted kernels, so a new layout compiles once and
every later call with the same shapes reuses the compiled code.

Called eagerly, the estimators compile only kernels whose shapes do not depend on the budget (a chunk
of probes, a chunk of products) and do the small algebra between them on the host, in numpy: a sketch
of ``s`` vectors, its ``s x s`` algebra and a tridiagonal eigenproblem would each be a new XLA program
for every new ``s``, which costs far more to compile than to run. Under a trace the same functions run
in ``jax.numpy``; :func:`array_ops` picks the namespace from the arrays they are given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def at_least_float32(dtype: Any) -> np.dtype:
    """``dtype`` promoted to at least float32: the dtype of every sum, moment and factorization."""
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Shapes and dtypes of a vector pytree, and its flattening to one array.

    Attributes:
        treedef: the pytree structure of a vector.
        shapes: the shape of each leaf.
        dtypes: the dtype of each leaf.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, like: Any, name: str = "like") -> Layout:
        """The layout of ``like`` (arrays or ``jax.ShapeDtypeStruct`` leaves of a floating dtype)."""
        _checks.check_float_tree(like, name)
        leaves, treedef = jax.tree_util.tree_flatten(like)
        return cls(treedef, tuple(tuple(x.shape) for x in leaves),
                   tuple(np.dtype(x.dtype) for x in leaves))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        """The dimension ``n`` of the vector space."""
        return sum(self.sizes)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the flat vector: the common dtype of the leaves, at least float32.

        Sums over probes, sketches (QR), Gram-Schmidt and the tridiagonal eigenproblem of bfloat16 or
        float16 vectors run in float32: in 8 or 11 bits a running count stops at 256, a sum of squares
        overflows at 65504 and LAPACK has no kernels. The operator still sees vectors of its leaves'
        dtypes (:meth:`unravel` casts back).
        """
        return at_least_float32(jnp.result_type(*self.dtypes))

    @property
    def bounds(self) -> tuple[tuple[int, int], ...]:
        """``(start, stop)`` of each leaf inside the flat vector."""
        stops = np.cumsum(self.sizes)
        return tuple((int(stop - size), int(stop)) for stop, size in zip(stops, self.sizes))

    def ravel(self, tree: Any) -> Array:
        leaves = self.treedef.flatten_up_to(tree)
        return jnp.concatenate([jnp.ravel(x).astype(self.dtype) for x in leaves])

    def unravel(self, flat: Array) -> Any:
        leaves = [flat[start:stop].reshape(shape).astype(dtype)
                  for (start, stop), shape, dtype in zip(self.bounds, self.shapes, self.dtypes)]
        return self.treedef.unflatten(leaves)

    def unravel_rows(self, rows: Array) -> Any:
        """:meth:`unravel` of each row of ``rows``: a pytree whose leaves have a leading axis (numpy
        rows give numpy leaves)."""
        leaves = [rows[..., start:stop].reshape(rows.shape[:-1] + shape).astype(dtype)
                  for (start, stop), shape, dtype in zip(self.bounds, self.shapes, self.dtypes)]
        return self.treedef.unflatten(leaves)

    def cast(self, tree: Any) -> Any:
        """``tree`` (with this layout's structure) with each leaf cast to this layout's dtype."""
        leaves = self.treedef.flatten_up_to(tree)
        return self.treedef.unflatten([jnp.asarray(x, dtype) for x, dtype in zip(leaves, self.dtypes)])

    def check(self, tree: Any, name: str, reference: str = "`like`") -> None:
        """Raises ``ValueError`` if ``tree`` does not have this layout's structure and shapes.

        ``reference`` names the argument this layout was taken from, for the message.
        """
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"`{name}` has pytree structure {treedef}; expected the structure of {reference}, "
                f"{self.treedef}.")
        for index, (leaf, shape) in enumerate(zip(leaves, self.shapes)):
            if tuple(jnp.shape(leaf)) != shape:
                raise ValueError(
                    f"Leaf {index} of `{name}` has shape {tuple(jnp.shape(leaf))}; expected {shape} "
                    f"(the shape of the same leaf of {reference}).")


def _solve_lower_host(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``lower^{-1} rhs`` by forward substitution, in float64 (numpy has no triangular solver)."""
    lower64, solution = lower.astype(np.float64), rhs.astype(np.float64)
    for i in range(lower.shape[0]):
        solution[i] = (solution[i] - lower64[i, :i] @ solution[:i]) / lower64[i, i]
    return solution.astype(np.result_type(lower, rhs))


class ArrayOps(NamedTuple):
    """The array namespace of the estimators' small linear algebra: numpy on the host, or XLA.

    Attributes:
        xp: ``numpy`` or ``jax.numpy``.
        matmul: the matrix product, in full precision (``Precision.HIGHEST`` in XLA).
        solve_lower: ``(L, B) -> L^{-1} B`` for a lower-triangular ``L``.
    """

    xp: Any
    matmul: Callable[[Any, Any], Any]
    solve_lower: Callable[[Any, Any], Any]


# numpy's linear algebra (QR, eigh) computes in float64 and rounds the result to the input's dtype.
HOST = ArrayOps(np, np.matmul, _solve_lower_host)
TRACED = ArrayOps(jnp, functools.partial(jnp.matmul, precision=_HIGHEST),
                  functools.partial(jax.scipy.linalg.solve_triangular, lower=True))


def array_ops(*trees: Any) -> ArrayOps:
    """:data:`TRACED` if any leaf of ``trees`` is a JAX array (or tracer), else :data:`HOST`."""
    return TRACED if any(isinstance(leaf, jax.Array)
                         for leaf in jax.tree_util.tree_leaves(trees)) else HOST


def to_host(tree: Any) -> Any:
    """Every leaf of ``tree`` as a numpy array (waits for the device)."""
    return jax.tree_util.tree_map(np.asarray, tree)


def to_device(tree: Any) -> Any:
    """Every numpy leaf of ``tree`` as a JAX array (a transfer: nothing is compiled)."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x) if isinstance(x, (np.ndarray, np.generic)) else x, tree)


# Probes longer than this are drawn block by block: JAX's counter-based generator holds about three
# times its output in temporaries, which for a billion-parameter model is a 12 GB allocation per
# probe. Below it (every model up to 16.7M parameters) a probe is one draw, as before blocks existed.
DRAW_BLOCK = 1 << 24


def draw_probes(key: Array, start: Any, count: int, layout: Layout, probe: str) -> Array:
    """Probes ``start, ..., start + count - 1`` as the rows of a ``(count, n)`` array.

    Probe ``i`` depends only on ``(key, i)``, so results do not depend on how probes are chunked, and
    two operators given the same key see the same probes (common random numbers).
    """
    return jax.vmap(lambda index: draw_vector(jax.random.fold_in(key, index), layout.size,
                                              layout.dtype, probe))(start + jnp.arange(count))


def rademacher_signs(key: Array, length: int, dtype: Any) -> Array:
    """``length`` independent random signs (+1 or -1, each with probability 1/2) from ``key``.

    Each sign is one bit of a random 32-bit word: 32 times fewer words than
    ``jax.random.rademacher`` draws (one per entry), which on the CPU made drawing a probe cost a
    quarter of a Hessian-vector product (2.4 ms against 9.9 ms on an 85k-parameter MLP; 0.4 ms
    packed).
    """
    words = jax.random.bits(key, (-(-length // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return (2 * bits.reshape(-1)[:length].astype(dtype) - 1).astype(dtype)


def draw_vector(key: Array, size: int, dtype: Any, probe: str, block: int | None = None) -> Array:
    """One probe of ``size`` i.i.d. entries (Rademacher or standard normal) from ``key``.

    Up to ``block`` entries it is one draw. Longer probes are filled block by block in place, block
    ``j`` drawn from ``fold_in(key, j)``; the last block ends at the vector's end and overwrites the
    tail of the one before it, so every entry is still an independent draw, and the temporaries are
    a few blocks rather than a few vectors. ``block=None`` means :data:`DRAW_BLOCK`.
    """
    block = DRAW_BLOCK if block is None else block

    def draw(subkey: Array, length: int) -> Array:
        if probe == "rademacher":
            return rademacher_signs(subkey, length, dtype)
        return jax.random.normal(subkey, (length,), dtype)

    if size <= block:
        return draw(key, size)

    def fill(j: Array, out: Array) -> Array:
        start = jnp.minimum(j * block, size - block)
        return jax.lax.dynamic_update_slice(out, draw(jax.random.fold_in(key, j), block), (start,))

    return jax.lax.fori_loop(0, -(-size // block), fill, jnp.zeros((size,), dtype))


def apply_rows(matvec: Callable[[Any], Any], layout: Layout, rows: Array) -> Array:
    """``A`` applied to every row of ``rows``, ``vmap``ped: the rows of ``(A rows^T)^T``."""
    return jax.vmap(lambda row: apply_one(matvec, layout, row))(rows)


def apply_one(matvec: Callable[[Any], Any], layout: Layout, row: Array) -> Array:
    """``A`` applied to one flat vector; checks (at trace time) what the matvec returns."""
    return layout.ravel(apply_tree(matvec, layout, layout.unravel(row)))


def apply_tree(matvec: Callable[[Any], Any], layout: Layout, v: Any) -> Any:
    """``A v`` for a pytree ``v``; checks (at trace time) that the matvec returns ``v``'s layout.

    The image must be real floating-point: a complex image would have its imaginary part dropped by
    the estimators, an integer one would be a truncated operator.
    """
    image = matvec(v)
    layout.check(image, "matvec(v)")
    for path, leaf in jax.tree_util.tree_leaves_with_path(image):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`matvec` returned dtype {dtype} at `matvec(v){jax.tree_util.keystr(path)}`; expected a "
                "real floating dtype: `matvec` must map real vectors shaped like `like` to real "
                "floating-point vectors of the same structure and shapes.")
    return image


def placed_like(anchor: Any, tree: Any) -> Any:
    """``tree`` committed to the one device of ``anchor``'s committed arrays, if they are on one.

    ``jax.jit`` keeps a program per placement of its arguments, and an array on a device without
    having been put there (numpy input, or a result of uncommitted inputs) is "uncommitted": a kernel
    called first with freshly made moments or vectors and then with its own (committed) results
    compiled the same program twice whenever the parameters were committed, as a checkpoint restored
    to a device or `jax.device_put`'s are (the study's first measurement compiled each trace's chunk
    kernel twice: 70 s of 180 s). Placing those inputs like the parameters gives every call the
    same placement. Parameters on several devices (`hessjax.sharding`), uncommitted ones, or traced
    values: ``tree`` unchanged.
    """
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree)):
        return tree
    for leaf in jax.tree_util.tree_leaves(anchor):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and getattr(
                leaf, "committed", False):
            if len(leaf.sharding.device_set) != 1:
                return tree
            return jax.device_put(tree, leaf.sharding)
    return tree


@functools.partial(jax.jit, static_argnames=("layout",))
def _apply_chunk(matvec: Any, layout: Layout, rows: Array) -> Array:
    return apply_rows(matvec, layout, rows)


def apply_chunk(matvec: Any, layout: Layout, rows: Array) -> Array:
    """:func:`apply_rows` compiled: the chunk kernel of products every estimator shares eagerly
    (``rows`` placed like the operator's arrays, so that drawn and computed rows share a program)."""
    return _apply_chunk(matvec, layout, placed_like(matvec, rows))


@functools.partial(jax.jit, static_argnames=("layout", "count", "probe"))
def draw_chunk(key: Array, start: Any, layout: Layout, count: int, probe: str) -> Array:
    """:func:`draw_probes` compiled; ``start`` is traced, so every chunk shares one program."""
    return draw_probes(key, start, count, layout, probe)


def chunk_bounds(total: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each chunk of ``total`` items, ``chunk_size`` at a time."""
    return [(start, min(chunk_size, total - start)) for start in range(0, total, chunk_size)]


def draw_rows(key: Array, layout: Layout, count: int, probe: str, chunk_size: int,
              eager: bool) -> Array:
    """Probes ``0 .. count - 1`` of ``key`` as the rows of a ``(count, n)`` array.

    Eagerly they are drawn ``chunk_size`` at a time by one compiled kernel, whatever ``count`` (the
    budget), and returned on the host as numpy; under a trace, in one draw.
    """
    if not eager:
        return draw_probes(key, 0, count, layout, probe)
    drawn = [draw_chunk(key, start, layout, size, probe)
             for start, size in chunk_bounds(count, chunk_size)]
    return np.concatenate(to_host(drawn))


def apply_block(matvec: Any, layout: Layout, rows: Array, chunk_size: int, eager: bool) -> Array:
    """``A`` applied to every row of ``rows``, ``chunk_size`` rows at a time (the memory knob).

    Eagerly, chunks run as a Python loop of one compiled kernel whose shape is the chunk's, not the
    budget's: dispatch is asynchronous and XLA:CPU runs convolutions inside loop bodies many times
    slower than at top level. The images come back on the host, as numpy, where the estimators do
    their small algebra. Under a trace, the chunks run through ``lax.map``.
    """
    if eager:
        rows = np.asarray(rows)
        images = [apply_chunk(matvec, layout, rows[start:start + size])
                  for start, size in chunk_bounds(rows.shape[0], chunk_size)]
        return np.concatenate(to_host(images))
    return jax.lax.map(lambda row: apply_one(matvec, layout, row), rows, batch_size=chunk_size)


class Moments(NamedTuple):
    """Count, mean and sum of squared deviations of samples, merged exactly across chunks.

    Attributes:
        count: number of samples.
        mean: their mean (any shape: one entry per estimated quantity).
        m2: the sum of squared deviations from the mean.
    """

    count: Array
    mean: Array
    m2: Array

    @classmethod
    def of(cls, samples: Array) -> Moments:
        """Moments of ``samples`` along axis 0, in at least float32 (numpy samples: on the host)."""
        xp = array_ops(samples).xp
        samples = samples.astype(at_least_float32(samples.dtype))
        mean = xp.mean(samples, axis=0)
        m2 = xp.sum(xp.square(samples - mean), axis=0)
        return cls(xp.asarray(samples.shape[0], samples.dtype), mean, m2)

    @jax.jit
    def merge(self, other: Moments) -> Moments:
        """The moments of both sample sets (Chan, Golub & LeVeque 1979): stable in float32."""
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + jnp.square(delta) * (self.count * other.count / count)
        return Moments(count, mean, m2)

    @classmethod
    def zeros(cls, shape: tuple[int, ...], dtype: Any) -> Moments:
        """The moments of no samples (in at least float32): merging them into others changes nothing.

        numpy arrays: they become arguments of the first compiled merge, with nothing to compile.
        """
        dtype = at_least_float32(dtype)
        return cls(np.zeros((), dtype), np.zeros(shape, dtype), np.zeros(shape, dtype))

    def stderr(self) -> Array:
        """Standard error of the mean, from the unbiased sample variance (host moments: numpy)."""
        xp = array_ops(self).xp
        variance = self.m2 / xp.maximum(self.count - 1, 1)
        return xp.sqrt(variance / self.count)


def accumulate(chunk_moments: Callable[[Any, int, Moments], Moments], total: int, chunk_size: int,
               eager: bool, initial: Moments) -> Moments:
    """Moments over ``total`` samples computed ``chunk_size`` at a time.

    ``chunk_moments(start, count, previous)`` merges the moments of samples ``start .. start + count - 1``
    into ``previous``, so that each chunk is one compiled call (one dispatch). Eagerly the chunks run as a
    Python loop and the moments come back on the host (numpy: what is computed from them costs no
    compilation); under a trace, full chunks run through ``lax.scan`` and the remainder once more.
    """
    if eager:
        result = initial
        for start, count in chunk_bounds(total, chunk_size):
            result = chunk_moments(start, count, result)
        return to_host(result)
    full, remainder = divmod(total, chunk_size)
    result = initial
    if full:
        result, _ = jax.lax.scan(lambda moments, start: (chunk_moments(start, chunk_size, moments), None),
                                 result, jnp.arange(full) * chunk_size)
    if remainder:
        result = chunk_moments(full * chunk_size, remainder, result)
    return result
