"""Lanczos iteration, top eigenpairs and the spectral density by stochastic Lanczos quadrature."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._basis import GROUP, dots, normalized_residual, restarted, restarted_jit
from hessjax._common import Matvec, Probe, check_probe, fold_key, prepare, resolve_chunk_size
from hessjax._vectors import (
    Layout,
    apply_block,
    apply_chunk,
    apply_rows,
    array_ops,
    chunk_bounds,
    draw_chunk,
    draw_probes,
    draw_rows,
    placed_like,
    to_device,
    to_host,
)

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


class LanczosState(NamedTuple):
    """The Lanczos recurrence for ``p`` starting vectors at once.

    Attributes:
        basis: ``(p, num_steps, n)`` orthonormal Lanczos vectors (rows past the current step are 0).
        alphas: ``(p, num_steps)`` diagonal of the tridiagonal matrices.
        betas: ``(p, num_steps)`` off-diagonals (entry ``j`` couples steps ``j`` and ``j + 1``).
    """

    basis: Array
    alphas: Array
    betas: Array


def _orthogonalize(vectors: Array, basis: Array, mask: Array) -> Array:
    """``vectors`` minus their projections on the masked rows of ``basis``, twice.

    Classical Gram-Schmidt applied twice is as accurate as modified Gram-Schmidt ("twice is enough",
    Giraud et al. 2005) and is two matrix products instead of a loop.
    """
    for _ in range(2):
        coefficients = jnp.einsum("pmn,pn->pm", basis, vectors, precision=_HIGHEST) * mask
        vectors = vectors - jnp.einsum("pm,pmn->pn", coefficients, basis, precision=_HIGHEST)
    return vectors


def _image(matvec: Any, layout: Layout, current: Array) -> tuple[Array, Array]:
    """``A v`` for the current Lanczos vectors ``v`` (one per row), and ``alpha = v^T A v``."""
    image = apply_rows(matvec, layout, current)
    return image, jnp.sum(current * image, axis=-1)


def _extend(state: LanczosState, image: Array, alpha: Array, step: Array) -> tuple[LanczosState, Array]:
    """Orthogonalizes ``image`` against the basis and writes it as the next Lanczos vector.

    Returns the new state and, per row, whether the recurrence broke down (see
    :func:`hessjax._basis.normalized_residual`). No branch here touches the basis, so XLA updates it
    in place (a ``lax.cond`` that captures the basis made it copy the whole basis, twice per step:
    15x the cost of the step on an 85k-parameter MLP).
    """
    basis, alphas, betas = state
    num_steps = basis.shape[1]
    mask = (jnp.arange(num_steps) <= step).astype(basis.dtype)
    following, beta, breakdown = normalized_residual(image, _orthogonalize(image, basis, mask))
    following_index = jnp.minimum(step + 1, num_steps - 1)
    following = jnp.where(step + 1 < num_steps, following, basis[:, following_index])
    basis = basis.at[:, following_index].set(following)
    state = LanczosState(basis, alphas.at[:, step].set(alpha), betas.at[:, step].set(beta))
    return state, breakdown & (step + 1 < num_steps)


def _restart(layout: Layout, key: Array, state: LanczosState, breakdown: Array,
             step: Array) -> LanczosState:
    """Continues the rows that broke down from a random vector orthogonal to their basis.

    ``T`` stays the projection of ``A`` on the basis, with the zero off-diagonal entry ``_extend``
    wrote at the restart.
    """
    basis = state.basis
    num_steps = basis.shape[1]
    mask = (jnp.arange(num_steps) <= step).astype(basis.dtype)
    vectors = _orthogonalize(
        draw_probes(jax.random.fold_in(key, step), 0, basis.shape[0], layout, "gaussian"), basis, mask)
    following_index = jnp.minimum(step + 1, num_steps - 1)
    vectors = restarted(basis[:, following_index], breakdown, vectors)
    return state._replace(basis=basis.at[:, following_index].set(vectors))


def _lanczos_step(matvec: Any, layout: Layout, key: Array, state: LanczosState,
                  step: Array) -> LanczosState:
    """One step inside a traced loop: the restart is a ``lax.cond`` (rare, so rarely taken)."""
    image, alpha = _image(matvec, layout, state.basis[:, step])
    state, breakdown = _extend(state, image, alpha, step)
    return jax.lax.cond(jnp.any(breakdown), lambda s: _restart(layout, key, s, breakdown, step),
                        lambda s: s, state)


def _lanczos_init(starts: Array, num_steps: int) -> LanczosState:
    count, size = starts.shape
    basis = jnp.zeros((count, num_steps, size), starts.dtype)
    basis = basis.at[:, 0].set(starts / jnp.linalg.norm(starts, axis=-1, keepdims=True))
    zeros = jnp.zeros((count, num_steps), starts.dtype)
    return LanczosState(basis, zeros, zeros)


# Called eagerly, Lanczos runs as a Python loop of compiled pieces whose shapes do not depend on
# `num_steps`: the product (the chunk kernel every estimator shares) and, per step, one program per
# full block of GROUP basis vectors plus one fused program that finishes the step on the last,
# partly filled block (its unused rows are zero, so projecting on them is exact). A new number of
# steps compiles nothing. Memory: the steps taken, rounded up to a multiple of GROUP vectors.


def _project_block(block: Array, vectors: Array) -> Array:
    """``vectors`` ``(p, n)`` minus their projections on the rows of ``block`` ``(p, GROUP, n)``,
    twice (:func:`_orthogonalize` within a block, block by block across the basis; unused rows are
    zero, so no mask)."""
    return _orthogonalize(vectors, block, jnp.ones((), block.dtype))


_project_block_jit = jax.jit(_project_block)


@functools.partial(jax.jit, donate_argnums=(0,))
def _finish_step(block: Array, row: Array, current: Array, image: Array, residual: Array
                 ) -> tuple[Array, Array, Array, Array, Array]:
    """The end of a step on the last block: the residual projected on it, normalized, and written
    as row ``row`` of the block (zero where the recurrence broke down); alpha, beta, breakdown."""
    following, beta, breakdown = normalized_residual(image, _project_block(block, residual))
    following = jnp.where(breakdown[:, None], 0, following)
    block = jax.lax.dynamic_update_index_in_dim(block, following, row, axis=1)
    return block, following, dots(current, image), beta, breakdown


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_row(block: Array, row: Array, vectors: Array) -> Array:
    return jax.lax.dynamic_update_index_in_dim(block, vectors, row, axis=1)


def _new_block(vectors: Array) -> Array:
    return placed_like(vectors, jnp.zeros((vectors.shape[0], GROUP, vectors.shape[-1]), vectors.dtype))


def _lanczos_eager(matvec: Any, layout: Layout, restart_key: Array, first: int, starts: np.ndarray,
                   num_steps: int) -> tuple[list[Array], np.ndarray, np.ndarray]:
    """Lanczos from the rows ``first, first + 1, ...`` of the starting vectors (``starts``, host).

    Returns the basis (a list of ``(rows, GROUP, n)`` device blocks; the Lanczos vectors are their
    first ``num_steps`` rows, block after block) and the host ``alphas`` and ``betas``,
    ``(rows, num_steps)``. The host reads each step's breakdown flags after it has queued the next
    product, so the device never waits for the host; after a breakdown (rare) that product is
    discarded and the rows restart from a random vector orthogonal to the basis.
    """
    norms = np.linalg.norm(starts.astype(np.float64), axis=-1, keepdims=True)
    current = placed_like(matvec, jax.device_put((starts / norms).astype(starts.dtype)))
    blocks, fill = [_write_row(_new_block(current), 0, current)], 1
    alphas, betas = [], []
    image = apply_chunk(matvec, layout, current)
    for step in range(num_steps):
        if fill == GROUP:
            blocks.append(_new_block(current))
            fill = 0
        residual = image
        for block in blocks[:-1]:
            residual = _project_block_jit(block, residual)
        blocks[-1], following, alpha, beta, breakdown = _finish_step(
            blocks[-1], fill, current, image, residual)
        alphas.append(alpha)
        betas.append(beta)
        if step + 1 == num_steps:
            break
        image = apply_chunk(matvec, layout, following)
        breakdown = np.asarray(breakdown)
        if breakdown.any():
            draws = draw_chunk(fold_key(restart_key, step), first, layout, starts.shape[0], "gaussian")
            for block in blocks:
                draws = _project_block_jit(block, draws)
            following = restarted_jit(following, breakdown, draws)
            blocks[-1] = _write_row(blocks[-1], fill, following)
            image = apply_chunk(matvec, layout, following)
        fill += 1
        current = following
    return blocks, np.stack(to_host(alphas), axis=-1), np.stack(to_host(betas), axis=-1)


def _run_lanczos(matvec: Any, layout: Layout, key: Array, starts: Array, num_steps: int,
                 eager: bool, chunk_size: int, with_basis: bool = False) -> LanczosState:
    """``num_steps`` Lanczos steps with full reorthogonalization from each row of ``starts``.

    Eagerly the rows run ``chunk_size`` at a time (independent recurrences: the products are the
    chunk kernels of every other estimator), the alphas and betas come back on the host, and the
    basis is kept (per chunk, a list of blocks of vectors: :func:`_lanczos_eager`) only
    ``with_basis``. Under a trace, all rows run together in a ``lax.fori_loop``.
    """
    restart_key = fold_key(key, 1)
    if not eager:
        return jax.lax.fori_loop(
            0, num_steps, lambda step, s: _lanczos_step(matvec, layout, restart_key, s, step),
            _lanczos_init(starts, num_steps))
    runs = [_lanczos_eager(matvec, layout, restart_key, first, starts[first:first + size], num_steps)
            for first, size in chunk_bounds(starts.shape[0], chunk_size)]
    basis = [run[0] for run in runs] if with_basis else None
    return LanczosState(basis, np.concatenate([run[1] for run in runs]),
                        np.concatenate([run[2] for run in runs]))


def _tridiagonal(alphas: Array, betas: Array) -> Array:
    """Dense tridiagonal matrices from ``(..., m)`` diagonals and ``(..., m)`` off-diagonals (the
    last is not used)."""
    xp = array_ops(alphas).xp
    m = alphas.shape[-1]
    return (alphas[..., None, :] * xp.eye(m, dtype=alphas.dtype)
            + betas[..., :, None] * xp.eye(m, k=1, dtype=alphas.dtype)
            + betas[..., None, :] * xp.eye(m, k=-1, dtype=alphas.dtype))


def _check_steps(num_steps: Any, layout: Layout) -> int:
    num_steps = _checks.check_int(num_steps, "num_steps", minimum=1)
    if num_steps > layout.size:
        raise ValueError(
            f"`num_steps` ({num_steps}) exceeds the dimension of the space ({layout.size}): a Krylov "
            "basis has at most that many vectors.")
    return num_steps


def _start(key: Array, count: int, layout: Layout, chunk_size: int, eager: bool,
           probe: str = "rademacher") -> Array:
    return draw_rows(fold_key(key, 0), layout, count, probe, chunk_size, eager)


class LanczosResult(NamedTuple):
    r"""The tridiagonal matrix :math:`T = V^\top A V` of a Lanczos run.

    Attributes:
        alphas: ``(m,)`` the diagonal of ``T``.
        betas: ``(m - 1,)`` its off-diagonal (0 where the recurrence restarted after an invariant
            subspace).
        num_matvecs: the number of operator products spent, ``m``.
    """

    alphas: Array
    betas: Array
    num_matvecs: Array


def lanczos(matvec: Matvec, like: Any, key: Array, *, num_steps: int) -> LanczosResult:
    r"""The Lanczos tridiagonalization of :math:`A` from a random Rademacher start, fully reorthogonalized.

    After ``m = num_steps`` steps, :math:`V^\top A V = T` with :math:`V` the ``n x m`` orthonormal
    Krylov basis and :math:`T` tridiagonal. Every new vector is orthogonalized against all previous
    ones (twice), so ``T``'s eigenvalues are not duplicated by the loss of orthogonality of the plain
    recurrence. In float32 the inner products are float32: Ritz values are accurate to about
    ``1e-6 * ||A||``; enable ``jax_enable_x64`` and pass float64 vectors for more (bfloat16 and
    float16 vectors run the recurrence in float32). Memory: ``num_steps`` vectors of the parameter
    size.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_steps: the number of steps ``m``, ``1 <= m <= n``.

    Returns:
        A :class:`LanczosResult`: the ``m`` diagonal and ``m - 1`` off-diagonal entries of ``T``.

    Raises:
        ValueError, NonFiniteError: as :func:`hessjax.trace`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
        >>> result = hessjax.lanczos(lambda v: a @ v, jnp.zeros(3), jax.random.key(0), num_steps=3)
        >>> round(float(result.alphas.sum()), 4), int(result.num_matvecs)
        (6.0, 3)

    References:
        Lanczos, "An iteration method for the solution of the eigenvalue problem of linear differential
        and integral operators", 1950. Golub & Van Loan, "Matrix Computations", section 10.1.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    num_steps = _check_steps(num_steps, layout)
    chunk = resolve_chunk_size(None, 1)
    state = _run_lanczos(matvec, layout, key, _start(key, 1, layout, chunk, eager), num_steps, eager,
                         chunk)
    alphas, betas = state.alphas[0], state.betas[0, :-1]
    if eager:
        _checks.check_finite("the Lanczos recurrence", alphas, betas)
    return to_device(LanczosResult(alphas, betas, array_ops(alphas).xp.asarray(num_steps)))


