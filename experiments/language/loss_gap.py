r"""The exact optimum of masked-LM pretraining on a PCFG, and a model's gap to it.

Masking scheme (the one the masked-LM pretraining uses): for a sentence ``w`` of length ``n``,
exactly one position ``i`` is drawn uniformly from ``{0, ..., n-1}`` and replaced by the mask
token; every other word stays visible. The Bayes-optimal prediction is ``p(w_i | w_{-i})``
(:func:`experiments.language.inside_outside.conditionals`), so the minimal loss is

.. math::

  L^\star = \mathbb{E}_{w}\Big[\frac{1}{n}\sum_{i=0}^{n-1} H\big(p(\cdot \mid w_{-i})\big)\Big],

estimated on a fixed evaluation set by averaging over sentences, with the inner average over
positions computed exactly (every position masked in turn): :func:`optimal_masked_lm_loss`, and
:func:`masked_lm_gap`, a model's KL gap to it. ``conditionals`` also accepts any other visibility
pattern (e.g. 15% of positions masked at once): masked positions are then marginalised out
exactly.

Example::

  grammar = random_grammar(GrammarSpec(seed=0))  # 31 non-terminals, 100 words
  sentences = sample_sentences(grammar, 1000, seed=1)  # lengths 4..16
  truth = conditionals(grammar, sentences.tokens, sentences.lengths)  # [1000, 16, 100]
  optimal_masked_lm_loss(truth, sentences.lengths).value  # about 2.35 nats

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LossEstimate(NamedTuple):
    """A mean over evaluation sentences and its standard error.

    Attributes:
      value: the mean, in nats.
      stderr: standard error of the mean over sentences.
    """

    value: float
    stderr: float


def _per_sentence(per_position: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[B]``: the mean of ``[B, T]`` values over each sentence's positions."""
    inside_sentence = np.arange(per_position.shape[1]) < lengths[:, None]
    return np.where(inside_sentence, per_position, 0.0).sum(axis=1) / lengths


def mean_over_sentences(per_sentence: np.ndarray) -> LossEstimate:
    """The mean of one value per sentence and its standard error over sentences."""
    per_sentence = np.asarray(per_sentence, dtype=np.float64)
    stderr = per_sentence.std(ddof=1) / np.sqrt(per_sentence.size) if per_sentence.size > 1 else 0.0
    return LossEstimate(float(per_sentence.mean()), float(stderr))


def _sentence_mean(per_position: np.ndarray, lengths: np.ndarray) -> LossEstimate:
    """Averages ``[B, T]`` values over each sentence's positions, then over sentences."""
    return mean_over_sentences(_per_sentence(per_position, lengths))


def _check_conditionals(true_conditionals: np.ndarray, lengths: np.ndarray) -> tuple:
    true_conditionals, lengths = np.asarray(true_conditionals), np.asarray(lengths)
    if true_conditionals.ndim != 3 or lengths.shape != true_conditionals.shape[:1]:
        raise ValueError(
            "true_conditionals, lengths: expected [B, T, V] probabilities from conditionals() and "
            f"[B] lengths, got {true_conditionals.shape} and {lengths.shape}"
        )
    if np.any((lengths < 1) | (lengths > true_conditionals.shape[1])):
        raise ValueError(f"lengths: expected values in [1, {true_conditionals.shape[1]}]")
    return true_conditionals, lengths


def optimal_masked_lm_loss(true_conditionals: np.ndarray, lengths: np.ndarray) -> LossEstimate:
    """Bayes-optimal masked-LM loss of the single-position masking scheme (the minimal loss).

    Cross-entropy of the true conditional with itself, i.e. its entropy, averaged over each
    sentence's positions and then over sentences (see the module docstring). Using the entropy
    rather than ``-log p(w_i | w_{-i})`` of the observed word gives the same expectation with less
    variance.

    Args:
      true_conditionals: ``[B, T, V]`` from :func:`conditionals` with ``visible=None``.
      lengths: ``[B]`` sentence lengths.

    Returns:
      :class:`LossEstimate` in nats.
    """
    probs, lengths = _check_conditionals(true_conditionals, lengths)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=-1)
    return _sentence_mean(entropy, lengths)


def sentence_gaps(
    true_conditionals: np.ndarray, model_log_probs: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    r"""Each sentence's gap: the mean over its positions of the KL to the true conditional.

    The per-sentence values of :func:`masked_lm_gap`; a difference of two models' gaps on the
    same sentences can be paired sentence by sentence (the plateau criterion,
    ``experiments.language.plateau``).

    .. math::

      \mathrm{gap}(w) = \frac{1}{n} \sum_i
        \mathrm{KL}\big(p(\cdot \mid w_{-i}) \,\|\, q(\cdot \mid w_{-i})\big).

    Args:
      true_conditionals: ``[B, T, V]`` from :func:`conditionals`.
      model_log_probs: ``[B, T, V']`` model log-probabilities at each position when that position
        is masked, ``V' >= V``; ids past ``V`` (padding, mask) count as wrong predictions.
      lengths: ``[B]`` sentence lengths.

    Returns:
      ``[B]`` gaps in nats (>= 0 up to rounding).
    """
    probs, lengths = _check_conditionals(true_conditionals, lengths)
    log_q = np.asarray(model_log_probs, dtype=np.float64)
    if log_q.shape[:2] != probs.shape[:2] or log_q.ndim != 3 or log_q.shape[2] < probs.shape[2]:
        raise ValueError(
            f"model_log_probs: expected shape [{probs.shape[0]}, {probs.shape[1]}, >= "
            f"{probs.shape[2]}], got {log_q.shape}"
        )
    log_q = log_q[..., : probs.shape[2]]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(probs > 0, probs * (np.log(probs) - log_q), 0.0).sum(axis=-1)
    return _per_sentence(kl, lengths)


def masked_lm_gap(
    true_conditionals: np.ndarray, model_log_probs: np.ndarray, lengths: np.ndarray
) -> LossEstimate:
    """A model's masked-LM loss minus the optimum: the mean of :func:`sentence_gaps` over
    sentences, whose expectation equals the model's expected single-position masked-LM loss minus
    :func:`optimal_masked_lm_loss`.

    Returns:
      :class:`LossEstimate` in nats (>= 0 up to rounding).
    """
    return mean_over_sentences(sentence_gaps(true_conditionals, model_log_probs, lengths))
