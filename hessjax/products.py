"""Curvature-vector products: Hessian, dataset Hessian and generalized Gauss-Newton.

Every product is composed from ``jax.jvp``/``jax.linearize`` of ``jax.grad`` (forward-over-reverse),
which costs about one extra forward pass over a gradient; reverse-over-reverse is slower, markedly so for
convolutions. The operators returned by the ``*_fn`` builders are
``jax.tree_util.Partial`` objects: callables whose arrays are pytree leaves, so they can be passed to
jitted functions and ``vmap``ped over probes, and a second operator with the same shapes reuses the
compiled estimators. Each operator also carries the loss value at its parameters, so that the
estimators can refuse a non-finite loss (:class:`hessjax.NonFiniteError`) before spending products.
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
from hessjax._common import ByIdentity, Operator, as_function_tree
from hessjax._vectors import Layout

LossFn = Callable[[Any, Any], jax.Array]


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
            array arguments bound passes them to the compiled code (see :func:`hvp_fn`).
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
    Layout.of(params, "params").check(v, "v", "`params`")
    return _hvp(as_function_tree(loss_fn), params, batch, v)


def _gradient_and_loss(loss_fn: LossFn, batch: Any) -> Callable[[Any], tuple[Any, jax.Array]]:
    """``params -> (gradient, loss)``: the loss rides along as ``jax.linearize``'s auxiliary output."""

    def gradient_and_loss(params: Any) -> tuple[Any, jax.Array]:
        loss, gradient = jax.value_and_grad(_checks.checked_scalar_loss(loss_fn, "loss_fn"))(
            params, batch)
        return gradient, loss

    return gradient_and_loss


@jax.jit
def _linearized_gradient(loss: jax.tree_util.Partial, params: Any, batch: Any
                         ) -> tuple[jax.tree_util.Partial, jax.Array]:
    _, linearized, loss_value = jax.linearize(_gradient_and_loss(loss, batch), params, has_aux=True)
    return linearized, loss_value


class _LinearizedHessian(Operator):
    """``H v`` from the linearized gradient (``apply(linearized, v)``)."""

    builder = "hvp_fn"

    def apply(self, linearized: jax.tree_util.Partial, v: Any) -> Any:
        return linearized(self.layout.cast(v))


def hvp_fn(loss_fn: LossFn, params: Any, batch: Any) -> jax.tree_util.Partial:
    r"""A matvec ``v -> H v`` that linearizes the gradient once and reuses it for every probe.

    ``jax.linearize`` of ``jax.grad`` evaluates the forward and backward passes once and keeps their
    residuals; each product then costs only the tangent pass (about one forward pass). Applied to a
    ``vmap``ped chunk of probes it reads the residuals once per chunk. The price is memory: the
    residuals of a whole forward+backward pass stay alive while the matvec does (for a large model,
    lower the estimators' ``chunk_size`` or use :func:`hessjax.memory.remat`).

    Building the operator is pure (no host synchronization). It carries the loss value at ``params``
    (a by-product of the linearization), which every estimator called outside ``jit`` checks:
    a NaN or infinite loss raises :class:`hessjax.NonFiniteError` before any product is spent.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure. A ``jax.tree_util.Partial`` with
            array arguments bound passes them to the compiled code instead of compiling anew for
            each new value (BatchNorm statistics of each checkpoint, say).
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
    layout = Layout.of(params, "params")
    linearized, loss_value = _linearized_gradient(as_function_tree(loss_fn), params, batch)
    return jax.tree_util.Partial(_LinearizedHessian(layout), linearized, loss_value)


def _dataset_scan(loss: jax.tree_util.Partial, params: Any, groups: list[Any], weights: list[jax.Array],
                  unroll: int | bool, term: Callable[[Any], Any], initial: Any) -> Any:
    """``sum_b weight_b * term(batch_b)`` over every batch, one ``lax.scan`` per group of equal shapes."""
    total = initial
    for stacked, group_weights in zip(groups, weights):

        def step(acc: Any, item: tuple[Any, jax.Array]) -> tuple[Any, None]:
            batch, weight = item
            return jax.tree_util.tree_map(
                lambda a, x: a + weight.astype(x.dtype) * x, acc, term(batch)), None

        length = group_weights.shape[0]
        total, _ = jax.lax.scan(step, total, (stacked, group_weights),
                                unroll=length if unroll is True else unroll)
    return total


class _DatasetHessian(Operator):
    """The product of the Hessian of a size-weighted mean of per-batch losses with a vector.

    ``apply(loss, params, groups, weights, v)``; ``options`` is ``(unroll,)``.
    """

    builder = "dataset_hvp_fn"

    def apply(self, loss: jax.tree_util.Partial, params: Any, groups: list[Any],
              weights: list[jax.Array], v: Any) -> Any:
        v = self.layout.cast(v)
        product = lambda batch: jax.jvp(_gradient(loss, batch), (params,), (v,))[1]
        return _dataset_scan(loss, params, groups, weights, self.options[0], product,
                             jax.tree_util.tree_map(jnp.zeros_like, v))


@functools.partial(jax.jit, static_argnames=("unroll",))
def _dataset_loss(loss: jax.tree_util.Partial, params: Any, groups: list[Any], weights: list[jax.Array],
                  unroll: int | bool) -> jax.Array:
    checked = _checks.checked_scalar_loss(loss, "loss_fn")
    value = lambda batch: checked(params, batch)
    dtype = jax.eval_shape(value, jax.tree_util.tree_map(lambda x: x[0], groups[0])).dtype
    return _dataset_scan(loss, params, groups, weights, unroll, value, jnp.zeros((), dtype))


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
    mean per-example loss when ``loss_fn`` averages over its batch. Nothing is linearized: every product
    visits the batches with ``lax.scan``, so the *working* memory of a product (one batch's activations
    and tangents) does not grow with the number of batches.

    The batches themselves are held by the operator, on the device, for as long as it lives: memory
    for the whole dataset. In the stacked form that is the arrays you pass (kept by reference, no
    copy). A ``list`` or iterator is read once and its batches are stacked into new device arrays
    (one stack per distinct batch shape), so it costs the size of all its batches, however they were
    produced; stream a dataset larger than device memory through several operators and average
    their estimates instead.

    Building the operator evaluates the mean loss once (one forward pass per batch, dispatched
    asynchronously): the estimators check it and refuse a non-finite loss
    (:class:`hessjax.NonFiniteError`).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over one batch (a ``Partial``
            with bound arrays passes them to the compiled code, as in :func:`hvp_fn`).
        params: pytree of floating arrays.
        batches: either a pytree whose leaves have a leading batch-index axis (``batches[i]`` being
            batch ``i``; all batches the same size), or a ``list``/iterator of batch pytrees (read once;
            batches of equal shapes are stacked together, unequal sizes are weighted by size).
        unroll: ``lax.scan`` unrolling. ``None`` unrolls fully on CPU when there are at most 16
            batches (XLA:CPU runs convolutions inside loop bodies many times slower) and not at all
            elsewhere.

    Returns:
        A ``jax.tree_util.Partial`` ``matvec(v) -> H v``.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: 0.5 * jnp.mean(x) * jnp.sum(p ** 2)
        >>> batches = jnp.array([[1.0, 1.0], [3.0, 3.0]])  # two batches of two examples
        >>> hessjax.dataset_hvp_fn(loss, jnp.zeros(2), batches)(jnp.ones(2))
        Array([2., 2.], dtype=float32)
    """
    layout = Layout.of(params, "params")
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
    # device_put, not jnp.asarray: a transfer, where jnp.asarray compiles a program per shape.
    weights = [jax.device_put(np.asarray(c, np.float64) / total) for c in counts]
    if unroll is None:
        unroll = True if jax.default_backend() == "cpu" and sum(map(len, counts)) <= 16 else 1
    function = as_function_tree(loss_fn)
    mean_loss = _dataset_loss(function, params, stacked, weights, unroll=unroll)
    return jax.tree_util.Partial(_DatasetHessian(layout, unroll), function, params, stacked, weights,
                                 mean_loss)


