"""Curvature-vector products: Hessian, dataset Hessian and generalized Gauss-Newton.

Every product is composed from ``jax.jvp``/``jax.linearize`` of ``jax.grad`` (forward-over-reverse),
which costs about one extra forward pass over a gradient; reverse-over-reverse is slower, markedly so for
convolutions (see BUILD.md). The operators returned by the ``*_fn`` builders are
``jax.tree_util.Partial`` objects: callables whose arrays are pytree leaves, so they can be passed to
jitted functions and ``vmap``ped over probes, and a second operator with the same shapes reuses the
compiled estimators.
"""

from __future__ import annotations

import collections.abc
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._vectors import Layout

LossFn = Callable[[Any, Any], jax.Array]


class _ByIdentity:
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
    return jax.tree_util.Partial(_ByIdentity(fn))


def _gradient(loss_fn: LossFn, batch: Any) -> Callable[[Any], Any]:
    return lambda params: jax.grad(_checks.checked_scalar_loss(loss_fn, "loss_fn"))(params, batch)


def _like_params(params: Any, v: Any) -> Any:
    """``v`` cast leaf by leaf to the dtypes of ``params`` (``jvp`` needs matching dtypes)."""
    return jax.tree_util.tree_map(lambda p, x: jnp.asarray(x, p.dtype), params, v)


@jax.jit
def _hvp(loss: jax.tree_util.Partial, params: Any, batch: Any, v: Any) -> Any:
    return jax.jvp(_gradient(loss, batch), (params,), (_like_params(params, v),))[1]


def hvp(loss_fn: LossFn, params: Any, batch: Any, v: Any) -> Any:
    r"""The Hessian-vector product :math:`H v`, forward-over-reverse.

    .. math::
        H v = \frac{\partial}{\partial \epsilon} \nabla_\theta L(\theta + \epsilon v, b)\Big|_{\epsilon=0}

    computed as ``jax.jvp`` of ``jax.grad``: one forward and one backward pass carried with tangents.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure. A ``jax.tree_util.Partial`` with
            array arguments bound passes them to the compiled code (see :func:`as_function_tree`).
        params: pytree of floating arrays at which the Hessian is taken.
        batch: any pytree, passed to ``loss_fn`` unchanged.
        v: a pytree with the structure and shapes of ``params``.

    Returns:
        ``H v``, a pytree like ``params``.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: jnp.sum(p["w"] ** 3 * x)
        >>> hessjax.hvp(loss, {"w": jnp.array([1.0, 2.0])}, 1.0, {"w": jnp.array([1.0, 0.0])})["w"]
        Array([6., 0.], dtype=float32)

    References:
        Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
    """
    Layout.of(params, "params").check(v, "v")
    return _hvp(as_function_tree(loss_fn), params, batch, v)


@jax.jit
def _linearized_gradient(loss: jax.tree_util.Partial, params: Any, batch: Any
                         ) -> jax.tree_util.Partial:
    return jax.linearize(_gradient(loss, batch), params)[1]


def hvp_fn(loss_fn: LossFn, params: Any, batch: Any) -> jax.tree_util.Partial:
    r"""A matvec ``v -> H v`` that linearizes the gradient once and reuses it for every probe.

    ``jax.linearize`` of ``jax.grad`` evaluates the forward and backward passes once and keeps their
    residuals; each product then costs only the tangent pass (about one forward pass). Applied to a
    ``vmap``ped chunk of probes it reads the residuals once per chunk. The price is memory: the
    residuals of a whole forward+backward pass stay alive while the matvec does (see BUILD.md for
    ``chunk_size`` guidance on large models).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure. A ``jax.tree_util.Partial`` with
            array arguments bound passes them to the compiled code (see :func:`as_function_tree`).
        params: pytree of floating arrays at which the Hessian is taken.
        batch: any pytree, passed to ``loss_fn`` unchanged.

    Returns:
        A ``jax.tree_util.Partial`` ``matvec(v) -> H v`` on pytrees like ``params``; ``vmap``-able and
        accepted as an argument by jitted functions.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: 0.5 * jnp.sum(x * p ** 2)
        >>> matvec = hessjax.hvp_fn(loss, jnp.ones(3), jnp.array([1.0, 2.0, 3.0]))
        >>> jax.vmap(matvec)(jnp.eye(3))
        Array([[1., 0., 0.],
               [0., 2., 0.],
               [0., 0., 3.]], dtype=float32)
    """
    _checks.check_float_tree(params, "params")
    return _linearized_gradient(as_function_tree(loss_fn), params, batch)


class _DatasetHessian:
    """The product of the Hessian of a size-weighted mean of per-batch losses with a vector."""

    def __init__(self, unroll: int | bool):
        self.unroll = unroll

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.unroll == self.unroll

    def __hash__(self) -> int:
        return hash((type(self), self.unroll))

    def __call__(self, loss: jax.tree_util.Partial, params: Any, groups: list[Any],
                 weights: list[jax.Array], v: Any) -> Any:
        unroll = self.unroll
        gradient = lambda batch: _gradient(loss, batch)
        v = _like_params(params, v)
        total = jax.tree_util.tree_map(jnp.zeros_like, v)
        for stacked, group_weights in zip(groups, weights):

            def step(acc, item):
                batch, weight = item
                product = jax.jvp(gradient(batch), (params,), (v,))[1]
                return jax.tree_util.tree_map(
                    lambda a, h: a + weight.astype(h.dtype) * h, acc, product), None

            length = group_weights.shape[0]
            total, _ = jax.lax.scan(step, total, (stacked, group_weights),
                                    unroll=length if unroll is True else unroll)
        return total


