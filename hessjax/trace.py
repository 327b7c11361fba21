"""Stochastic estimators of the trace, diagonal and per-block traces of a symmetric operator.

Every estimator sees the operator only through a ``matvec`` and gets its randomness from ``key``. Probe
``i`` depends only on ``(key, i)``: results do not depend on ``chunk_size``, ``trace_until`` after ``m``
products equals ``trace`` with ``num_matvecs=m``, and two operators given the same key are probed with the
same vectors (common random numbers: the difference of two estimates has far less variance than either).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._vectors import (
    Layout,
    Moments,
    accumulate,
    apply_block,
    apply_tree,
    as_pytree_fn,
    check_probe,
    draw_probes,
)

Array = jax.Array
Matvec = Callable[[Any], Any]

METHODS = ("hutchinson", "hutch++", "xtrace")
# Smallest budgets that give an error bar, and the multiple each method spends.
_MINIMUM = {"hutchinson": 2, "hutch++": 6, "xtrace": 4}
_MULTIPLE = {"hutchinson": 1, "hutch++": 3, "xtrace": 2}
_HIGHEST = jax.lax.Precision.HIGHEST


class TraceEstimate(NamedTuple):
    """An estimate of a trace with its error bar.

    Attributes:
        value: the estimate of the trace.
        stderr: its estimated standard error (one standard deviation of the estimator).
        num_matvecs: the number of operator products spent.
    """

    value: Array
    stderr: Array
    num_matvecs: Array


def _check_key(key: Any) -> None:
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
        return
    if dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return
    raise TypeError(
        f"`key` must be a single jax.random key (jax.random.key(0) or jax.random.PRNGKey(0)); got "
        f"{type(key).__name__} with shape {getattr(key, 'shape', None)} and dtype {dtype}.")


def prepare(matvec: Matvec, like: Any, key: Any) -> tuple[jax.tree_util.Partial, Layout, bool]:
    """Validates the common arguments; returns the matvec as a pytree, the layout and eagerness."""
    layout = Layout.of(like, "like")
    _check_key(key)
    matvec = as_pytree_fn(matvec)
    return matvec, layout, not _checks.is_tracing(matvec, like, key)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    return method


def _budget(method: str, num_matvecs: Any, name: str = "num_matvecs") -> int:
    multiple = _MULTIPLE[method]
    why = (f" for method={method!r}, which spends multiples of {multiple} products"
           if multiple > 1 else " for an error bar")
    num = _checks.check_int(num_matvecs, name, minimum=_MINIMUM[method], why=why)
    return num - num % multiple


def default_chunk_size() -> int:
    """Probes per kernel when ``chunk_size=None``: 1 on CPU, 10 on accelerators.

    On an accelerator a chunk amortizes kernel launches and reads of the linearization residuals.
    On XLA:CPU the per-probe work is compute-bound, and a vmapped chunk of tangents falls out of cache
    (and vmapped convolutions are slower than a loop of single ones): per-probe time grows with the
    chunk there (``benchmarks/NOTES.md``).
    """
    return 1 if jax.default_backend() == "cpu" else 10


def _chunk(chunk_size: Any, budget: int) -> int:
    if chunk_size is None:
        return max(1, min(default_chunk_size(), budget))
    return _checks.check_int(chunk_size, "chunk_size", minimum=1)


# Integrands of the Hutchinson family: one probe ``v`` and its image ``A v``, both pytrees like the
# parameters. Working leaf by leaf keeps no flattened copy of the image: a probe in flight costs its
# flat draw plus ``v`` and ``A v`` (about 2.5n floats instead of 4n; see BUILD.md).
Integrand = Callable[[Layout, Any, Any], Array]


def _leaf_products(layout: Layout, v: Any, image: Any) -> list[Array]:
    return [x.astype(layout.dtype) * y.astype(layout.dtype)
            for x, y in zip(layout.treedef.flatten_up_to(v), layout.treedef.flatten_up_to(image))]


def _quadratic(layout: Layout, v: Any, image: Any) -> Array:
    return sum(jnp.sum(product) for product in _leaf_products(layout, v, image))


def _elementwise(layout: Layout, v: Any, image: Any) -> Array:
    return jnp.concatenate([jnp.ravel(product) for product in _leaf_products(layout, v, image)])


def _per_block(layout: Layout, v: Any, image: Any) -> Array:
    return jnp.stack([jnp.sum(product) for product in _leaf_products(layout, v, image)])


def _sample(matvec: Any, layout: Layout, integrand: Integrand, row: Array) -> Array:
    v = layout.unravel(row)
    return integrand(layout, v, apply_tree(matvec, layout, v))


@functools.partial(jax.jit, static_argnames=("layout", "count", "probe", "integrand"))
def _probe_moments(matvec: Any, layout: Layout, key: Array, start: Any, previous: Moments, *,
                   count: int, probe: str, integrand: Integrand) -> Moments:
    rows = draw_probes(key, start, count, layout, probe)
    samples = jax.vmap(functools.partial(_sample, matvec, layout, integrand))(rows)
    return previous.merge(Moments.of(samples))


def _no_samples(layout: Layout, integrand: Integrand) -> Moments:
    row = jax.ShapeDtypeStruct((layout.size,), layout.dtype)
    sample = jax.eval_shape(lambda r: integrand(layout, layout.unravel(r), layout.unravel(r)), row)
    return Moments.zeros(sample.shape, sample.dtype)


def _hutchinson_kernel(matvec: Any, layout: Layout, key: Array, probe: str,
                       integrand: Integrand
                       ) -> Callable[[Any, int, Moments], Moments]:
    return lambda start, count, previous: _probe_moments(
        matvec, layout, key, start, previous, count=count, probe=probe, integrand=integrand)


def _hutchinson(matvec: Any, layout: Layout, key: Array, num: int, chunk: int, probe: str,
                integrand: Integrand, eager: bool) -> Moments:
    return accumulate(_hutchinson_kernel(matvec, layout, key, probe, integrand), num, chunk, eager,
                      _no_samples(layout, integrand))


@functools.partial(jax.jit, static_argnames=("layout", "count", "probe"))
def draw(key: Array, layout: Layout, count: int, probe: str) -> Array:
    """Probes ``0 .. count - 1`` of ``key`` as rows, in one compiled call."""
    return draw_probes(key, 0, count, layout, probe)


@jax.jit
def _orthonormal_rows(rows: Array) -> Array:
    return jnp.linalg.qr(rows.T)[0].T


@jax.jit
def _deflate(rows: Array, basis: Array) -> Array:
    """``rows`` with their components in the span of the orthonormal rows of ``basis`` removed."""
    return rows - jnp.matmul(jnp.matmul(rows, basis.T, precision=_HIGHEST), basis, precision=_HIGHEST)


@jax.jit
def _hutch_plus_plus_estimate(basis: Array, basis_images: Array, residual_probes: Array,
                              residual_images: Array) -> tuple[Array, Array]:
    moments = Moments.of(jnp.sum(residual_probes * residual_images, axis=-1))
    return jnp.sum(basis * basis_images) + moments.mean, moments.stderr()


def _hutch_plus_plus(matvec: Any, layout: Layout, key: Array, k: int, chunk: int, probe: str,
                     eager: bool) -> TraceEstimate:
    sketch_key, probe_key = jax.random.split(key)
    sketch = apply_block(matvec, layout, draw(sketch_key, layout, k, probe), chunk, eager)
    basis = _orthonormal_rows(sketch)
    basis_images = apply_block(matvec, layout, basis, chunk, eager)
    residual_probes = _deflate(draw(probe_key, layout, k, probe), basis)
    residual_images = apply_block(matvec, layout, residual_probes, chunk, eager)
    value, stderr = _hutch_plus_plus_estimate(basis, basis_images, residual_probes, residual_images)
    return TraceEstimate(value, stderr, jnp.asarray(3 * k))


def _normalized_inverse_transpose_columns(r: Array) -> Array:
    """Columns of ``R^{-T}`` scaled to unit norm; a tiny diagonal (rank-deficient sketch) is lifted."""
    diagonal = jnp.abs(jnp.diagonal(r))
    floor = jnp.finfo(r.dtype).eps * jnp.maximum(jnp.max(diagonal), jnp.finfo(r.dtype).tiny)
    r = r + jnp.diag(jnp.where(diagonal < floor, floor, 0.0).astype(r.dtype))
    s = jax.scipy.linalg.solve_triangular(r.T, jnp.eye(r.shape[0], dtype=r.dtype), lower=True)
    return s / jnp.linalg.norm(s, axis=0, keepdims=True)


@jax.jit
def _qr(rows: Array) -> tuple[Array, Array]:
    return jnp.linalg.qr(rows.T)


@jax.jit
def _xtrace_estimate(omega: Array, q: Array, r: Array, q_images: Array) -> tuple[Array, Array]:
    mm = functools.partial(jnp.matmul, precision=_HIGHEST)
    h = mm(q.T, q_images.T)
    h = (h + h.T) / 2
    w = mm(q.T, omega.T)
    # Removing column i from the sketch removes the direction q S e_i from its range, where S e_i is
    # the i-th column of R^{-T}, normalized: span(Y_{-i}) is orthogonal to it. Each leave-one-out
    # Hutch++ estimate then has a closed form in the s x s matrices H, W, R and S.
    s_cols = _normalized_inverse_transpose_columns(r)
    v = w - s_cols * jnp.sum(s_cols * w, axis=0)
    estimates = (jnp.trace(h) - jnp.sum(s_cols * mm(h, s_cols), axis=0) + jnp.sum(w * r, axis=0)
                 - 2 * jnp.sum(r * v, axis=0) + jnp.sum(v * mm(h, v), axis=0))
    moments = Moments.of(estimates)
    return moments.mean, moments.stderr()


def _xtrace(matvec: Any, layout: Layout, key: Array, s: int, chunk: int, probe: str,
            eager: bool) -> TraceEstimate:
    omega = draw(key, layout, s, probe)
    q, r = _qr(apply_block(matvec, layout, omega, chunk, eager))
    value, stderr = _xtrace_estimate(omega, q, r, apply_block(matvec, layout, q.T, chunk, eager))
    return TraceEstimate(value, stderr, jnp.asarray(2 * s))


def _estimate(matvec: Any, layout: Layout, key: Array, budget: int, method: str, chunk: int,
              probe: str, eager: bool) -> TraceEstimate:
    if method == "hutchinson":
        moments = _hutchinson(matvec, layout, key, budget, chunk, probe, _quadratic, eager)
        return TraceEstimate(moments.mean, moments.stderr(), jnp.asarray(budget))
    if method == "hutch++":
        return _hutch_plus_plus(matvec, layout, key, budget // 3, chunk, probe, eager)
    return _xtrace(matvec, layout, key, budget // 2, chunk, probe, eager)


def trace(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int, method: str = "hutchinson",
          probe: str = "rademacher", chunk_size: int | None = None) -> TraceEstimate:
    r"""Estimates :math:`\operatorname{tr}(A)` from ``num_matvecs`` products with random probes.

    * ``"hutchinson"``: :math:`\frac1m \sum_i z_i^\top A z_i` with :math:`\mathbb E[z z^\top] = I`;
      unbiased, stderr from the sample variance. Any ``num_matvecs >= 2``.
    * ``"hutch++"``: the trace of :math:`A` on the range of :math:`Q = \operatorname{orth}(A S)`
      exactly, plus Hutchinson on the deflated remainder
      :math:`(I - QQ^\top) A (I - QQ^\top)`; ``num_matvecs / 3`` products each for the sketch, for
      :math:`AQ` and for the remainder. Exact when ``rank(A) <= num_matvecs / 3``; stderr from the
      remainder's samples. Spends multiples of 3, at least 6.
    * ``"xtrace"``: the exchangeable estimator averaging the Hutch++-type estimates that leave each
      sketch vector out of the low-rank part and use it as the probe; ``num_matvecs / 2`` probes
      :math:`\omega_i`, products :math:`A\Omega` and :math:`AQ`. Stderr is the standard deviation of
      the leave-one-out estimates over :math:`\sqrt{s}`. Spends multiples of 2, at least 4.

    Memory: Hutchinson keeps one chunk of ``chunk_size`` probes; Hutch++ and XTrace keep their
    sketches, about ``num_matvecs`` vectors of the parameter size.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``, on pytrees like ``like``.
        like: a pytree with the shapes and dtypes of the vectors (e.g. the parameters).
        key: a ``jax.random`` key.
        num_matvecs: the budget of products; rounded down to the method's multiple.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        chunk_size: products evaluated together (``vmap``) in one compiled kernel: the memory knob.
            ``None``: 1 on CPU, 10 on accelerators (:func:`default_chunk_size`).

    Returns:
        A :class:`TraceEstimate`.

    Raises:
        ValueError: bad arguments, or (outside ``jit``) an operator that produced NaN or Inf. Under
            ``jit`` a non-finite product propagates into ``value`` and ``stderr`` as NaN; wrap the call in
            ``jax.experimental.checkify`` to turn it into an error there.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.arange(1.0, 11.0))
        >>> est = hessjax.trace(lambda v: a @ v, jnp.zeros(10), jax.random.key(0), num_matvecs=30,
        ...                     method="hutch++")
        >>> round(float(est.value), 3), int(est.num_matvecs)
        (55.0, 30)

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", 1990. Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal stochastic trace
        estimation", SOSA 2021. Epperly, Tropp & Webber, "XTrace: Making the most of every sample in
        stochastic trace estimation", SIAM J. Matrix Anal. Appl. 2024.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    method = check_method(method)
    check_probe(probe)
    budget = _budget(method, num_matvecs)
    estimate = _estimate(matvec, layout, key, budget, method, _chunk(chunk_size, budget), probe,
                         eager)
    if eager:
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
    return estimate


