"""Stochastic estimators of the trace, diagonal and per-block traces of a symmetric operator.

Every estimator sees the operator only through a ``matvec`` and gets its randomness from ``key``. Probe
``i`` depends only on ``(key, i)``: results do not depend on ``chunk_size``, ``trace_until`` after ``m``
products equals ``trace`` with ``num_matvecs=m``, and two operators given the same key are probed with the
same vectors (common random numbers: the difference of two estimates has far less variance than either).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._basis import dots, gram, orthonormalize, project_out, split_rows, stack_rows
from hessjax._common import (
    Matvec,
    Method,
    Probe,
    check_method,
    check_probe,
    fold_key,
    prepare,
    resolve_chunk_size,
    split_key,
)
from hessjax._vectors import (
    HOST,
    Layout,
    Moments,
    accumulate,
    apply_block,
    apply_chunk,
    apply_tree,
    array_ops,
    at_least_float32,
    chunk_bounds,
    draw_chunk,
    draw_probes,
    draw_rows,
    placed_like,
    to_device,
    to_host,
)

Array = jax.Array

# Smallest budgets that give an error bar, and the multiple each method spends.
_MINIMUM = {"hutchinson": 2, "hutch++": 6, "xtrace": 4}
# XTrace's stderr has about 1.5 (s - 1) degrees of freedom (the t quantile that gives 95% coverage,
# measured on five spectra at 4-40 products, spans 1.0-3.2 times s - 1; 1.5 puts the test operator's
# coverage at 0.95-0.96 from the minimum budget up). BUILD.md, "Honest intervals", has the table.
_XTRACE_DOF = 1.5
_MULTIPLE = {"hutchinson": 1, "hutch++": 3, "xtrace": 2}


_log_gamma = np.vectorize(math.lgamma, otypes=[np.float64])
_normal_quantile = np.vectorize(statistics.NormalDist().inv_cdf, otypes=[np.float64])


def _betainc_host(a: Any, b: Any, x: Any) -> np.ndarray:
    """The regularized incomplete beta function in float64 numpy (jax's lives in XLA, scipy is not a
    dependency): the continued fraction of DLMF 8.17.22 by the modified Lentz method, with
    ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where it converges slowly (Press et al., Numerical Recipes 6.4).
    """
    a, b, x = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (a, b, x)))
    flip = x > (a + 1) / (a + b + 2)
    a, b, x = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1 - x, x)
    tiny = np.finfo(np.float64).tiny / np.finfo(np.float64).eps

    def step(value: np.ndarray, coefficient: np.ndarray) -> np.ndarray:
        value = 1 + coefficient * value
        return np.where(np.abs(value) < tiny, tiny, value)

    with np.errstate(divide="ignore", invalid="ignore"):
        c, d = np.ones_like(x), 1 / step(np.ones_like(x), -(a + b) * x / (a + 1))
        fraction = d
        for m in range(1, 301):
            for coefficient in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                                -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
                d, c = 1 / step(d, coefficient), step(1 / c, coefficient)
                fraction = fraction * d * c
            if np.all(np.abs(d * c - 1) <= np.finfo(np.float64).eps):
                break
        front = np.exp(_log_gamma(a + b) - _log_gamma(a) - _log_gamma(b) + a * np.log(x)
                       + b * np.log1p(-x)) / a
    value = np.where(x == 0, 0.0, front * fraction)
    return np.where(flip, 1 - value, value)


def _student_t_tail(t: Array, dof: Array) -> Array:
    """``P(|T| > t)`` for Student's t with ``dof`` degrees of freedom, by the incomplete beta function.

    Of the two equal forms the one whose argument is far from 1 is used, which keeps float32 precise.
    """
    xp = array_ops(t, dof).xp
    betainc = jax.scipy.special.betainc if xp is jnp else _betainc_host
    t2 = xp.square(t)
    central = 1 - betainc(0.5, dof / 2, t2 / (dof + t2))
    tail = betainc(dof / 2, 0.5, dof / (dof + t2))
    return xp.where(t2 < dof, central, tail)


def _student_t_critical(alpha: Array, dof: Array) -> Array:
    """The ``t`` with ``P(|T| > t) = alpha`` for Student's t; ``dof = inf`` gives the normal's.

    Below 30 degrees of freedom, bisection on ``log t`` of the incomplete-beta tail (float32: relative
    error below 1e-5); from 30 up, the Cornish-Fisher expansion in ``1 / dof`` (Abramowitz & Stegun
    26.7.5: relative error below 1e-6 at ``alpha = 0.001``, exact for ``dof = inf``), where ``betainc``
    with a large parameter loses float32 precision. Works under ``jit`` and ``vmap``; numpy arrays
    are computed on the host in float64 (eagerly, the XLA program would take seconds to compile).
    """
    dtype = at_least_float32(jnp.result_type(alpha, dof, jnp.float32))
    host = array_ops(alpha, dof) is HOST
    xp = np if host else jnp
    alpha, dof = (xp.asarray(v, np.float64 if host else dtype) for v in (alpha, dof))
    z = -(_normal_quantile(alpha / 2) if host else jax.scipy.special.ndtri(alpha / 2))
    with np.errstate(divide="ignore"):
        inverse = 1 / dof
    expansion = z + inverse * ((z ** 3 + z) / 4 + inverse * (
        (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96 + inverse * (
            (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384 + inverse * (
                79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)))
    small_dof = xp.minimum(dof, 30)  # keeps betainc finite in the branch `where` discards

    def halve(_: Any, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        low, high = bounds
        middle = (low + high) / 2
        above = _student_t_tail(xp.exp(middle), small_dof) > alpha
        return xp.where(above, middle, low), xp.where(above, high, middle)

    shape = xp.broadcast_shapes(alpha.shape, dof.shape)
    bounds = (xp.full(shape, math.log(1e-8), alpha.dtype), xp.full(shape, math.log(1e8), alpha.dtype))
    if host:
        for index in range(64):
            bounds = halve(index, bounds)
    else:
        bounds = jax.lax.fori_loop(0, 64, halve, bounds)
    low, high = bounds
    return xp.where(dof >= 30, expansion, xp.exp((low + high) / 2)).astype(dtype)


def _interval(value: Array, stderr: Array, dof: Array, level: Any) -> tuple[Array, Array]:
    half_width = _student_t_critical(1 - level, dof) * stderr
    # An exact estimate (stderr 0) has a zero-width interval whatever its quantile.
    half_width = array_ops(half_width).xp.where(stderr == 0, 0, half_width)
    return value - half_width, value + half_width


class TraceEstimate(NamedTuple):
    r"""An estimate of a trace with its error bar.

    ``value ± 2 * stderr`` is a 95% interval only when ``dof`` is large: at small budgets the standard
    error is itself estimated from a few samples and that interval covers far less (about 70% at each
    method's smallest budget, 80-93% at 10-20 products). :meth:`interval` widens it by the Student-t
    quantile with ``dof`` degrees of freedom.

    Attributes:
        value: the estimate of the trace.
        stderr: its estimated standard error (one standard deviation of the estimator).
        num_matvecs: the cost: operator products spent (for :func:`hessjax.fisher_trace`, sampled
            per-example score gradients, one backward pass each).
        dof: degrees of freedom of ``stderr`` (the number of samples it was estimated from minus
            one); ``inf`` when the value is exact and ``stderr`` is 0.
    """

    value: Array
    stderr: Array
    num_matvecs: Array
    dof: Array

    def interval(self, level: float = 0.95) -> tuple[Array, Array]:
        r"""The two-sided ``level`` confidence interval :math:`\mathrm{value} \pm t_{\mathrm{dof}}
        \cdot \mathrm{stderr}`, with :math:`t_{\mathrm{dof}}` the ``(1 + level) / 2`` quantile of
        Student's t with ``dof`` degrees of freedom (exact for normal samples).

        Args:
            level: the coverage, in ``(0, 1)``.

        Returns:
            ``(low, high)``, arrays of ``value``'s shape (a batch of estimates gives a batch of
            intervals).

        Example:
            >>> import jax.numpy as jnp, hessjax
            >>> est = hessjax.TraceEstimate(jnp.array(10.0), jnp.array(1.0), jnp.array(3),
            ...                             jnp.array(2.0))
            >>> [round(float(x), 3) for x in est.interval(0.95)]
            [5.697, 14.303]
        """
        if isinstance(level, (int, float)) and not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1); got {level}.")
        if _checks.is_tracing(self, level):
            return _interval(self.value, self.stderr, self.dof, level)
        return to_device(_interval(*to_host((self.value, self.stderr, self.dof)), level))


def _from_moments(moments: Moments, num_matvecs: Any) -> TraceEstimate:
    xp = array_ops(moments).xp
    return TraceEstimate(moments.mean, moments.stderr(), xp.asarray(num_matvecs), moments.count - 1)


def _exact_estimate(value: Array, num_matvecs: int) -> TraceEstimate:
    xp = array_ops(value).xp
    return TraceEstimate(value, xp.zeros_like(value), xp.asarray(num_matvecs),
                         xp.full_like(value, xp.inf))


def _budget(method: str, num_matvecs: Any, name: str = "num_matvecs") -> int:
    multiple = _MULTIPLE[method]
    why = (f" for method={method!r}, which spends multiples of {multiple} products"
           if multiple > 1 else " for an error bar")
    num = _checks.check_int(num_matvecs, name, minimum=_MINIMUM[method], why=why)
    return num - num % multiple


# Integrands of the Hutchinson family: one probe ``v`` and its image ``A v``, both pytrees like the
# parameters. Working leaf by leaf keeps no flattened copy of the image: a probe in flight costs its
# flat draw plus ``v`` and ``A v`` (about 2.5n floats instead of 4n).
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


def _per_block_and_total(layout: Layout, v: Any, image: Any) -> Array:
    """The per-block samples and, last, their sum (summed in the order of :func:`_quadratic`)."""
    sums = [jnp.sum(product) for product in _leaf_products(layout, v, image)]
    return jnp.stack([*sums, sum(sums)])


def _sample(matvec: Any, layout: Layout, integrand: Integrand, row: Array) -> Array:
    v = layout.unravel(row)
    return integrand(layout, v, apply_tree(matvec, layout, v))


@functools.partial(jax.jit, static_argnames=("layout", "count", "probe", "integrand"))
def _probe_moments(matvec: Any, layout: Layout, key: Array, start: Any, previous: Moments, *,
                   count: int, probe: str, integrand: Integrand) -> Moments:
    rows = draw_probes(key, start, count, layout, probe)
    samples = jax.vmap(functools.partial(_sample, matvec, layout, integrand))(rows)
    return previous.merge(Moments.of(samples))


@functools.lru_cache(maxsize=64)
def _no_samples(layout: Layout, integrand: Integrand) -> Moments:
    """Moments of no samples of ``integrand`` (cached: finding their shape traces the integrand)."""
    row = jax.ShapeDtypeStruct((layout.size,), layout.dtype)
    sample = jax.eval_shape(lambda r: integrand(layout, layout.unravel(r), layout.unravel(r)), row)
    return Moments.zeros(sample.shape, sample.dtype)


def _hutchinson_kernel(matvec: Any, layout: Layout, key: Array, probe: str,
                       integrand: Integrand
                       ) -> Callable[[Any, int, Moments], Moments]:
    return lambda start, count, previous: _probe_moments(
        matvec, layout, key, start, placed_like(matvec, previous), count=count, probe=probe,
        integrand=integrand)


# Eagerly, the trace and the block traces share one chunk kernel per operator: both are read from
# `_per_block_and_total` samples (whose last entry is the trace's sample, summed as
# `_quadratic` sums it), so `trace`, `trace_until`, `block_traces` and `hessian_summary` on one
# operator compile one program between them, not one each. Under a trace each integrand is its own,
# and so it is for an operator on bfloat16 or float16 leaves: its coarse samples averaged in another
# order moved a 600-probe mean by 1.7e-5 (not sharing keeps every result as it was).
_SHARED = {_quadratic: lambda m: _last(m),
           _per_block: lambda m: Moments(m.count, m.mean[:-1], m.m2[:-1])}


def _shares_kernel(layout: Layout, eager: bool) -> bool:
    return eager and min(jnp.finfo(dtype).bits for dtype in layout.dtypes) >= 32


def _hutchinson(matvec: Any, layout: Layout, key: Array, num: int, chunk: int, probe: str,
                integrand: Integrand, eager: bool) -> Moments:
    if _shares_kernel(layout, eager) and integrand in _SHARED:
        return _SHARED[integrand](_hutchinson(matvec, layout, key, num, chunk, probe,
                                              _per_block_and_total, eager))
    return accumulate(_hutchinson_kernel(matvec, layout, key, probe, integrand), num, chunk, eager,
                      _no_samples(layout, integrand))


# Hutch++ and XTrace. Eagerly, the sketch is a list of device vectors orthogonalized in compiled
# pieces of a fixed shape (`hessjax._basis`), and only its s x s algebra comes to the host, in numpy:
# a new budget compiles nothing but its chunk kernels. Under a trace, the sketch is one array.
# (numpy's multithreaded BLAS is no place for the n x s work: on the shared 2-core CPU, with XLA's
# threads beside it, one 32 x 85k x 32 product took 2 s instead of 4 ms.)

# `fold_in` index of the random vectors that complete an orthonormal basis when a sketch is
# rank-deficient; far from the probes' indices.
_COMPLETION = np.uint32(2 ** 32 - 1)
_row_dots = jax.jit(dots)


def _drawn(key: Array, layout: Layout, count: int, probe: str, chunk: int) -> list[Array]:
    """Probes ``0 .. count - 1`` of ``key`` as a list of ``(1, n)`` device rows."""
    return split_rows([draw_chunk(key, start, layout, size, probe)
                       for start, size in chunk_bounds(count, chunk)])


def _images(matvec: Any, layout: Layout, rows: list[Array], chunk: int) -> list[Array]:
    """``A`` applied to each of the ``(1, n)`` device rows, ``chunk`` at a time."""
    return split_rows([apply_chunk(matvec, layout, stack_rows(rows[start:start + size]))
                       for start, size in chunk_bounds(len(rows), chunk)])


def _orthonormal_sketch(rows: list[Array], key: Array, layout: Layout) -> tuple[list[Array], Any]:
    completion = lambda j: draw_chunk(fold_key(key, _COMPLETION), j, layout, 1, "gaussian")
    return orthonormalize(rows, completion)


def _exact(matvec: Any, layout: Layout, chunk: int, eager: bool) -> TraceEstimate:
    """The trace from the ``n`` products ``A e_i``: where a sketch would span the whole space."""
    basis = (np if eager else jnp).eye(layout.size, dtype=layout.dtype)
    images = apply_block(matvec, layout, basis, chunk, eager)
    return _exact_estimate(array_ops(images).xp.trace(images), layout.size)


def _hutch_plus_plus(matvec: Any, layout: Layout, key: Array, k: int, chunk: int, probe: str,
                     eager: bool) -> TraceEstimate:
    sketch_key, probe_key = split_key(key, 2)
    if eager:
        basis, _ = _orthonormal_sketch(
            _images(matvec, layout, _drawn(sketch_key, layout, k, probe, chunk), chunk), sketch_key,
            layout)
        low_rank = [_row_dots(q, image) for q, image in
                    zip(basis, _images(matvec, layout, basis, chunk))]
        residual_probes = [project_out(g, basis, passes=1)[0]
                           for g in _drawn(probe_key, layout, k, probe, chunk)]
        samples = [_row_dots(g, image) for g, image in
                   zip(residual_probes, _images(matvec, layout, residual_probes, chunk))]
        moments = Moments.of(np.concatenate(to_host(samples)))
        value = np.sum(np.concatenate(to_host(low_rank))) + moments.mean
        stderr = moments.stderr()
    else:
        sketch = apply_block(matvec, layout, draw_rows(sketch_key, layout, k, probe, chunk, eager),
                             chunk, eager)
        basis = jnp.linalg.qr(sketch.T)[0].T
        basis_images = apply_block(matvec, layout, basis, chunk, eager)
        probes = draw_rows(probe_key, layout, k, probe, chunk, eager)
        mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        residual_probes = probes - mm(mm(probes, basis.T), basis)
        residual_images = apply_block(matvec, layout, residual_probes, chunk, eager)
        moments = Moments.of(jnp.sum(residual_probes * residual_images, axis=-1))
        value, stderr = jnp.sum(basis * basis_images) + moments.mean, moments.stderr()
    # The stderr is that of the mean of k residual samples, i.i.d. given the sketch.
    xp = array_ops(value).xp
    return TraceEstimate(value, stderr, xp.asarray(3 * k), xp.asarray(k - 1, value.dtype))


def _lifted(r: Array) -> tuple[Array, Array]:
    """``R`` with a tiny diagonal (a rank-deficient sketch) lifted, and whether one was.

    A sketch ``A Omega`` of rank below ``s`` means ``rank(A) < s``: every leave-one-out sketch still
    spans the range of ``A`` and XTrace is exact.
    """
    xp = array_ops(r).xp
    diagonal = xp.abs(xp.diagonal(r))
    floor = xp.finfo(r.dtype).eps * xp.maximum(xp.max(diagonal), xp.finfo(r.dtype).tiny)
    deficient = diagonal < floor
    return r + xp.diag(xp.where(deficient, floor, 0.0).astype(r.dtype)), xp.any(deficient)


def _normalized_inverse_transpose_columns(r: Array) -> Array:
    """Columns of ``R^{-T}`` scaled to unit norm (``r`` lifted, see :func:`_lifted`)."""
    ops = array_ops(r)
    s = ops.solve_lower(r.T, ops.xp.eye(r.shape[0], dtype=r.dtype))
    return s / ops.xp.linalg.norm(s, axis=0, keepdims=True)


def _leave_two_out_estimates(h: Array, w: Array, r: Array, s_cols: Array) -> Array:
    """``pair[i, j]``: the Hutch++-type estimate whose low-rank part leaves sketch vectors ``i`` and
    ``j`` out and whose probe is ``omega_j`` (``i != j``; the diagonal is meaningless).

    Leaving columns ``i`` and ``j`` out of ``Y = QR`` removes from its range the plane ``Q U``,
    ``U = [u1, u2]`` the Gram-Schmidt basis of columns ``i`` and ``j`` of ``S`` (unit columns of
    ``R^{-T}``, orthogonal to every other column of ``R``). With ``P`` the projector on what remains
    and ``omega_j = Q w_j + (I - QQ^T) omega_j``, ``A omega_j = Q r_j``, the estimate
    ``tr(PA) + omega_j^T (I - P) A (I - P) omega_j`` is
    ``tr H - tr(U^T H U) + w_j^T H w_j - w_j^T r_j + 2 p^T U^T (r_j - H w_j) + p^T U^T H U p`` with
    ``p = U^T w_j``: all in ``s x s`` matrices.
    """
    ops = array_ops(h, w, r, s_cols)
    xp, mm = ops.xp, ops.matmul
    cosine = mm(s_cols.T, s_cols)  # (i, j): s_i . s_j
    h_s = mm(s_cols.T, mm(h, s_cols))  # (i, j): s_i^T H s_j
    s_w = mm(s_cols.T, w)  # (i, j): s_i . w_j
    s_g = mm(s_cols.T, r - mm(h, w))  # (i, j): s_i . (r_j - H w_j)
    h_ii = xp.diagonal(h_s)[:, None]
    off = ~xp.eye(cosine.shape[0], dtype=bool)
    c = xp.where(off, cosine, 0)
    sine2 = xp.maximum(1 - c * c, xp.finfo(c.dtype).eps)
    sine = xp.sqrt(sine2)
    # u1 = s_i, u2 = (s_j - c s_i) / sine: the entries of U^T H U, U^T w_j and U^T (r_j - H w_j).
    h12 = (h_s - c * h_ii) / sine
    h22 = (xp.diagonal(h_s)[None, :] - 2 * c * h_s + c * c * h_ii) / sine2
    p1, p2 = s_w, (xp.diagonal(s_w)[None, :] - c * s_w) / sine
    g1, g2 = s_g, (xp.diagonal(s_g)[None, :] - c * s_g) / sine
    w_h_w = xp.sum(w * mm(h, w), axis=0)
    return (xp.trace(h) - h_ii - h22 + (w_h_w - xp.sum(w * r, axis=0))[None, :]
            + 2 * (p1 * g1 + p2 * g2) + p1 * p1 * h_ii + 2 * p1 * p2 * h12 + p2 * p2 * h22)


def _xtrace_estimate(h: Array, w: Array, r: Array) -> tuple[Array, Array]:
    """XTrace's estimate and stderr from ``H = Q^T A Q``, ``W = Q^T Omega`` and ``R`` (``A Omega = QR``),
    all ``s x s``."""
    ops = array_ops(h, w, r)
    xp, mm = ops.xp, ops.matmul
    h = (h + h.T) / 2
    # Removing column i from the sketch removes the direction q S e_i from its range, where S e_i is
    # the i-th column of R^{-T}, normalized: span(Y_{-i}) is orthogonal to it. Each leave-one-out
    # Hutch++ estimate then has a closed form in the s x s matrices H, W, R and S.
    r, exact = _lifted(r)
    s_cols = _normalized_inverse_transpose_columns(r)
    v = w - s_cols * xp.sum(s_cols * w, axis=0)
    estimates = (xp.trace(h) - xp.sum(s_cols * mm(h, s_cols), axis=0) + xp.sum(w * r, axis=0)
                 - 2 * xp.sum(r * v, axis=0) + xp.sum(v * mm(h, v), axis=0))
    moments = Moments.of(estimates)
    # The errors e_i = T_i - tr(A) of the leave-one-out estimates are correlated (they share their
    # sketches): their spread estimates Var(e) - Cov(e_i, e_j), while s Var(mean) is
    # Var(e) + (s - 1) Cov(e_i, e_j). Write e_i = d_ij + f_ij, d_ij = T_i - T_ij the change of
    # estimate i when omega_j joins its sketch, f_ij the error of T_ij (sketch without i and j, probe
    # omega_i). Given all but omega_i, f_ij has mean 0; given all but omega_j, d_ji and f_ji do: so
    # Cov(e_i, e_j) = E[d_ij d_ji], whose mean over pairs (kept >= 0) completes an unbiased variance.
    # A rank-deficient sketch means rank(A) < s: every T_i is exact and so is the mean.
    count = estimates.shape[0]
    changes = estimates[:, None] - _leave_two_out_estimates(h, w, r, s_cols).T
    off = ~xp.eye(count, dtype=bool)
    covariance = xp.sum(xp.where(off, changes * changes.T, 0)) / (count * (count - 1))
    covariance = xp.where(exact, 0, xp.maximum(covariance, 0))
    return moments.mean, xp.sqrt(xp.square(moments.stderr()) + covariance)


def _xtrace(matvec: Any, layout: Layout, key: Array, s: int, chunk: int, probe: str,
            eager: bool) -> TraceEstimate:
    if eager:
        omega = _drawn(key, layout, s, probe, chunk)
        q, r = _orthonormal_sketch(_images(matvec, layout, omega, chunk), key, layout)
        h, w = gram(q, _images(matvec, layout, q, chunk)), gram(q, omega)
    else:
        omega = draw_rows(key, layout, s, probe, chunk, eager)
        q, r = jnp.linalg.qr(apply_block(matvec, layout, omega, chunk, eager).T)
        mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        h, w = mm(q.T, apply_block(matvec, layout, q.T, chunk, eager).T), mm(q.T, omega.T)
    value, stderr = _xtrace_estimate(h, w, r)
    xp = array_ops(value).xp
    # Effective degrees of freedom, calibrated (BUILD.md, "Honest intervals"): the variance is a
    # combination of s spread terms and s (s - 1) pair terms, steadier than s - 1 samples' variance.
    dof = xp.asarray(_XTRACE_DOF * (s - 1), value.dtype)
    return TraceEstimate(value, stderr, xp.asarray(2 * s), dof)


def _estimate(matvec: Any, layout: Layout, key: Array, budget: int, method: str, chunk: int,
              probe: str, eager: bool) -> TraceEstimate:
    if method == "hutchinson":
        return _from_moments(_hutchinson(matvec, layout, key, budget, chunk, probe, _quadratic, eager),
                             budget)
    sketch_size = budget // _MULTIPLE[method]
    if sketch_size >= layout.size:
        return _exact(matvec, layout, chunk, eager)
    if method == "hutch++":
        return _hutch_plus_plus(matvec, layout, key, sketch_size, chunk, probe, eager)
    return _xtrace(matvec, layout, key, sketch_size, chunk, probe, eager)


def trace(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int, method: Method = "hutchinson",
          probe: Probe = "rademacher", chunk_size: int | None = None) -> TraceEstimate:
    r"""Estimates :math:`\operatorname{tr}(A)` from ``num_matvecs`` products with random probes.

    * ``"hutchinson"``: :math:`\frac1m \sum_i z_i^\top A z_i` with :math:`\mathbb E[z z^\top] = I`;
      unbiased, stderr from the sample variance (``dof = m - 1``). Any ``num_matvecs >= 2``.
    * ``"hutch++"``: the trace of :math:`A` on the range of :math:`Q = \operatorname{orth}(A S)`
      exactly, plus Hutchinson on the deflated remainder
      :math:`(I - QQ^\top) A (I - QQ^\top)`; ``k = num_matvecs / 3`` products each for the sketch,
      for :math:`AQ` and for the remainder. Exact when ``rank(A) <= k``; stderr from the remainder's
      ``k`` samples (``dof = k - 1``). Spends multiples of 3, at least 6.
    * ``"xtrace"``: the exchangeable estimator averaging the Hutch++-type estimates that leave each
      sketch vector out of the low-rank part and use it as the probe; ``s = num_matvecs / 2`` probes
      :math:`\omega_i`, products :math:`A\Omega` and :math:`AQ`. The ``s`` leave-one-out estimates
      share their sketches, so their spread alone underestimates the error (to 0.3-0.75 of the
      variance); the variance adds their covariance, estimated without bias from the estimates
      that leave two sketch vectors out. Its ``dof`` is ``1.5 (s - 1)``, calibrated on five
      spectra (95% intervals cover 0.94-0.99 at 4 products, 0.93-0.96 at 40). Spends multiples of
      2, at least 4.

    Once the sketch of Hutch++ or XTrace would span the whole space (``k`` or ``s`` at least the
    dimension ``n``), the trace is computed exactly from the ``n`` products :math:`A e_i` instead:
    ``num_matvecs`` then reports ``n``, what was spent, ``stderr`` is 0 and ``dof`` is ``inf``.

    At small budgets ``value ± 2 * stderr`` covers far less than 95% (the standard error is
    itself estimated from a few samples): use ``estimate.interval(0.95)``, which widens it by the
    Student-t quantile with ``estimate.dof`` degrees of freedom.

    Memory: Hutchinson keeps one chunk of ``chunk_size`` probes; Hutch++ and XTrace keep their
    sketches, about ``num_matvecs`` vectors of the parameter size. Bfloat16 and float16 vectors are
    accumulated, sketched and factorized in float32.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``, on pytrees like ``like``, returning real
            floating-point pytrees of the same structure.
        like: a pytree with the shapes and dtypes of the vectors (e.g. the parameters).
        key: a ``jax.random`` key.
        num_matvecs: the budget of products; rounded down to the method's multiple.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        chunk_size: products evaluated together (``vmap``) in one compiled kernel: the memory knob.
            ``None``: 1 on CPU, 10 on accelerators.

    Returns:
        A :class:`TraceEstimate`; ``num_matvecs`` is the number of products spent.

    Raises:
        ValueError: bad arguments. :class:`hessjax.NonFiniteError` (a ``ValueError``), outside
            ``jit``: the loss value an operator from :func:`hessjax.hvp_fn` (or ``dataset_hvp_fn``,
            ``ggn_fn``) carries, or the operator's products, are NaN or infinite. Under ``jit`` there
            is no host check: a non-finite product propagates into ``value`` and ``stderr`` as NaN;
            wrap the call in ``jax.experimental.checkify`` to turn it into an error there.
        TypeError: ``matvec`` returns a complex or integer vector.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.arange(1.0, 11.0))
        >>> est = hessjax.trace(lambda v: a @ v, jnp.zeros(10), jax.random.key(0), num_matvecs=24,
        ...                     method="hutch++")
        >>> round(float(est.value)), int(est.num_matvecs), int(est.dof)  # tr(A) = 55
        (55, 24, 7)
        >>> low, high = est.interval(0.95)
        >>> bool(low <= 55.0 <= high)
        True

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
    estimate = _estimate(matvec, layout, key, budget, method, resolve_chunk_size(chunk_size, budget),
                         probe, eager)
    if eager:
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
    return to_device(estimate)


def _check_rtol(rtol: Any) -> float:
    if not isinstance(rtol, (int, float, np.floating)) or isinstance(rtol, bool):
        raise TypeError(f"`rtol` must be a number; got {type(rtol).__name__}.")
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"`rtol` must be a positive finite number; got {rtol}.")
    return float(rtol)


def _converged(moments: Moments, rtol: float) -> Array:
    return moments.stderr() <= rtol * array_ops(moments).xp.abs(moments.mean)


def trace_until(matvec: Matvec, like: Any, key: Array, *, rtol: float, max_matvecs: int,
                method: Method = "hutchinson", probe: Probe = "rademacher",
                chunk_size: int | None = None, min_matvecs: int | None = None) -> TraceEstimate:
    r"""Estimates the trace, spending products until ``stderr <= rtol * |value|``.

    Hutchinson draws chunks of ``chunk_size`` probes, stopping at the first chunk boundary where the
    rule holds once at least ``min_matvecs`` were spent (a few samples can have a misleadingly small
    variance), or at ``max_matvecs``. Because probe ``i`` depends only on ``(key, i)``, the result after
    ``m`` products is exactly ``trace(..., num_matvecs=m)``, eagerly and under ``jit`` alike (the last
    chunk is cut to end at ``max_matvecs``). Hutch++ and XTrace cannot grow a sketch in place: they run
    with budgets ``b, 2b, 4b, ...`` (``b`` = ``min_matvecs``) while the total stays within
    ``max_matvecs``, and report the last estimate with ``num_matvecs`` the total spent (an estimate
    that became exact, its sketch spanning the space, spent only the dimension ``n``).

    Under ``jit`` only Hutchinson is available (the others change array shapes as they grow); it then
    loops with ``lax.while_loop``.

    The stopping rule uses ``stderr``. At small budgets ``value ± 2 * stderr`` covers far less than
    95% (the standard error is itself estimated from a few samples): use ``estimate.interval(0.95)``,
    which widens it by the Student-t quantile with ``estimate.dof`` degrees of freedom.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        rtol: the target relative standard error, > 0.
        max_matvecs: the most products to spend.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel (Hutchinson; products per kernel for the others),
            at most ``max_matvecs``.
        min_matvecs: Hutchinson: the fewest products before the rule is trusted (default
            ``max(2 * chunk_size, 10)``); Hutch++/XTrace: the first budget (default twice the method's
            minimum).

    Returns:
        A :class:`TraceEstimate`; ``num_matvecs`` is what was spent.

    Raises:
        ValueError, NonFiniteError: as :func:`trace`.

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
    chunk = resolve_chunk_size(chunk_size, maximum)
    if method != "hutchinson":
        if not eager:
            raise ValueError(
                f"trace_until(method={method!r}) grows its sketch, which changes array shapes; call it "
                "outside jax.jit, or use method='hutchinson' under jit.")
        return _block_method_until(matvec, layout, key, rtol, maximum, method, chunk, probe,
                                   min_matvecs)
    minimum = min(maximum, max(2 * chunk, 10) if min_matvecs is None else _checks.check_int(
        min_matvecs, "min_matvecs", minimum=2))
    if _shares_kernel(layout, eager):  # `_hutchinson`'s kernel, shared with the block traces.
        moments, spent = _hutchinson_until(
            _hutchinson_kernel(matvec, layout, key, probe, _per_block_and_total),
            _no_samples(layout, _per_block_and_total), chunk, minimum, maximum, rtol, _last)
        estimate = _from_moments(_last(moments), spent)
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
        return to_device(estimate)
    kernel = _hutchinson_kernel(matvec, layout, key, probe, _quadratic)
    moments = _no_samples(layout, _quadratic)
    if eager:
        moments, spent = _hutchinson_until(kernel, moments, chunk, minimum, maximum, rtol,
                                           lambda m: m)
        estimate = _from_moments(moments, spent)
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
        return to_device(estimate)
    num_chunks, remainder = divmod(maximum, chunk)

    def done(index: Array, moments: Moments) -> Array:
        return (index * chunk >= minimum) & _converged(moments, rtol)

    def keep_going(state: tuple[Array, Moments]) -> Array:
        index, moments = state
        return (index < num_chunks) & ~done(index, moments)

    def next_chunk(state: tuple[Array, Moments]) -> tuple[Array, Moments]:
        index, moments = state
        return index + 1, kernel(index * chunk, chunk, moments)

    num_done, moments = jax.lax.while_loop(keep_going, next_chunk,
                                           (jnp.asarray(1), kernel(0, chunk, moments)))
    spent = num_done * chunk
    if remainder:
        # As eagerly: a last, shorter chunk ends at max_matvecs unless the rule already holds.
        stop = done(num_done, moments)
        moments = jax.lax.cond(stop, lambda m: m,
                               lambda m: kernel(num_chunks * chunk, remainder, m), moments)
        spent = spent + jnp.where(stop, 0, remainder)
    return _from_moments(moments, spent)


def _hutchinson_until(kernel: Callable[[Any, int, Moments], Moments], moments: Moments, chunk: int,
                      minimum: int, maximum: int, rtol: float,
                      total: Callable[[Moments], Moments]) -> tuple[Moments, int]:
    """Eagerly, chunks of ``kernel`` until ``total(moments)`` meets ``rtol`` (once ``minimum``
    products are spent) or ``maximum`` products are spent; the host moments and the products."""
    spent = 0
    while spent < maximum:
        count = min(chunk, maximum - spent)
        moments = kernel(spent, count, moments)
        spent += count
        if spent >= minimum and bool(_converged(total(to_host(moments)), rtol)):
            break
    return to_host(moments), spent


def _last(moments: Moments) -> Moments:
    return Moments(moments.count, moments.mean[-1], moments.m2[-1])


def _block_estimates(layout: Layout, moments: Moments, spent: Any) -> Any:
    """A pytree like the vectors of one :class:`TraceEstimate` per leaf, from per-block moments."""
    stderr = moments.stderr()
    spent, dof = array_ops(moments).xp.asarray(spent), moments.count - 1
    return layout.treedef.unflatten(
        [TraceEstimate(moments.mean[i], stderr[i], spent, dof) for i in range(len(layout.shapes))])


def trace_and_blocks_until(matvec: Matvec, like: Any, key: Array, *, rtol: float, max_matvecs: int,
                           min_block_matvecs: int, chunk_size: int | None = None
                           ) -> tuple[TraceEstimate, Any]:
    """Eagerly, :func:`trace_until` (Hutchinson, Rademacher) and :func:`block_traces` from the same
    products: each probe's image gives its sample of the trace and of every block's trace.

    The stopping rule is :func:`trace_until`'s, after at least ``min_block_matvecs`` products (>= 2,
    the fewest probes of the block traces; at most ``max_matvecs``): the trace equals
    ``trace_until``'s with that ``min_matvecs`` and the blocks ``block_traces(...,
    num_matvecs=trace.num_matvecs)``'s (same key), for the products of one. Used by
    :func:`hessjax.hessian_summary`.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    if not eager:
        raise ValueError("trace_and_blocks_until runs eagerly: call it outside jax.jit.")
    rtol = _check_rtol(rtol)
    maximum = _budget("hutchinson", max_matvecs, "max_matvecs")
    chunk = resolve_chunk_size(chunk_size, maximum)
    minimum = min(maximum, max(2 * chunk, 10, _checks.check_int(min_block_matvecs,
                                                                "min_block_matvecs", minimum=2)))
    kernel = _hutchinson_kernel(matvec, layout, key, "rademacher", _per_block_and_total)
    moments, spent = _hutchinson_until(kernel, _no_samples(layout, _per_block_and_total), chunk,
                                       minimum, maximum, rtol, _last)
    estimate = _from_moments(_last(moments), spent)
    _checks.check_finite("the trace", estimate.value, estimate.stderr)
    _checks.check_finite("the block traces", moments.mean, moments.stderr())
    return to_device(estimate), to_device(_block_estimates(layout, moments, spent))


