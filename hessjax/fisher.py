"""The Fisher-sampling estimator of the Hessian trace for models with a categorical output."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hessjax import _checks
from hessjax._common import as_function_tree, check_key, resolve_chunk_size
from hessjax._vectors import Moments, accumulate, array_ops, placed_like, to_device
from hessjax.trace import TraceEstimate

Array = jax.Array


def _split_outputs(outputs: Any) -> tuple[Array, Array | None]:
    if isinstance(outputs, tuple) and len(outputs) == 2:
        return outputs
    return outputs, None


def _check_outputs(logits_fn: Callable[..., Any], params: Any, inputs: Any) -> None:
    logits, weights = _split_outputs(jax.eval_shape(logits_fn, params, inputs))
    if not hasattr(logits, "shape") or len(logits.shape) < 1 or not jnp.issubdtype(
            logits.dtype, jnp.floating):
        raise ValueError(
            "`logits_fn` must return floating logits of shape (..., num_classes), or a pair "
            f"(logits, weights); got {logits}.")
    if weights is not None and tuple(weights.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"The weights returned by `logits_fn` have shape {tuple(weights.shape)}; expected the "
            f"logits' shape without its class axis, {tuple(logits.shape[:-1])}.")


def _squared_score_norm(logits_fn: jax.tree_util.Partial, params: Any, inputs: Any, key: Array
                        ) -> Array:
    label_key, sign_key = jax.random.split(key)
    logits, pullback, weights = jax.vjp(
        lambda p: _split_outputs(logits_fn(p, inputs)), params, has_aux=True)
    if weights is None:
        weights = jnp.ones(logits.shape[:-1], logits.dtype)
    weights = jax.lax.stop_gradient(weights).astype(logits.dtype)
    labels = jax.random.categorical(label_key, logits)
    signs = jax.random.rademacher(sign_key, labels.shape, logits.dtype)
    scale = signs * jnp.sqrt(weights / jnp.sum(weights))
    # d/dlogits of sum_j scale_j log softmax(logits_j)[y_j] = scale_j (onehot(y_j) - softmax(logits_j))
    cotangent = scale[..., None] * (jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
                                    - jax.nn.softmax(logits))
    (gradient,) = pullback(cotangent)
    return sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(gradient))


@functools.partial(jax.jit, static_argnames=("count",))
def _score_moments(logits_fn: jax.tree_util.Partial, params: Any, inputs: Any, key: Array, start: Any,
                   previous: Moments, *, count: int) -> Moments:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(count))
    return previous.merge(
        Moments.of(jax.vmap(lambda k: _squared_score_norm(logits_fn, params, inputs, k))(keys)))


def fisher_trace(logits_fn: Callable[[Any, Any], Any], params: Any, inputs: Any, key: Array, *,
                 num_samples: int, chunk_size: int | None = None) -> TraceEstimate:
    r"""Estimates the trace of the Fisher information with labels sampled from the model itself.

    For predictions :math:`j` with weights :math:`w_j` (all 1 by default) and the loss
    :math:`L = \sum_j w_j \ell_j / \sum_j w_j`, :math:`\ell_j = -\log p_\theta(y_j \mid x_j)`,

    .. math::
        \operatorname{tr} F = \sum_j \frac{w_j}{\sum_k w_k}\,
            \mathbb E_{y \sim p_\theta(\cdot \mid x_j)} \|\nabla_\theta \log p_\theta(y \mid x_j)\|^2 .

    Each sample draws every label from the model's categorical output and a random sign
    :math:`\epsilon_j`, and takes the squared norm of one gradient,
    :math:`\|\nabla_\theta \sum_j \epsilon_j \sqrt{w_j / W} \log p_\theta(y_j \mid x_j)\|^2`, whose
    expectation is exactly the sum above (the signs cancel the cross terms): the cost of a sample is one
    backward pass however many predictions the batch holds. At a well-specified optimum the Fisher equals
    the Hessian of the expected loss, so this is the Hessian-trace estimator of Liu et al. (2023) for
    masked language models (``weights``: the mask of predicted positions).

    The samples are squared norms, positive and right-skewed; ``value ± 2 * stderr`` covers far less
    than 95% at small ``num_samples``: use ``estimate.interval(0.95)`` (Student-t with
    ``num_samples - 1`` degrees of freedom).

    Args:
        logits_fn: ``logits_fn(params, inputs) -> logits`` of shape ``(..., num_classes)``, or
            ``-> (logits, weights)`` with ``weights`` of shape ``logits.shape[:-1]``.
        params: pytree of floating arrays.
        inputs: any pytree, passed to ``logits_fn``.
        key: a ``jax.random`` key.
        num_samples: the number of sampled gradients, >= 2.
        chunk_size: samples evaluated together (``vmap``) in one compiled kernel.

    Returns:
        A :class:`TraceEstimate`; its ``num_matvecs`` counts the sampled gradients (one backward pass
        each, the cost unit that plays the role of a product here).

    Raises:
        ValueError: bad arguments. :class:`hessjax.NonFiniteError`, outside ``jit``: the sampled
            gradients are NaN or infinite.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> logits_fn = lambda w, x: x @ w  # a linear softmax classifier
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> est = hessjax.fisher_trace(logits_fn, jnp.zeros((3, 4)), x, jax.random.key(1),
        ...                            num_samples=50)
        >>> int(est.num_matvecs), bool(est.value > 0)
        (50, True)

    References:
        Liu, Xie, Li & Ma, "Same pre-training loss, better downstream: implicit bias matters for
        language models", ICML 2023. Martens, "New insights and perspectives on the natural gradient
        method", JMLR 2020.
    """
    _checks.check_float_tree(params, "params")
    if not any(leaf.size for leaf in jax.tree_util.tree_leaves(params)):
        raise ValueError("`params` has no entries (every leaf has size 0); expected a pytree of "
                         "floating-point arrays with the model's parameters.")
    check_key(key)
    num = _checks.check_int(num_samples, "num_samples", minimum=2, why=" for an error bar")
    _check_outputs(logits_fn, params, inputs)
    function = as_function_tree(logits_fn)
    kernel = lambda start, count, previous: _score_moments(
        function, params, inputs, key, start, placed_like((params, inputs), previous), count=count)
    eager = not _checks.is_tracing(params, inputs, key)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    moments = accumulate(kernel, num, resolve_chunk_size(chunk_size, num), eager,
                         Moments.zeros((), dtype))
    estimate = TraceEstimate(moments.mean, moments.stderr(), array_ops(moments).xp.asarray(num),
                             moments.count - 1)
    if eager:
        _checks.check_finite("the Fisher trace", estimate.value, estimate.stderr,
                             source="The sampled score gradients", culprit="`logits_fn` at these parameters")
    return to_device(estimate)