def _check_rtol(rtol: Any) -> float:
    if not isinstance(rtol, (int, float, np.floating)) or isinstance(rtol, bool):
        raise TypeError(f"`rtol` must be a number; got {type(rtol).__name__}.")
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"`rtol` must be a positive finite number; got {rtol}.")
    return float(rtol)


def _converged(moments: Moments, rtol: float) -> Array:
    return moments.stderr() <= rtol * jnp.abs(moments.mean)


def trace_until(matvec: Matvec, like: Any, key: Array, *, rtol: float, max_matvecs: int,
                method: str = "hutchinson", probe: str = "rademacher",
                chunk_size: int | None = None, min_matvecs: int | None = None) -> TraceEstimate:
    r"""Estimates the trace, spending products until ``stderr <= rtol * |value|``.

    Hutchinson draws chunks of ``chunk_size`` probes, stopping at the first chunk boundary where the
    rule holds once at least ``min_matvecs`` were spent (a few samples can have a misleadingly small
    variance), or at ``max_matvecs``. Because probe ``i`` depends only on ``(key, i)``, the result after
    ``m`` products is exactly ``trace(..., num_matvecs=m)``. Hutch++ and XTrace cannot grow a sketch in
    place: they run with budgets ``b, 2b, 4b, ...`` (``b`` = ``min_matvecs``) while the total stays within
    ``max_matvecs``, and report the last estimate with ``num_matvecs`` the total spent.

    Under ``jit`` only Hutchinson is available (the others change array shapes as they grow); it then
    loops with ``lax.while_loop`` over whole chunks, so ``max_matvecs`` is rounded down to a multiple
    of ``chunk_size``.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        rtol: the target relative standard error, > 0.
        max_matvecs: the most products to spend.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel (Hutchinson; products per kernel for the others).
        min_matvecs: Hutchinson: the fewest products before the rule is trusted (default
            ``max(2 * chunk_size, 10)``); Hutch++/XTrace: the first budget (default twice the method's
            minimum).

    Returns:
        A :class:`TraceEstimate`; ``num_matvecs`` is what was spent.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.linspace(1.0, 2.0, 50))
        >>> est = hessjax.trace_until(lambda v: a @ v, jnp.zeros(50), jax.random.key(0), rtol=0.01,
        ...                           max_matvecs=1000)
        >>> bool(est.stderr <= 0.01 * abs(est.value)), int(est.num_matvecs) < 1000
        (True, True)
    """
    matvec, layout, eager = prepare(matvec, like, key)
    method = check_method(method)
    check_probe(probe)
    rtol = _check_rtol(rtol)
    maximum = _budget(method, max_matvecs, "max_matvecs")
    chunk = _chunk(chunk_size, maximum)
    if method != "hutchinson":
        if not eager:
            raise ValueError(
                f"trace_until(method={method!r}) grows its sketch, which changes array shapes; call it "
                "outside jax.jit, or use method='hutchinson' under jit.")
        return _block_method_until(matvec, layout, key, rtol, maximum, method, chunk, probe,
                                   min_matvecs)
    minimum = min(maximum, max(2 * chunk, 10) if min_matvecs is None else _checks.check_int(
        min_matvecs, "min_matvecs", minimum=2))
    kernel = _hutchinson_kernel(matvec, layout, key, probe, _quadratic)
    moments = _no_samples(layout, _quadratic)
    if eager:
        spent = 0
        while spent < maximum:
            count = min(chunk, maximum - spent)
            moments = kernel(spent, count, moments)
            spent += count
            if spent >= minimum and bool(_converged(moments, rtol)):
                break
        estimate = TraceEstimate(moments.mean, moments.stderr(), jnp.asarray(spent))
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
        return estimate
    num_chunks = max(1, maximum // chunk)

    def keep_going(state: tuple[Array, Moments]) -> Array:
        index, moments = state
        done = (index * chunk >= minimum) & _converged(moments, rtol)
        return (index < num_chunks) & ~done

    def next_chunk(state: tuple[Array, Moments]) -> tuple[Array, Moments]:
        index, moments = state
        return index + 1, kernel(index * chunk, chunk, moments)

    num_done, moments = jax.lax.while_loop(keep_going, next_chunk,
                                           (jnp.asarray(1), kernel(0, chunk, moments)))
    return TraceEstimate(moments.mean, moments.stderr(), num_done * chunk)


def _block_method_until(matvec: Any, layout: Layout, key: Array, rtol: float, maximum: int,
                        method: str, chunk: int, probe: str, min_matvecs: Any) -> TraceEstimate:
    multiple = _MULTIPLE[method]
    budget = 2 * _MINIMUM[method] if min_matvecs is None else _budget(method, min_matvecs,
                                                                      "min_matvecs")
    budget = min(budget, maximum)
    spent = 0
    while True:
        estimate = _estimate(matvec, layout, key, budget, method, chunk, probe, True)
        spent += budget
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
        following = 2 * budget
        if bool(estimate.stderr <= rtol * jnp.abs(estimate.value)) or spent + following > maximum:
            return TraceEstimate(estimate.value, estimate.stderr, jnp.asarray(spent))
        budget = following - following % multiple


def diagonal(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int,
             probe: str = "rademacher", chunk_size: int | None = None) -> Any:
    r"""Estimates the diagonal of :math:`A` as :math:`\frac1m \sum_i z_i \odot A z_i`.

    Unbiased for Rademacher or Gaussian probes (:math:`\mathbb E[z_j z_k] = \delta_{jk}`); with Rademacher
    probes an exactly diagonal ``A`` is recovered from a single product.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_matvecs: the number of probes, >= 1.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel.

    Returns:
        A pytree like ``like`` holding the estimate of ``diag(A)``.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
        >>> hessjax.diagonal(lambda v: a @ v, jnp.zeros(3), jax.random.key(0), num_matvecs=1)
        Array([1., 2., 3.], dtype=float32)

    References:
        Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied Numerical
        Mathematics 2007.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    check_probe(probe)
    num = _checks.check_int(num_matvecs, "num_matvecs", minimum=1)
    moments = _hutchinson(matvec, layout, key, num, _chunk(chunk_size, num), probe, _elementwise,
                          eager)
    if eager:
        _checks.check_finite("the diagonal", moments.mean)
    return layout.unravel(moments.mean)


def block_traces(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int,
                 probe: str = "rademacher", chunk_size: int | None = None) -> Any:
    r"""Estimates the trace of every diagonal block of :math:`A`, one block per leaf of ``like``.

    For the block :math:`b` of coordinates of one leaf, :math:`z_b^\top (A z)_b` is unbiased for
    :math:`\operatorname{tr}(A_{bb})`, so the per-layer traces come from the same probes as the total:
    they sum to the Hutchinson estimate of the trace with the same key and budget.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_matvecs: the number of probes, >= 2.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel.

    Returns:
        A pytree with the structure of ``like`` holding a :class:`TraceEstimate` at each leaf.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
        >>> est = hessjax.block_traces(lambda v: jax.tree.map(lambda x: 2 * x, v), params,
        ...                            jax.random.key(0), num_matvecs=4)
        >>> float(est["a"].value), float(est["b"].value)
        (4.0, 6.0)
    """
    matvec, layout, eager = prepare(matvec, like, key)
    check_probe(probe)
    num = _budget("hutchinson", num_matvecs)
    moments = _hutchinson(matvec, layout, key, num, _chunk(chunk_size, num), probe, _per_block,
                          eager)
    stderr = moments.stderr()
    if eager:
        _checks.check_finite("the block traces", moments.mean, stderr)
    spent = jnp.asarray(num)
    return layout.treedef.unflatten(
        [TraceEstimate(moments.mean[i], stderr[i], spent) for i in range(len(layout.shapes))])