def _leading_size(batch: Any, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves; expected arrays with a leading axis.")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"Every leaf of `{name}` must have the same leading (batch) axis; got leading sizes "
            f"{sorted(s for s in sizes if s is not None)}{' and a scalar' if None in sizes else ''}.")
    return sizes.pop()


def _is_sequence_of_batches(batches: Any) -> bool:
    return isinstance(batches, (list, collections.abc.Iterator)) or (
        isinstance(batches, Iterable) and not isinstance(
            batches, (tuple, dict, np.ndarray, jax.Array, str, bytes)))


def dataset_hvp_fn(loss_fn: LossFn, params: Any, batches: Any, *,
                   unroll: int | bool | None = None) -> jax.tree_util.Partial:
    r"""A matvec for the Hessian of the loss averaged over many batches.

    .. math::
        H v = \sum_b \frac{n_b}{\sum_{b'} n_{b'}} \nabla^2_\theta L(\theta, b)\, v

    where :math:`n_b` is the size (leading axis) of batch :math:`b`, so the result is the Hessian of the
    mean per-example loss when ``loss_fn`` averages over its batch. Batches are visited with
    ``lax.scan`` at every product, so memory does not grow with their number (nothing is linearized).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over one batch (a ``Partial``
            with bound arrays passes them to the compiled code, see :func:`as_function_tree`).
        params: pytree of floating arrays.
        batches: either a pytree whose leaves have a leading batch-index axis (``batches[i]`` being
            batch ``i``; all batches the same size), or a ``list``/iterator of batch pytrees (read once;
            batches of equal shapes are stacked together, unequal sizes are weighted by size).
        unroll: ``lax.scan`` unrolling. ``None`` unrolls fully on CPU when there are at most 16
            batches (XLA:CPU runs convolutions inside loop bodies many times slower) and not at all
            elsewhere.

    Returns:
        A ``jax.tree_util.Partial`` ``matvec(v) -> H v``.
    """
    _checks.check_float_tree(params, "params")
    if _is_sequence_of_batches(batches):
        batch_list = list(batches)
        if not batch_list:
            raise ValueError("`batches` is empty; expected at least one batch.")
        sizes = [_leading_size(b, f"batches[{i}]") for i, b in enumerate(batch_list)]
        signature = lambda b: (jax.tree_util.tree_structure(b),
                               tuple(np.shape(x) for x in jax.tree_util.tree_leaves(b)))
        groups: dict[Any, list[int]] = {}
        for index, batch in enumerate(batch_list):
            groups.setdefault(signature(batch), []).append(index)
        stacked = [jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                          *[batch_list[i] for i in members])
                   for members in groups.values()]
        counts = [[sizes[i] for i in members] for members in groups.values()]
    else:
        count = _leading_size(batches, "batches")
        if count == 0:
            raise ValueError("`batches` has a leading axis of size 0; expected at least one batch.")
        stacked, counts = [batches], [[1] * count]
    total = float(sum(sum(c) for c in counts))
    weights = [jnp.asarray(np.asarray(c, np.float64) / total) for c in counts]
    if unroll is None:
        unroll = True if jax.default_backend() == "cpu" and sum(map(len, counts)) <= 16 else 1
    return jax.tree_util.Partial(_DatasetHessian(unroll), as_function_tree(loss_fn), params,
                                 stacked, weights)


class _GaussNewton(_ByIdentity):
    """The product ``J^T H_out J v`` given the linearized model ``v -> J v`` and its outputs."""

    def __call__(self, model_jvp: Any, outputs: Any, batch: Any, v: Any) -> Any:
        output_loss = _checks.checked_scalar_loss(self.fn, "loss_of_output")
        jv = model_jvp(v)
        hjv = jax.jvp(jax.grad(lambda o: output_loss(o, batch)), (outputs,), (jv,))[1]
        (jthjv,) = jax.linear_transpose(model_jvp, v)(hjv)
        return jthjv


@functools.partial(jax.jit, static_argnums=0)
def _linearized_model(model: _ByIdentity, params: Any, batch: Any) -> tuple[Any, Any]:
    return jax.linearize(lambda p: model.fn(p, batch), params)


def ggn_fn(model_fn: Callable[[Any, Any], Any], loss_of_output: Callable[[Any, Any], jax.Array],
           params: Any, batch: Any) -> jax.tree_util.Partial:
    r"""A matvec for the generalized Gauss-Newton matrix :math:`G = J^\top H_{\mathrm{out}} J`.

    :math:`J` is the Jacobian of ``model_fn(params, batch)`` with respect to ``params`` and
    :math:`H_{\mathrm{out}}` the Hessian of ``loss_of_output(outputs, batch)`` with respect to the
    outputs. ``G`` drops the second-order term of the model from the Hessian and is positive
    semi-definite whenever the loss is convex in the outputs (cross-entropy, squared error). Each product
    is a ``jvp`` of the linearized model, an output-space Hessian-vector product and a transposed
    ``jvp``.

    Args:
        model_fn: ``model_fn(params, batch) -> outputs`` (any pytree of arrays, e.g. logits).
        loss_of_output: ``loss_of_output(outputs, batch) -> scalar``.
        params: pytree of floating arrays.
        batch: any pytree.

    Returns:
        A ``jax.tree_util.Partial`` ``matvec(v) -> G v``.

    References:
        Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
        Neural Computation 2002.
    """
    _checks.check_float_tree(params, "params")
    outputs, model_jvp = _linearized_model(_ByIdentity(model_fn), params, batch)
    return jax.tree_util.Partial(_GaussNewton(loss_of_output), model_jvp, outputs, batch)