# The tridiagonal eigenproblems, Ritz vectors and residuals below take the host's numpy arrays
# (eagerly: nothing to compile for a new number of steps, and numpy's eigh is float64 inside) or
# JAX arrays under a trace.


def _top_ritz_pairs(state: LanczosState, k: int) -> tuple[Array, Array]:
    """The ``k`` largest Ritz values of the first row's recurrence and their unit Ritz vectors.

    The sign of each Ritz vector is fixed (its largest coordinate in the Lanczos basis is positive),
    so that it does not depend on which LAPACK computed the tridiagonal eigenvectors.
    """
    ops = array_ops(state.alphas)
    xp = ops.xp
    values, coordinates = xp.linalg.eigh(_tridiagonal(state.alphas[0], state.betas[0]))
    values, coordinates = values[::-1][:k], coordinates[:, ::-1][:, :k]
    largest = xp.take_along_axis(coordinates, xp.argmax(xp.abs(coordinates), axis=0)[None], axis=0)
    coordinates = coordinates * xp.sign(largest)
    if isinstance(state.basis, list):  # eager: the first row's list of (1, GROUP, n) blocks
        basis = np.concatenate([block[0] for block in to_host(state.basis[0])])
        vectors = coordinates.T @ basis[:coordinates.shape[0]]
    else:
        vectors = ops.matmul(coordinates.T, state.basis[0])
    return values, vectors / xp.linalg.norm(vectors, axis=-1, keepdims=True)


