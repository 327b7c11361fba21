"""What the public modules share: argument preparation, user functions as pytrees, operators, probes.

Every public module imports its cross-module helpers from here (and from the lower-level
``_checks`` and ``_vectors``), never from another public module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._vectors import Layout

Array = jax.Array
Matvec = Callable[[Any], Any]
Method = Literal["hutchinson", "hutch++", "xtrace"]
Probe = Literal["rademacher", "gaussian"]
METHODS: tuple[str, ...] = get_args(Method)
PROBES: tuple[str, ...] = get_args(Probe)


def check_key(key: Any) -> None:
    """Raises ``TypeError`` unless ``key`` is one ``jax.random`` key (typed or raw ``uint32[2]``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
        return
    if dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return
    raise TypeError(
        f"`key` must be a single jax.random key (jax.random.key(0) or jax.random.PRNGKey(0)); got "
        f"{type(key).__name__} with shape {getattr(key, 'shape', None)} and dtype {dtype}.")


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    return method


def check_probe(probe: Any) -> str:
    if probe not in PROBES:
        raise ValueError(f"`probe` must be one of {PROBES}; got {probe!r}.")
    return probe


def default_chunk_size() -> int:
    """Probes per kernel when ``chunk_size=None``: 1 on CPU, 10 on accelerators.

    On an accelerator a chunk amortizes kernel launches and reads of the linearization residuals.
    On XLA:CPU the per-probe work is compute-bound, and a vmapped chunk of tangents falls out of cache
    (and vmapped convolutions are slower than a loop of single ones): per-probe time grows with the
    chunk there.
    """
    return 1 if jax.default_backend() == "cpu" else 10


def resolve_chunk_size(chunk_size: Any, budget: int) -> int:
    """The number of probes per compiled kernel: ``chunk_size`` (or the default), at most ``budget``."""
    if chunk_size is None:
        return max(1, min(default_chunk_size(), budget))
    return max(1, min(_checks.check_int(chunk_size, "chunk_size", minimum=1), budget))


@functools.partial(jax.jit, static_argnames=("num",))
def split_key(key: Array, num: int) -> tuple[Array, ...]:
    """``jax.random.split(key, num)`` as a tuple, in one compiled call (eagerly, splitting and
    unpacking would be two programs)."""
    return tuple(jax.random.split(key, num))


@jax.jit
def fold_key(key: Array, data: Any) -> Array:
    """``jax.random.fold_in(key, data)``; ``data`` is traced, so every index shares one program."""
    return jax.random.fold_in(key, data)


class ByIdentity:
    """A callable that compares and hashes by the identity of the function it wraps.

    Lets any user function (hashable or not) be a static argument of ``jit`` or the static part of a
    ``Partial``: the same function object hits the compilation cache, a new one compiles afresh.
    """

    def __init__(self, fn: Callable[..., Any], *options: Any):
        self.fn = fn
        self.options = options

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.fn is self.fn
                and other.options == self.options)

    def __hash__(self) -> int:
        return hash((type(self), id(self.fn), self.options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def binds_arrays(fn: Any) -> bool:
    """Whether ``fn`` is a ``jax.tree_util.Partial`` whose bound arguments are all arrays.

    Python scalars do not count: they are often static settings (a class count, a flag) that the
    function uses in Python control flow or as shapes, which a traced argument would break.
    """
    return isinstance(fn, jax.tree_util.Partial) and all(
        isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in jax.tree_util.tree_leaves(fn))


def as_function_tree(fn: Callable[..., Any]) -> jax.tree_util.Partial:
    """``fn`` as a pytree argument of jitted code: what it may change between calls is dynamic.

    A ``jax.tree_util.Partial`` whose bound arguments are all arrays (say
    ``Partial(loss, batch_stats)``) passes them as arguments of the compiled programs, so the same
    function with new arrays (the next checkpoint's BatchNorm statistics, a new target) reuses the
    compiled code. Any other callable is static and compared by identity: the same object hits the
    compilation cache, a new one (e.g. a new closure) compiles afresh.
    """
    if binds_arrays(fn):
        return fn
    return jax.tree_util.Partial(ByIdentity(fn))


def as_pytree_fn(fn: Callable[..., Any]) -> jax.tree_util.Partial:
    """A matvec as a pytree, so that it can be an argument of a jitted function.

    Operators built by hessjax are already ``Partial``s whose leaves are their arrays (parameters,
    batches, linearization residuals), so they enter compiled code as arguments instead of being
    embedded as constants, and a second operator of the same shapes reuses the compiled code.
    """
    if isinstance(fn, jax.tree_util.Partial):
        return fn
    if not callable(fn):
        raise TypeError(f"`matvec` must be callable (v -> A v); got {type(fn).__name__}.")
    return jax.tree_util.Partial(fn)


class Operator:
    """The static part of an operator hessjax builds, ``Partial(operator, *arrays, loss)``.

    It knows the layout of the vectors it takes (those of the parameters it was built at) and carries
    the loss value at those parameters as the last bound argument, so an estimator can name ``like``
    when it does not match and refuse a non-finite loss before spending any product. Subclasses
    implement ``apply(*arrays, v)``; ``options`` are further static settings, compared by equality.
    """

    builder = "hessjax"

    def __init__(self, layout: Layout, *options: Any):
        self.layout = layout
        self.options = options

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.layout == self.layout
                and other.options == self.options)

    def __hash__(self) -> int:
        return hash((type(self), self.layout, self.options))

    def __call__(self, *args: Any) -> Any:
        *arrays, _, v = args
        self.layout.check(v, "v", f"the `params` given to `{self.builder}`")
        return self.apply(*arrays, v)

    def apply(self, *args: Any) -> Any:
        raise NotImplementedError


def operator_of(matvec: Any) -> Operator | None:
    """The :class:`Operator` behind ``matvec`` if hessjax built it, else None."""
    if isinstance(matvec, jax.tree_util.Partial) and isinstance(matvec.func, Operator):
        return matvec.func
    return None


def loss_of(matvec: Any) -> Array | None:
    """The loss value an operator built by hessjax carries, else None."""
    if operator_of(matvec) is None:
        return None
    return matvec.args[-1]


def check_operator(matvec: Any, layout: Layout, eager: bool) -> None:
    """Checks a hessjax operator against ``like`` and, eagerly, the finiteness of its loss."""
    operator = operator_of(matvec)
    if operator is None:
        return
    if (layout.treedef, layout.shapes) != (operator.layout.treedef, operator.layout.shapes):
        raise ValueError(
            f"`like` has pytree structure {layout.treedef} and shapes {layout.shapes}; the operator from "
            f"`{operator.builder}` takes vectors like the `params` it was built at, structure "
            f"{operator.layout.treedef} and shapes {operator.layout.shapes}. Pass those params as `like`.")
    if eager:
        _checks.check_finite_loss(loss_of(matvec), f"`{operator.builder}` was built at")


def prepare(matvec: Matvec, like: Any, key: Any) -> tuple[jax.tree_util.Partial, Layout, bool]:
    """Validates the arguments every estimator takes; returns the matvec as a pytree, the layout of
    ``like`` and whether the call is eager (no tracer among the arguments).

    Eagerly, an operator built by hessjax whose loss value is NaN or infinite raises
    :class:`~hessjax.NonFiniteError` here, before any product is spent.
    """
    layout = Layout.of(like, "like")
    if layout.size == 0:
        raise ValueError(
            f"`like` has no entries (every leaf has size 0; shapes {layout.shapes}); expected a pytree "
            "with the shapes of the vectors, e.g. the parameters.")
    check_key(key)
    matvec = as_pytree_fn(matvec)
    eager = not _checks.is_tracing(matvec, like, key)
    check_operator(matvec, layout, eager)
    return matvec, layout, eager
