"""Loss wrappers that trade compute or precision for memory in curvature products of large models.

Both return an ordinary ``loss_fn(params, batch) -> scalar``, so they compose with every product
(``hvp``, ``hvp_fn``, ``dataset_hvp_fn``) and estimator unchanged. Each wrapper is cached on its
arguments: wrapping the same loss twice gives the same function, so the compiled products of one
checkpoint are reused for the next.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hessjax._common import binds_arrays

LossFn = Callable[[Any, Any], jax.Array]

POLICIES: dict[str, Callable[..., bool]] = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def remat(loss_fn: LossFn, policy: str | Callable[..., bool] = "nothing_saveable") -> LossFn:
    """``loss_fn`` under ``jax.checkpoint``: the curvature products keep fewer forward residuals.

    :func:`hessjax.hvp_fn` linearizes the gradient once and keeps every residual of the forward
    and backward passes for as long as the operator lives: on a large model, that and the chunk of
    probes in flight are the dominant memory cost. Under ``jax.checkpoint`` only what ``policy``
    allows is kept; the rest is recomputed by every product (every chunk of probes), which costs
    about one more forward pass per product. With ``"nothing_saveable"`` the linearized operator of
    a small MLP holds 30 times fewer bytes. The products are mathematically identical.

    Wrapping the whole loss recomputes the whole forward pass; for finer control, apply this
    function (or ``flax.linen.remat``/``jax.checkpoint``) to each block of the model instead, so
    that only the block boundaries are kept.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or any function to rematerialize).
        policy: what may be saved: a name from :data:`POLICIES` (``"nothing_saveable"``: keep only
            the inputs; ``"dots_saveable"``: keep the results of matrix multiplications and
            recompute the cheap elementwise work; ``"dots_with_no_batch_dims_saveable"``;
            ``"everything_saveable"``: no saving, for comparisons), or any
            ``jax.checkpoint_policies`` policy.

    Returns:
        The rematerialized ``loss_fn``.

    Raises:
        ValueError: an unknown policy name.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: jnp.sum(jnp.tanh(x * p) ** 2)
        >>> plain = hessjax.hvp(loss, jnp.ones(2), jnp.ones(2), jnp.ones(2))
        >>> cheap = hessjax.hvp(hessjax.memory.remat(loss), jnp.ones(2), jnp.ones(2), jnp.ones(2))
        >>> bool(jnp.allclose(plain, cheap))
        True
    """
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"`policy` must be one of {tuple(POLICIES)} or a "
                             f"jax.checkpoint_policies policy; got {policy!r}.")
        policy = POLICIES[policy]
    elif not callable(policy):
        raise TypeError(f"`policy` must be a policy name or callable; got {type(policy).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    return _keep_bound(loss_fn, lambda fn: _remat(fn, policy))


def _keep_bound(loss_fn: LossFn, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> LossFn:
    """``wrap(loss_fn)``, or for a ``Partial`` with bound arrays the same ``Partial`` of
    ``wrap(loss_fn.func)``: its arrays stay arguments of the compiled code
    (as for :func:`hessjax.hvp_fn`) instead of making every new ``Partial`` a new program."""
    if binds_arrays(loss_fn):
        return jax.tree_util.Partial(wrap(loss_fn.func), *loss_fn.args, **loss_fn.keywords)
    return wrap(loss_fn)


@functools.lru_cache(maxsize=128)
def _remat(loss_fn: LossFn, policy: Callable[..., bool]) -> LossFn:
    return jax.checkpoint(loss_fn, policy=policy)


def _cast_floating(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree)


def mixed_precision(loss_fn: LossFn, compute_dtype: Any = jnp.bfloat16) -> LossFn:
    """``loss_fn`` computed in ``compute_dtype``, returning a float32 loss.

    Inside the returned loss, floating leaves of ``params`` and ``batch`` are cast to
    ``compute_dtype`` (integer leaves, e.g. labels, are left as they are) and the loss is cast back
    to float32. Everything hessjax keeps outside the loss stays in the parameters' dtype (float32):
    the vectors, probes, Lanczos bases and the accumulation of estimates. The derivatives flow back
    through the casts, so ``H v`` has the parameters' dtype.

    Trade-offs: bfloat16 halves the activations and linearization residuals (the memory of
    :func:`hessjax.hvp_fn`) and runs the matrix multiplications at the accelerator's bfloat16
    rate, but has an 8-bit mantissa: each product carries a relative error of order ``1e-2``, well
    below the sampling error of a stochastic trace but too much for small eigenvalues or
    near-cancelling directions. Reductions inside the model (softmax, the mean over examples) run
    in bfloat16 unless the model computes them in float32; doing so for the final log-softmax is
    recommended. On CPU bfloat16 is emulated and slower than float32.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        compute_dtype: the floating dtype of the computation inside the loss.

    Returns:
        A ``loss_fn(params, batch) -> float32 scalar``.

    Raises:
        TypeError: ``compute_dtype`` is not a floating dtype.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> loss = hessjax.memory.mixed_precision(lambda p, x: jnp.sum(p * x) ** 2)
        >>> loss(jnp.ones(3), jnp.ones(3)).dtype
        dtype('float32')
    """
    try:
        dtype = jnp.dtype(compute_dtype)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`compute_dtype` must be a floating dtype (e.g. jnp.bfloat16); got "
                        f"{compute_dtype!r}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    return _keep_bound(loss_fn, lambda fn: _mixed_precision(fn, dtype))


@functools.lru_cache(maxsize=128)
def _mixed_precision(loss_fn: LossFn, dtype: jnp.dtype) -> LossFn:
    # `*bound`: the arguments a `Partial` binds before `params` and `batch` (left uncast).
    @functools.wraps(loss_fn)
    def loss_in_compute_dtype(*args: Any, **keywords: Any) -> jax.Array:
        *bound, params, batch = args
        loss = loss_fn(*bound, _cast_floating(params, dtype), _cast_floating(batch, dtype),
                       **keywords)
        return jnp.asarray(loss).astype(jnp.float32)

    return loss_in_compute_dtype