def _residual_norms(images: Array, vectors: Array, values: Array) -> Array:
    return array_ops(images).xp.linalg.norm(images - values[:, None] * vectors, axis=-1)


def _quadrature(state: LanczosState) -> tuple[Array, Array]:
    nodes, vectors = array_ops(state.alphas).xp.linalg.eigh(_tridiagonal(state.alphas, state.betas))
    return nodes, vectors[:, 0, :] ** 2 / state.alphas.shape[0]


class Eigen(NamedTuple):
    """Eigenpairs from Lanczos.

    Attributes:
        values: ``(k,)`` Ritz values, algebraically largest first.
        vectors: a pytree like the vectors with a leading axis ``k``: unit-norm Ritz vectors.
        residuals: ``(k,)`` :math:`\\|A v_i - \\lambda_i v_i\\|`, computed with ``k`` extra products.
        num_matvecs: the number of operator products spent, ``num_steps + k``.
    """

    values: Array
    vectors: Any
    residuals: Array
    num_matvecs: Array


def top_eigenvalues(matvec: Matvec, like: Any, key: Array, *, k: int,
                    num_steps: int) -> Eigen:
    r"""The ``k`` algebraically largest eigenpairs of :math:`A`, by Lanczos with full reorthogonalization.

    Ritz pairs of ``T`` converge first at the ends of the spectrum; the largest few are accurate long
    before ``num_steps`` reaches the dimension. ``residuals`` measures each pair directly and bounds the
    distance of the Ritz value to the spectrum. Costs ``num_steps + k`` products.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        k: how many eigenpairs, ``1 <= k <= num_steps``.
        num_steps: Lanczos steps, ``num_steps <= n``.

    Returns:
        An :class:`Eigen`.

    Raises:
        ValueError, NonFiniteError: as :func:`hessjax.trace`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.arange(1.0, 21.0))
        >>> eig = hessjax.top_eigenvalues(lambda v: a @ v, jnp.zeros(20), jax.random.key(0), k=2,
        ...                               num_steps=20)
        >>> [round(float(x), 4) for x in eig.values]
        [20.0, 19.0]

    References:
        Golub & Van Loan, "Matrix Computations", section 10.1; Ghorbani, Krishnan & Xiao, "An
        investigation into neural net optimization via Hessian eigenvalue density", ICML 2019.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    k = _checks.check_int(k, "k", minimum=1)
    num_steps = _check_steps(num_steps, layout)
    if k > num_steps:
        raise ValueError(f"`k` ({k}) must be <= `num_steps` ({num_steps}): Lanczos with m steps "
                         "yields m Ritz values.")
    chunk = resolve_chunk_size(None, k)
    state = _run_lanczos(matvec, layout, key, _start(key, 1, layout, chunk, eager), num_steps, eager,
                         chunk, with_basis=True)
    if eager:  # before numpy's eigh, which refuses NaN
        _checks.check_finite("the top eigenvalues", state.alphas, state.betas)
    values, vectors = _top_ritz_pairs(state, k)
    residuals = _residual_norms(apply_block(matvec, layout, vectors, chunk, eager), vectors, values)
    if eager:
        _checks.check_finite("the top eigenvalues", values, residuals)
    return to_device(Eigen(values, layout.unravel_rows(vectors), residuals,
                           array_ops(values).xp.asarray(num_steps + k)))


class SpectralDensity(NamedTuple):
    r"""A spectral density as Gauss quadrature nodes and weights from stochastic Lanczos quadrature.

    The measure :math:`\sum_j w_j \delta_{\theta_j}` approximates the normalized eigenvalue density
    :math:`\frac1n \sum_i \delta_{\lambda_i}`; weights sum to 1 over all probes.

    Attributes:
        nodes: ``(num_probes, num_steps)`` Ritz values of each probe's tridiagonal matrix.
        weights: ``(num_probes, num_steps)`` squared first components of its eigenvectors, divided by
            the number of probes.
        dimension: the dimension ``n`` of the space (to turn normalized moments into traces).
        num_matvecs: the number of operator products spent, ``num_probes * num_steps``.
    """

    nodes: Array
    weights: Array
    dimension: Array
    num_matvecs: Array

    def moment(self, p: int) -> Array:
        r"""The normalized moment :math:`\frac1n \operatorname{tr}(A^p)`; unbiased for ``p < 2 m``."""
        return _moment(self.nodes, self.weights, p)

    def trace(self) -> Array:
        """The trace estimate :math:`n \\cdot` ``moment(1)`` (Hutchinson with the Lanczos probes)."""
        return _trace(self.nodes, self.weights, self.dimension)

    def pdf(self, grid: Array, sigma: float) -> Array:
        """The density smoothed by a Gaussian of width ``sigma``, evaluated at ``grid``."""
        return _pdf(self.nodes, self.weights, grid, sigma)

    def cdf(self, x: Array) -> Array:
        """The fraction of the spectrum at or below ``x`` (e.g. ``cdf(0)``: negative-eigenvalue mass)."""
        return _cdf(self.nodes, self.weights, x)


# The methods of SpectralDensity, each one compiled program (eagerly, each of their operations would
# be one).


@functools.partial(jax.jit, static_argnames=("p",))
def _moment(nodes: Array, weights: Array, p: int) -> Array:
    return jnp.sum(weights * nodes ** p)


@jax.jit
def _trace(nodes: Array, weights: Array, dimension: Array) -> Array:
    return dimension * _moment(nodes, weights, 1)


@jax.jit
def _pdf(nodes: Array, weights: Array, grid: Array, sigma: Any) -> Array:
    grid = jnp.asarray(grid)[..., None]
    nodes, weights = nodes.reshape(-1), weights.reshape(-1)
    kernel = jnp.exp(-0.5 * ((grid - nodes) / sigma) ** 2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.sum(weights * kernel, axis=-1)


@jax.jit
def _cdf(nodes: Array, weights: Array, x: Array) -> Array:
    return jnp.sum(weights * (nodes <= jnp.asarray(x)[..., None, None]), axis=(-2, -1))


def spectral_density(matvec: Matvec, like: Any, key: Array, *, num_probes: int,
                     num_steps: int, probe: Probe = "rademacher") -> SpectralDensity:
    r"""The eigenvalue density of :math:`A` by stochastic Lanczos quadrature (SLQ).

    For a probe :math:`v` of unit norm, ``num_steps`` Lanczos steps give the Gauss quadrature rule
    :math:`v^\top f(A) v \approx \sum_j \tau_j^2 f(\theta_j)` (Ritz values :math:`\theta_j`, first
    eigenvector components :math:`\tau_j`), exact for polynomials of degree below ``2 * num_steps``.
    Averaged over probes with :math:`\mathbb E[v v^\top] = I / n`, it estimates
    :math:`\frac1n \operatorname{tr} f(A)`. All probes run in one batched recurrence (``num_probes``
    products per step). Memory: ``num_probes * num_steps`` vectors of the parameter size.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``.
        like: a pytree with the shapes and dtypes of the vectors.
        key: a ``jax.random`` key.
        num_probes: independent starting vectors, >= 1.
        num_steps: Lanczos steps per probe, ``<= n``.
        probe: ``"rademacher"`` or ``"gaussian"`` starting vectors (normalized).

    Returns:
        A :class:`SpectralDensity`.

    Raises:
        ValueError, NonFiniteError: as :func:`hessjax.trace`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> a = jnp.diag(jnp.arange(1.0, 11.0))
        >>> density = hessjax.spectral_density(lambda v: a @ v, jnp.zeros(10), jax.random.key(0),
        ...                                    num_probes=4, num_steps=10)
        >>> round(float(density.moment(0)), 4), round(float(density.trace()), 3)
        (1.0, 55.0)

    References:
        Golub & Meurant, "Matrices, Moments and Quadrature with Applications", 2010. Ubaru, Chen & Saad,
        "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J. Matrix Anal. Appl.
        2017. Ghorbani, Krishnan & Xiao, ICML 2019.
    """
    matvec, layout, eager = prepare(matvec, like, key)
    num_probes = _checks.check_int(num_probes, "num_probes", minimum=1)
    num_steps = _check_steps(num_steps, layout)
    check_probe(probe)
    chunk = resolve_chunk_size(None, num_probes)
    state = _run_lanczos(matvec, layout, key, _start(key, num_probes, layout, chunk, eager, probe),
                         num_steps, eager, chunk)
    if eager:  # before numpy's eigh, which refuses NaN
        _checks.check_finite("the spectral density", state.alphas, state.betas)
    nodes, weights = _quadrature(state)
    if eager:
        _checks.check_finite("the spectral density", nodes, weights)
    xp = array_ops(nodes).xp
    return to_device(SpectralDensity(nodes, weights, xp.asarray(layout.size),
                                     xp.asarray(num_probes * num_steps)))