def _block_method_until(matvec: Any, layout: Layout, key: Array, rtol: float, maximum: int,
                        method: str, chunk: int, probe: str, min_matvecs: Any) -> TraceEstimate:
    multiple = _MULTIPLE[method]
    budget = 2 * _MINIMUM[method] if min_matvecs is None else _budget(method, min_matvecs,
                                                                      "min_matvecs")
    budget = min(budget, maximum)
    spent = 0
    while True:
        estimate = _estimate(matvec, layout, key, budget, method, chunk, probe, True)
        spent += int(estimate.num_matvecs)
        _checks.check_finite("the trace", estimate.value, estimate.stderr)
        following = 2 * budget
        if bool(estimate.stderr <= rtol * np.abs(estimate.value)) or spent + following > maximum:
            return to_device(estimate._replace(num_matvecs=np.asarray(spent)))
        budget = following - following % multiple


class DiagonalEstimate(NamedTuple):
    """An estimate of the diagonal of an operator with its error bars.

    Attributes:
        value: a pytree like ``like``: the estimate of each diagonal entry.
        stderr: a pytree like ``like``: the standard error of each entry (NaN from a single probe,
            which has no spread to measure).
        num_matvecs: the number of operator products spent.
    """

    value: Any
    stderr: Any
    num_matvecs: Array


