"""Lanczos iteration, top eigenpairs and the spectral density by stochastic Lanczos quadrature."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hessjax import _checks
from hessjax._common import Matvec, Probe, check_probe, draw, prepare
from hessjax._vectors import Layout, apply_block, apply_rows, draw_probes

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

    Returns the new state and, per row, whether the recurrence broke down (``beta ~ 0``: an invariant
    subspace was found). Rows that broke down get ``beta = 0`` and a meaningless next vector, which
    `_restart` replaces. No branch here touches the basis, so XLA updates it in place when the
    caller donates the state (a ``lax.cond`` that captures the basis made it copy the whole basis,
    twice per step: 15x the cost of the step on an 85k-parameter MLP).
    """
    basis, alphas, betas = state
    num_steps = basis.shape[1]
    mask = (jnp.arange(num_steps) <= step).astype(basis.dtype)
    residual = _orthogonalize(image, basis, mask)
    beta = jnp.linalg.norm(residual, axis=-1)
    scale = jnp.linalg.norm(image, axis=-1)
    breakdown = beta <= 100 * jnp.finfo(basis.dtype).eps * jnp.maximum(scale, jnp.finfo(
        basis.dtype).tiny)
    following = residual / jnp.where(breakdown, 1, beta)[:, None]
    beta = jnp.where(breakdown, 0, beta)
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
    vectors = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    following_index = jnp.minimum(step + 1, num_steps - 1)
    vectors = jnp.where(breakdown[:, None], vectors, basis[:, following_index])
    return state._replace(basis=basis.at[:, following_index].set(vectors))


def _lanczos_step(matvec: Any, layout: Layout, key: Array, state: LanczosState,
                  step: Array) -> LanczosState:
    """One step inside a traced loop: the restart is a ``lax.cond`` (rare, so rarely taken)."""
    image, alpha = _image(matvec, layout, state.basis[:, step])
    state, breakdown = _extend(state, image, alpha, step)
    return jax.lax.cond(jnp.any(breakdown), lambda s: _restart(layout, key, s, breakdown, step),
                        lambda s: s, state)


# The product does not see the basis, so its program (the expensive compile) does not depend on
# `num_steps` and is shared by every Lanczos run with the same matvec and number of starts.
_image_jit = jax.jit(_image, static_argnames=("layout",))
_row = jax.jit(lambda basis, step: basis[:, step])
_extend_jit = jax.jit(_extend, donate_argnames=("state",))
_restart_jit = jax.jit(_restart, static_argnames=("layout",), donate_argnames=("state",))


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _lanczos_init(starts: Array, num_steps: int) -> LanczosState:
    count, size = starts.shape
    basis = jnp.zeros((count, num_steps, size), starts.dtype)
    basis = basis.at[:, 0].set(starts / jnp.linalg.norm(starts, axis=-1, keepdims=True))
    zeros = jnp.zeros((count, num_steps), starts.dtype)
    return LanczosState(basis, zeros, zeros)


def _run_lanczos(matvec: Any, layout: Layout, key: Array, starts: Array, num_steps: int,
                 eager: bool) -> LanczosState:
    """``num_steps`` Lanczos steps with full reorthogonalization from each row of ``starts``."""
    state = _lanczos_init(starts, num_steps)
    restart_key = jax.random.fold_in(key, 1)
    if eager:
        # A Python loop of compiled pieces: XLA:CPU runs convolutions inside loop bodies many times
        # slower than at top level. The product and the basis update are separate
        # programs so that the update, with the state donated, writes the basis in place; the host
        # reads the breakdown flags (a few bytes) and runs the restart only when one occurred.
        for step in range(num_steps):
            step = jnp.asarray(step)
            image, alpha = _image_jit(matvec, layout, _row(state.basis, step))
            state, breakdown = _extend_jit(state, image, alpha, step)
            if bool(jnp.any(breakdown)):
                state = _restart_jit(layout, restart_key, state, breakdown, step)
        return state
    return jax.lax.fori_loop(
        0, num_steps, lambda step, s: _lanczos_step(matvec, layout, restart_key, s, step), state)


