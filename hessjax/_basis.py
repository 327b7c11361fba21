"""Bases kept as lists of device vectors, orthogonalized in compiled pieces of a fixed shape.

Called eagerly, the Lanczos recurrence and the sketches of Hutch++ and XTrace grow a basis one vector
(one row of ``p`` vectors) at a time. Holding it as one ``(m, n)`` array would make every program
that touches it depend on ``m``, the budget: a new budget would compile anew. Here the basis is a
Python list, and everything that reads it runs over groups of :data:`GROUP` vectors (the last group
padded), so the programs depend only on the vectors' shape. What comes back to the host is small
(coefficients, Gram matrices); the vectors stay on the device.

Inner products are dots (``einsum`` at ``Precision.HIGHEST``): written as ``jnp.sum(x * y)``, XLA:CPU
fused the reductions into their consumers' loops and ran these pieces 5-7x slower (at n = 85k, a
group projection took 2.5 ms instead of 0.35 ms).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hessjax._vectors import to_host

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST

# Vectors per compiled call: large enough that a basis of 30 vectors is 4 calls, small enough that the
# padding of the last group (re-reading the first vector, masked) costs little.
GROUP = 8


def dots(x: Array, y: Array) -> Array:
    """Row-wise inner products of two ``(p, n)`` arrays."""
    return jnp.einsum("pn,pn->p", x, y, precision=_HIGHEST)


def normalized_residual(reference: Array, residual: Array) -> tuple[Array, Array, Array]:
    """``residual`` normalized row by row, its norms and, per row, whether it broke down.

    A row breaks down when its norm is below ``100 eps`` times that of ``reference`` (the vector
    before orthogonalization: it lay in the span of the basis). It then gets norm 0 and a meaningless
    direction, which the caller replaces (:func:`restarted`).
    """
    norm = jnp.sqrt(dots(residual, residual))
    scale = jnp.sqrt(dots(reference, reference))
    info = jnp.finfo(residual.dtype)
    breakdown = norm <= 100 * info.eps * jnp.maximum(scale, info.tiny)
    unit = residual / jnp.where(breakdown, 1, norm)[:, None]
    return unit, jnp.where(breakdown, 0, norm), breakdown


def restarted(vectors: Array, breakdown: Array, replacements: Array) -> Array:
    """``vectors`` with the rows that broke down replaced by ``replacements``, normalized."""
    replacements = replacements / jnp.linalg.norm(replacements, axis=-1, keepdims=True)
    return jnp.where(breakdown[:, None], replacements, vectors)


normalized_residual_jit = jax.jit(normalized_residual)
restarted_jit = jax.jit(restarted)


@jax.jit
def _subtract_projections(group: tuple[Array, ...], valid: Array, source: Array,
                          vectors: Array) -> tuple[Array, Array]:
    """``vectors`` minus the projections of ``source`` on the first ``valid`` vectors of ``group``,
    and the coefficients ``(p, GROUP)`` of those projections."""
    coefficients = jnp.stack([jnp.where(index < valid, dots(basis_vector, source), 0)
                              for index, basis_vector in enumerate(group)], axis=-1)
    return vectors - sum(coefficients[:, index, None] * basis_vector
                         for index, basis_vector in enumerate(group)), coefficients


def _groups(basis: list[Array]) -> list[tuple[tuple[Array, ...], int]]:
    """``basis`` in groups of :data:`GROUP` (the last padded with the first vector) and their sizes."""
    groups = []
    for start in range(0, len(basis), GROUP):
        group = basis[start:start + GROUP]
        groups.append((tuple(group) + (basis[0],) * (GROUP - len(group)), len(group)))
    return groups


def project_out(vectors: Array, basis: list[Array], passes: int) -> tuple[Array, list[list[Array]]]:
    """``vectors`` with their components along ``basis`` removed by classical Gram-Schmidt.

    Two passes are as accurate as modified Gram-Schmidt ("twice is enough", Giraud et al. 2005).
    Returns the vectors and, per pass, the coefficients of each group (device arrays
    ``(p, GROUP)``; the padding's are 0): see :func:`coefficients_on_host`.
    """
    coefficients: list[list[Array]] = []
    for _ in range(passes):
        source, coefficients_of_pass = vectors, []
        for group, valid in _groups(basis):
            vectors, group_coefficients = _subtract_projections(group, valid, source, vectors)
            coefficients_of_pass.append(group_coefficients)
        coefficients.append(coefficients_of_pass)
    return vectors, coefficients


def coefficients_on_host(coefficients: list[list[Array]], size: int) -> np.ndarray:
    """The coefficients of :func:`project_out`, summed over its passes, as a host array
    ``(p, size)``."""
    return sum(np.concatenate(to_host(of_pass), axis=-1)[:, :size] for of_pass in coefficients)


def orthonormalize(rows: list[Array], completion: Callable[[int], Array]
                   ) -> tuple[list[Array], np.ndarray]:
    """The QR factorization of the rows ``(1, n)``: orthonormal rows ``Q`` and ``R`` (host), with
    ``rows[j] = sum_i R[i, j] Q[i]``, by Gram-Schmidt twice per row.

    A row in the span of the previous ones (a sketch of an operator of rank below its size) gets
    ``R[j, j] = 0`` and, as ``Q[j]``, ``completion(j)`` (a random ``(1, n)`` vector) orthonormalized
    against the others, so that ``Q`` stays orthonormal.
    """
    basis: list[Array] = []
    r = np.zeros((len(rows), len(rows)), np.result_type(rows[0].dtype, np.float32))
    for j, row in enumerate(rows):
        residual, coefficients = project_out(row, basis, passes=2)
        unit, norm, breakdown = normalized_residual_jit(row, residual)
        if bool(np.asarray(breakdown)[0]):
            unit = restarted_jit(unit, breakdown, project_out(completion(j), basis, passes=2)[0])
        if j:
            r[:j, j] = coefficients_on_host(coefficients, j)[0]
        r[j, j] = np.asarray(norm)[0]
        basis.append(unit)
    return basis, r


@jax.jit
def _group_gram(left: tuple[Array, ...], right: tuple[Array, ...]) -> Array:
    return jnp.matmul(jnp.concatenate(left), jnp.concatenate(right).T, precision=_HIGHEST)


def gram(left: list[Array], right: list[Array]) -> np.ndarray:
    """The host matrix of inner products ``left[i] . right[j]`` of two lists of ``(1, n)`` rows."""
    matrix = np.zeros((len(left), len(right)), np.result_type(left[0].dtype, np.float32))
    for i, (group_left, valid_left) in zip(range(0, len(left), GROUP), _groups(left)):
        for j, (group_right, valid_right) in zip(range(0, len(right), GROUP), _groups(right)):
            block = np.asarray(_group_gram(group_left, group_right))
            matrix[i:i + valid_left, j:j + valid_right] = block[:valid_left, :valid_right]
    return matrix


@jax.jit
def _split(rows: Array) -> tuple[Array, ...]:
    return tuple(rows[i:i + 1] for i in range(rows.shape[0]))


def split_rows(chunks: list[Array]) -> list[Array]:
    """The ``(1, n)`` rows of ``(c, n)`` chunks (one compiled split per chunk size)."""
    return [row for chunk in chunks for row in (_split(chunk) if chunk.shape[0] > 1 else (chunk,))]


_stack = jax.jit(jnp.concatenate)


def stack_rows(rows: list[Array]) -> Array:
    """``(1, n)`` rows as one ``(c, n)`` chunk (one compiled stack per chunk size)."""
    return rows[0] if len(rows) == 1 else _stack(rows)
