"""Input validation shared by every public function.

Each check runs before any heavy computation and raises an error that names the offending argument and
says what was expected. Checks on traced values run once, at trace time, so they cost nothing per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(ValueError):
    """A loss value or an operator's products are NaN or infinite, so the curvature is not defined.

    Raised by every estimator called outside ``jax.jit`` (and by :func:`hessjax.hessian_summary`); its
    message says which was non-finite: the loss value at the parameters an operator was built at, or
    the operator's products. Under ``jit`` nothing is checked on the host: NaN or Inf propagates into
    the result (wrap the call in ``jax.experimental.checkify`` to turn it into an error there). A
    subclass of ``ValueError``, so code that caught the ``ValueError`` earlier versions raised still
    works.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, b: jnp.sum(p ** 2) + jnp.log(0.0)  # -inf everywhere, finite products
        >>> matvec = hessjax.hvp_fn(loss, jnp.ones(3), None)
        >>> try:
        ...     hessjax.trace(matvec, jnp.ones(3), jax.random.key(0), num_matvecs=4)
        ... except hessjax.NonFiniteError as error:
        ...     print(str(error)[:34])
        The loss value is non-finite (-inf
    """


def is_tracing(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a tracer, i.e. we are inside ``jit``/``vmap``/``grad``."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _is_floating(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def check_float_tree(tree: Any, name: str) -> None:
    """Checks that every leaf of ``tree`` is an array (or ``ShapeDtypeStruct``) of a floating dtype.

    Raises:
        TypeError: naming the argument and the path of the first offending leaf.
        ValueError: if the tree has no leaves.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves; expected a pytree of floating-point arrays.")
    for path, leaf in leaves:
        where = f"`{name}{jax.tree_util.keystr(path)}`"
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            raise TypeError(
                    f"{where} is a {type(leaf).__name__}; expected every leaf of `{name}` to be a "
                    "floating-point array (jax.Array or numpy.ndarray).")
        if not _is_floating(leaf.dtype):
            raise TypeError(
                    f"{where} has dtype {leaf.dtype}; expected a floating dtype (float16/bfloat16/float32/"
                    "float64). Curvature is defined with respect to continuous parameters only: move integer "
                    "or boolean leaves out of the differentiated pytree.")


def checked_scalar_loss(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Wraps ``fn`` so that a non-scalar or non-floating output raises at trace time."""

    def wrapped(*args: Any) -> Any:
        out = fn(*args)
        shape = getattr(out, "shape", None)
        dtype = getattr(out, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(
                    f"`{name}` returned a {type(out).__name__}; expected a scalar floating-point array.")
        if tuple(shape) != ():
            raise ValueError(
                    f"`{name}` returned an array of shape {tuple(shape)}; expected a scalar (shape ()). "
                    "Reduce the per-example losses, e.g. with jnp.mean.")
        if not _is_floating(dtype):
            raise TypeError(
                    f"`{name}` returned dtype {dtype}; expected a floating-point scalar (an integer loss has "
                    "no derivatives).")
        return out

    return wrapped


def check_int(value: Any, name: str, *, minimum: int, why: str = "") -> int:
    """Checks that ``value`` is a Python/numpy integer ``>= minimum`` and returns it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer; got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}{why}; got {value}.")
    return int(value)


def check_finite(what: str, *arrays: Any, source: str = "The operator's products",
                 culprit: str = "the loss at these parameters or the matvec") -> None:
    """Raises :class:`NonFiniteError` if any of ``arrays`` holds NaN or Inf (eager calls only).

    A NaN or Inf in any product reaches every result computed from it (sums, orthogonalizations and
    quadratic forms all propagate it), so checking the results checks the products without a host
    sync per product.
    """
    for array in jax.tree_util.tree_leaves(arrays):
        # On the host: a transfer of what was computed anyway, where jnp would compile two programs.
        if not np.all(np.isfinite(np.asarray(array, np.float64))):
            raise NonFiniteError(
                    f"{source} are non-finite (NaN or Inf), so {what} is not defined. Check {culprit} "
                    "(overflow, log of zero, division by zero).")


def check_finite_loss(loss: Any, where: str) -> None:
    """Raises :class:`NonFiniteError` if the loss value ``loss`` is NaN or infinite (eager calls only)."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteError(
                f"The loss value is non-finite ({value}) at the parameters {where}: its curvature is not "
                "defined. Check the loss there (log of zero, overflow, division by zero).")