def diagonal(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int,
             probe: Probe = "rademacher", chunk_size: int | None = None) -> DiagonalEstimate:
    r"""Estimates the diagonal of :math:`A` as :math:`\frac1m \sum_i z_i \odot A z_i`.

    Unbiased for Rademacher or Gaussian probes (:math:`\mathbb E[z_j z_k] = \delta_{jk}`); with
    Rademacher probes an exactly diagonal ``A`` is recovered from a single product. Each entry's
    standard error is the sample standard deviation of its ``m`` samples over :math:`\sqrt m`.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_matvecs: the number of probes, >= 1 (>= 2 for a standard error).
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel.

    Returns:
        A :class:`DiagonalEstimate`: ``value`` and ``stderr`` are pytrees like ``like``.

    Raises:
        ValueError, NonFiniteError: as :func:`trace`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
        >>> est = hessjax.diagonal(lambda v: a @ v, jnp.zeros(3), jax.random.key(0), num_matvecs=2)
        >>> est.value, est.stderr
        (Array([1., 2., 3.], dtype=float32), Array([0., 0., 0.], dtype=float32))

    References:
        Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied Numerical
        Mathematics 2007.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    check_probe(probe)
    num = _checks.check_int(num_matvecs, "num_matvecs", minimum=1)
    moments = _hutchinson(matvec, layout, key, num, resolve_chunk_size(chunk_size, num), probe,
                          _elementwise, eager)
    if eager:
        _checks.check_finite("the diagonal", moments.mean)
    xp = array_ops(moments).xp
    stderr = moments.stderr() if num > 1 else xp.full_like(moments.mean, xp.nan)
    return to_device(DiagonalEstimate(layout.unravel(moments.mean), layout.unravel(stderr),
                                      xp.asarray(num)))


def block_traces(matvec: Matvec, like: Any, key: Array, *, num_matvecs: int,
                 probe: Probe = "rademacher", chunk_size: int | None = None) -> Any:
    r"""Estimates the trace of every diagonal block of :math:`A`, one block per leaf of ``like``.

    For the block :math:`b` of coordinates of one leaf, :math:`z_b^\top (A z)_b` is unbiased for
    :math:`\operatorname{tr}(A_{bb})`, so the per-layer traces come from the same probes as the
    total: they sum to the Hutchinson estimate of the trace with the same key and budget.
    At small budgets ``value ± 2 * stderr`` covers far less than 95% (the standard error is
    itself estimated from a few samples): use ``estimate.interval(0.95)``, which widens it by the
    Student-t quantile with ``estimate.dof`` degrees of freedom.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_matvecs: the number of probes, >= 2.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: probes per compiled kernel.

    Returns:
        A pytree with the structure of ``like`` holding a :class:`TraceEstimate` at each leaf.

    Raises:
        ValueError, NonFiniteError: as :func:`trace`.

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
    moments = _hutchinson(matvec, layout, key, num, resolve_chunk_size(chunk_size, num), probe,
                          _per_block, eager)
    if eager:
        _checks.check_finite("the block traces", moments.mean, moments.stderr())
    return to_device(_block_estimates(layout, moments, num))