def _tridiagonal(alphas: Array, betas: Array) -> Array:
    """Dense tridiagonal matrices from ``(..., m)`` diagonals and ``(..., m - 1)`` off-diagonals."""
    return (jax.vmap(jnp.diag)(alphas.reshape(-1, alphas.shape[-1])).reshape(
        alphas.shape + alphas.shape[-1:])
            + _off_diagonal(betas, 1) + _off_diagonal(betas, -1))


def _off_diagonal(betas: Array, k: int) -> Array:
    flat = betas.reshape(-1, betas.shape[-1])
    return jax.vmap(lambda b: jnp.diag(b, k))(flat).reshape(
        betas.shape[:-1] + (betas.shape[-1] + 1,) * 2)


def _check_steps(num_steps: Any, layout: Layout) -> int:
    num_steps = _checks.check_int(num_steps, "num_steps", minimum=1)
    if num_steps > layout.size:
        raise ValueError(
            f"`num_steps` ({num_steps}) exceeds the dimension of the space ({layout.size}): a Krylov "
            "basis has at most that many vectors.")
    return num_steps


def _start(key: Array, count: int, layout: Layout, probe: str = "rademacher") -> Array:
    return draw(jax.random.fold_in(key, 0), layout, count, probe)


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
    state = _run_lanczos(matvec, layout, key, _start(key, 1, layout), num_steps, eager)
    alphas, betas = state.alphas[0], state.betas[0, :-1]
    if eager:
        _checks.check_finite("the Lanczos recurrence", alphas, betas)
    return LanczosResult(alphas, betas, jnp.asarray(num_steps))


@functools.partial(jax.jit, static_argnames=("k",))
def _top_ritz_pairs(state: LanczosState, k: int) -> tuple[Array, Array]:
    values, coordinates = jnp.linalg.eigh(_tridiagonal(state.alphas[0], state.betas[0, :-1]))
    values, coordinates = values[::-1][:k], coordinates[:, ::-1][:, :k]
    vectors = jnp.matmul(coordinates.T, state.basis[0], precision=_HIGHEST)
    return values, vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)


@jax.jit
def _residual_norms(images: Array, vectors: Array, values: Array) -> Array:
    return jnp.linalg.norm(images - values[:, None] * vectors, axis=-1)


@jax.jit
def _quadrature(state: LanczosState) -> tuple[Array, Array]:
    nodes, vectors = jnp.linalg.eigh(_tridiagonal(state.alphas, state.betas[:, :-1]))
    return nodes, jnp.square(vectors[:, 0, :]) / state.alphas.shape[0]


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
    state = _run_lanczos(matvec, layout, key, _start(key, 1, layout), num_steps, eager)
    values, vectors = _top_ritz_pairs(state, k)
    residuals = _residual_norms(apply_block(matvec, layout, vectors, k, eager), vectors, values)
    if eager:
        _checks.check_finite("the top eigenvalues", values, residuals)
    return Eigen(values, jax.vmap(layout.unravel)(vectors), residuals, jnp.asarray(num_steps + k))


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
        return jnp.sum(self.weights * self.nodes ** p)

    def trace(self) -> Array:
        """The trace estimate :math:`n \\cdot` ``moment(1)`` (Hutchinson with the Lanczos probes)."""
        return self.dimension * self.moment(1)

    def pdf(self, grid: Array, sigma: float) -> Array:
        """The density smoothed by a Gaussian of width ``sigma``, evaluated at ``grid``."""
        grid = jnp.asarray(grid)[..., None]
        nodes, weights = self.nodes.reshape(-1), self.weights.reshape(-1)
        kernel = jnp.exp(-0.5 * ((grid - nodes) / sigma) ** 2) / (sigma * jnp.sqrt(2 * jnp.pi))
        return jnp.sum(weights * kernel, axis=-1)

    def cdf(self, x: Array) -> Array:
        """The fraction of the spectrum at or below ``x`` (e.g. ``cdf(0)``: negative-eigenvalue mass)."""
        return jnp.sum(self.weights * (self.nodes <= jnp.asarray(x)[..., None, None]),
                       axis=(-2, -1))


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
    state = _run_lanczos(matvec, layout, key, _start(key, num_probes, layout, probe), num_steps, eager)
    nodes, weights = _quadrature(state)
    if eager:
        _checks.check_finite("the spectral density", nodes, weights)
    return SpectralDensity(nodes, weights, jnp.asarray(layout.size), jnp.asarray(num_probes * num_steps))