class _GaussNewton(Operator):
    """The product ``J^T H_out J v`` given the linearized model ``v -> J v`` and its outputs.

    ``apply(model_jvp, outputs, batch, v)``; ``options`` is ``(ByIdentity(loss_of_output),)``.
    """

    builder = "ggn_fn"

    def apply(self, model_jvp: Any, outputs: Any, batch: Any, v: Any) -> Any:
        output_loss = _checks.checked_scalar_loss(self.options[0], "loss_of_output")
        v = self.layout.cast(v)
        jv = model_jvp(v)
        hjv = jax.jvp(jax.grad(lambda o: output_loss(o, batch)), (outputs,), (jv,))[1]
        (jthjv,) = jax.linear_transpose(model_jvp, v)(hjv)
        return jthjv


@functools.partial(jax.jit, static_argnums=(0, 1))
def _linearized_model(model: ByIdentity, output_loss: ByIdentity, params: Any, batch: Any
                      ) -> tuple[Any, Any, jax.Array]:
    outputs, model_jvp = jax.linearize(lambda p: model.fn(p, batch), params)
    loss = _checks.checked_scalar_loss(output_loss, "loss_of_output")(outputs, batch)
    return outputs, model_jvp, loss


def ggn_fn(model_fn: Callable[[Any, Any], Any], loss_of_output: Callable[[Any, Any], jax.Array],
           params: Any, batch: Any) -> jax.tree_util.Partial:
    r"""A matvec for the generalized Gauss-Newton matrix :math:`G = J^\top H_{\mathrm{out}} J`.

    :math:`J` is the Jacobian of ``model_fn(params, batch)`` with respect to ``params`` and
    :math:`H_{\mathrm{out}}` the Hessian of ``loss_of_output(outputs, batch)`` with respect to the
    outputs. ``G`` drops the second-order term of the model from the Hessian and is positive
    semi-definite whenever the loss is convex in the outputs (cross-entropy, squared error). Each product
    is a ``jvp`` of the linearized model, an output-space Hessian-vector product and a transposed
    ``jvp``. The operator carries the loss value at ``params``, which the estimators check.

    Args:
        model_fn: ``model_fn(params, batch) -> outputs`` (any pytree of arrays, e.g. logits).
        loss_of_output: ``loss_of_output(outputs, batch) -> scalar``.
        params: pytree of floating arrays.
        batch: any pytree.

    Returns:
        A ``jax.tree_util.Partial`` ``matvec(v) -> G v``.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> model = lambda p, x: x @ p  # a linear model: G is X^T H_out X
        >>> squared_error = lambda out, x: 0.5 * jnp.sum(out ** 2)
        >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
        >>> hessjax.ggn_fn(model, squared_error, jnp.zeros(2), x)(jnp.array([1.0, 0.0]))
        Array([2., 1.], dtype=float32)

    References:
        Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
        Neural Computation 2002.
    """
    layout = Layout.of(params, "params")
    outputs, model_jvp, loss = _linearized_model(ByIdentity(model_fn), ByIdentity(loss_of_output),
                                                 params, batch)
    return jax.tree_util.Partial(_GaussNewton(layout, ByIdentity(loss_of_output)), model_jvp, outputs,
                                 batch, loss)
