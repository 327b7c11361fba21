"""Inference over independent units: exact small-sample tests, Holm's adjustment, bootstraps.

The report's unit is a seed or a pretraining run, never a checkpoint: the checkpoints of one run are
one trajectory, and treating them as independent draws would make every interval too narrow. Every
function here takes one value per unit.

* :func:`sign_test` and :func:`wilcoxon_signed_rank`: exact two-sided p-values for "the
  differences are centred on zero", from the complete null distribution (no normal
  approximation), so they are valid with 2 units; :func:`smallest_p_value` is the floor that
  ``n`` units allow.
* :func:`holm`: Holm's (1979) step-down adjustment within a family of hypotheses.
* :func:`mean_interval`: Student-t interval of a mean over units (a percentile bootstrap of 3
  seeds would only return their range); :class:`Bootstrap`: how the correlations' cluster
  bootstraps resample units.
* :func:`minimum_detectable_effect`: the smallest true mean difference a paired t-test over the
  units would detect with a given power, from their observed spread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

# An interval needs this many units: with two, a bootstrap can only return the two units' values.
MIN_UNITS = 3
# A cluster bootstrap needs this many seeds: with 3 there are only 10 distinct resamples, and its
# percentile intervals end at the point estimate or at +-1 (a hostile review of the 3-seed reports).
MIN_CLUSTERS = 5


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How every interval of a report is resampled.

    Attributes:
        num_resamples: resamples per interval.
        confidence_level: of every interval, e.g. 0.95.
        seed: each interval restarts from it, so a value does not depend on what came before.
    """

    num_resamples: int = 1000
    confidence_level: float = 0.95
    seed: int = 0

    def rng(self) -> np.random.Generator:
        """A fresh generator for one interval."""
        return np.random.default_rng(self.seed)


def percentile_interval(samples: np.ndarray, confidence_level: float) -> tuple[float, float]:
    """The central percentile interval of bootstrap samples, ignoring NaN (degenerate) resamples.

    Args:
        samples: the bootstrap distribution.
        confidence_level: e.g. 0.95.

    Returns:
        ``(low, high)``; ``(nan, nan)`` if no sample is finite.
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = 50 * (1 - confidence_level)
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(
    values: Sequence[float], bootstrap: Bootstrap, confidence_level: float | None = None
) -> tuple[float, float]:
    """Student-t interval of the mean of per-unit values (independent units, e.g. seeds).

    Not a bootstrap: with few units the percentile bootstrap of a mean returns little more than
    the units' range (with 3 units, exactly ``[min, max]``), which covers far less than its
    nominal level. The t interval ``mean ± t_{n-1} s / sqrt(n)`` is exact for normal values and
    much wider at small ``n`` (3 seeds: ``t_2 = 4.30`` at 95%).

    Args:
        values: one finite value per unit.
        bootstrap: gives the confidence level (no resampling happens).
        confidence_level: overrides ``bootstrap.confidence_level``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than :data:`MIN_UNITS` units.
    """
    values = np.asarray(values, dtype=float)
    if values.size < MIN_UNITS:
        return math.nan, math.nan
    level = bootstrap.confidence_level if confidence_level is None else confidence_level
    half = stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def sign_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign test of "positive and negative differences are equally likely".

    Zeros carry no sign and are dropped. With ``k`` positives among ``n`` the p-value is the
    binomial(``n``, 1/2) probability of a count at least as far from ``n/2`` as ``k``.

    Args:
        differences: one value per unit.

    Returns:
        The p-value; NaN when no difference is non-zero.
    """
    differences = np.asarray(differences, dtype=float)
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return math.nan
    return float(stats.binomtest(int((nonzero > 0).sum()), nonzero.size, 0.5).pvalue)


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank test of "the differences are symmetric about zero".

    Zeros are dropped (Wilcoxon's convention); tied ``|d|`` get their average rank. Under the null
    each rank's sign is a fair coin, so the distribution of the positive rank sum is computed
    exactly by convolving the two-point distributions of the ranks (doubled, so that average ranks
    are integers): exact with ties and for any ``n``, unlike a normal approximation.

    Args:
        differences: one value per unit.

    Returns:
        ``P(|T - E T| >= |t - E T|)`` for the positive rank sum ``T``; NaN when no difference is
        non-zero.
    """
    differences = np.asarray(differences, dtype=float)
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return math.nan
    doubled = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(int)
    distribution = np.zeros(doubled.sum() + 1)
    distribution[0] = 1.0
    for rank in doubled:
        shifted = np.zeros_like(distribution)
        shifted[rank:] = distribution[:-rank]
        distribution = 0.5 * (distribution + shifted)
    observed = doubled[nonzero > 0].sum()
    centre = doubled.sum() / 2
    extreme = np.abs(np.arange(distribution.size) - centre) >= abs(observed - centre)
    return float(min(1.0, distribution[extreme].sum()))


def minimum_detectable_effect(
    differences: Sequence[float], alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true mean difference a two-sided paired t-test would detect with ``power``.

    The usual approximation from the observed per-unit differences (``n`` units, standard
    deviation ``s``): ``(t_{1 - alpha/2, n-1} + t_{power, n-1}) s / sqrt(n)``. It treats ``s`` as
    the true spread and replaces the noncentral t by a shifted central one (slightly optimistic at
    small ``n``); the exact sign and signed-rank tests need somewhat larger effects than the t-test
    (asymptotic relative efficiency 0.64 and 0.95 for normal differences).

    Args:
        differences: one finite value per unit.
        alpha: the two-sided level, e.g. 0.05.
        power: e.g. 0.8.

    Returns:
        The effect, in the differences' units; NaN with fewer than :data:`MIN_UNITS` units.
    """
    differences = np.asarray(differences, dtype=float)
    n = differences.size
    if n < MIN_UNITS:
        return math.nan
    factor = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(factor * differences.std(ddof=1) / math.sqrt(n))


def smallest_p_value(num_units: int) -> float:
    """The smallest two-sided p-value the sign and signed-rank tests can give with ``n`` units.

    Both reach it when every difference has the same sign: ``2 / 2**n`` (0.25 with 3 units, 0.0625
    with 5, below 0.05 from 6 units on).
    """
    return min(1.0, 2.0 / 2.0**num_units) if num_units > 0 else math.nan


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values of one family of hypotheses.

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i + 1`` (``i`` from 1), the
    running maximum is taken so that the order is kept, and the result is capped at 1. Rejecting
    every hypothesis whose adjusted p-value is at most ``alpha`` controls the family-wise error
    rate at ``alpha`` under any dependence between the tests. NaN p-values (tests that could not
    be computed) stay NaN and do not count in ``m``.

    Args:
        p_values: the family's p-values.

    Returns:
        The adjusted p-values, in the input order.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite], kind="stable")]
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, (len(order) - position) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted
