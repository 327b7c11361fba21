"""The loss plateau of a pretraining run, from the exact held-out gap of every checkpoint.

The criterion (`config.plateau.threshold`, in nats; `find_plateau`). The exact gap
(`experiments.language.evaluation`) is measured at every checkpoint on the same evaluation
sentences, so the change between two checkpoints is paired sentence by sentence. For
checkpoints `c_0 < c_1 < ... < c_K` of a run, the decrease of pair `i` is the mean over sentences
`s` of `gap_s(c_i) - gap_s(c_{i+1})`, with its standard error over sentences (that of the
per-sentence differences, smaller than either gap's: a sentence hard for one checkpoint is hard
for the next, and that spread cancels). The plateau starts at the earliest checkpoint `c_j` such
that every pair from `j` on changes by less than the threshold, in either direction;
`c_j, ..., c_K` are on the plateau (`on_plateau` = 1), the checkpoints before it are not (0). A
run whose last pair still falls, or rises, by the threshold or more has no plateau (every
checkpoint 0). The rule is two-sided because the study compares checkpoints at the same loss: at a
constant learning rate the gap can drift up along the plateau (seeds 5 and 6 of the first full
study rose by 0.007 and 0.011 nats from 8,000 to 16,000 steps under the earlier one-sided rule,
and carried its probe differences; docs/pcfg_full_study).

A decision is only as good as its noise: every pair from the plateau's start on (the last pair,
when there is none) must have a standard error below the threshold, or `PlateauError` names
`config.plateau.threshold` and the number of evaluation sentences that would resolve it. Pairs
before the plateau are not held to this: they fell by at least the threshold, and if that was
noise the true plateau starts earlier than the one reported, which only shortens the plateau
that the analysis uses (the reported one lies inside the true one).

The threshold is per pair of consecutive checkpoints, so it depends on their spacing: with
checkpoints at doubling steps (`configs/pcfg_full.py`) it reads "the gap falls by less than
`threshold` nats per doubling of the training". The default is 0.005 nats. On a width-32 model
of `configs/pcfg.py` at its constant rate (seed 0, checkpoints at 500, 1,000, ..., 8,000 steps;
2026-12-02): the paired decreases were -0.0003, 0.0088, 0.0131 and 0.0016 nats, each with a
standard error of 0.0001-0.0002 on the `rooted` grammar's 500 evaluation sentences, so the plateau
starts at step 4,000 (gap 0.018; 0.0165 at 8,000). The threshold is (a) resolvable: 20 to 40
standard errors of a pair; (b) between the pairs that still learn (0.009 and more) and the
plateau's (0.002); (c) small against the gap it is measured at: a model on the plateau loses less
than 30% of its remaining 0.017 nats in twice the training. The early flat pair (500 to 1,000
steps, the gap of a unigram-like model) is no plateau: the gap falls after it.

`mark_rows` applies it to a study's rows of one run, from the per-sentence gaps that pretraining
logs at each checkpoint (`SENTENCE_GAPS` in `metrics.jsonl`), and writes the pairs to
`plateau.json` in the run's directory. Results carry `on_plateau` only; the decreases stay in
that file (a numeric results column would be read by the report as a Hessian statistic).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments.core import config_utils
from experiments.core.config_utils import Field

SENTENCE_GAPS = "loss_gap_per_sentence"  # The checkpoint metric: one held-out gap per sentence.
PLATEAU_FILE = "plateau.json"
COLUMN = "on_plateau"
SCHEMA = {"threshold": Field(float, 0.005)}
_DIGITS = 8  # Decimals of a stored per-sentence gap (1e-8 nats, far below any decrease resolved).


class PlateauError(config_utils.ConfigError):
    """The plateau criterion cannot be decided: the threshold is below the noise of the pairs."""


@dataclasses.dataclass(frozen=True)
class PairDecrease:
    """The paired decrease of the held-out gap between two consecutive checkpoints.

    Attributes:
      first: the earlier checkpoint's step.
      second: the later checkpoint's step.
      decrease: mean over sentences of `gap(first) - gap(second)`, in nats.
      stderr: its standard error over sentences.
      num_sentences: the sentences paired.
    """

    first: int
    second: int
    decrease: float
    stderr: float
    num_sentences: int


@dataclasses.dataclass(frozen=True)
class Plateau:
    """Which checkpoints of a run are on the loss plateau.

    Attributes:
      threshold: the criterion's threshold, in nats.
      pairs: the decreases of every consecutive pair, in step order.
      start: the first step on the plateau; None: the run has none.
    """

    threshold: float
    pairs: tuple[PairDecrease, ...]
    start: int | None

    def on(self, step: int) -> bool:
        """Whether checkpoint `step` is on the plateau."""
        return self.start is not None and step >= self.start


def read_threshold(config: ml_collections.ConfigDict) -> float:
    """`config.plateau.threshold` (0.005 where the section or field is absent), checked.

    Raises:
      ConfigError: not a number > 0 (the message names the field).
    """
    threshold = config_utils.read_fields(config.get("plateau", {}), SCHEMA, "config.plateau")[
        "threshold"
    ]
    if not (math.isfinite(threshold) and threshold > 0):
        raise config_utils.ConfigError(
            f"config.plateau.threshold must be > 0 nats (the largest decrease of the held-out gap "
            f"between consecutive checkpoints that counts as no decrease); got {threshold!r}."
        )
    return threshold


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses an invalid `config.plateau` before a study's jobs run (see `read_threshold`)."""
    read_threshold(config)


def stored(per_sentence: np.ndarray) -> list[float]:
    """Per-sentence gaps as logged in `metrics.jsonl` (JSON numbers, `_DIGITS` decimals)."""
    return [round(float(value), _DIGITS) for value in np.asarray(per_sentence)]


def paired_decreases(
    steps: Sequence[int], gaps: Sequence[np.ndarray]
) -> tuple[PairDecrease, ...]:
    """The paired decrease of every consecutive pair of checkpoints.

    Args:
      steps: the checkpoints' steps, ascending.
      gaps: per checkpoint, the gap of each evaluation sentence (the same sentences in the same
        order at every checkpoint).

    Raises:
      ValueError: steps not ascending, or the checkpoints' sentence counts differ.
    """
    if list(steps) != sorted(set(steps)) or len(steps) != len(gaps):
        raise ValueError(f"steps: expected ascending distinct steps, one per gap array; got {steps}")
    arrays = [np.asarray(g, dtype=np.float64) for g in gaps]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1 or any(a.ndim != 1 or a.size < 2 for a in arrays):
        raise ValueError(
            f"gaps: expected one gap per evaluation sentence, the same sentences (2 or more) at "
            f"every checkpoint; got shapes {sorted(sizes)}"
        )
    pairs = []
    for i in range(len(arrays) - 1):
        difference = arrays[i] - arrays[i + 1]
        stderr = difference.std(ddof=1) / math.sqrt(difference.size)
        pairs.append(
            PairDecrease(
                int(steps[i]), int(steps[i + 1]), float(difference.mean()), float(stderr), difference.size
            )
        )
    return tuple(pairs)


def _needed_sentences(pair: PairDecrease, threshold: float) -> int:
    """Sentences for the pair's standard error (which falls as 1/sqrt(n)) to reach the threshold."""
    return math.floor(pair.num_sentences * (pair.stderr / threshold) ** 2) + 1


def find_plateau(
    steps: Sequence[int], gaps: Sequence[np.ndarray], threshold: float, where: str = "the run"
) -> Plateau:
    """The plateau of one run (the criterion of the module docstring).

    Args:
      steps: the checkpoints' steps, ascending (2 or more).
      gaps: per checkpoint, the held-out gap of each evaluation sentence.
      threshold: `config.plateau.threshold`, in nats.
      where: names the run in errors.

    Returns:
      The `Plateau`.

    Raises:
      PlateauError: a pair that decides the plateau has a standard error of at least the threshold
        (the message names `config.plateau.threshold` and the sentences needed).
      ValueError: see `paired_decreases`.
    """
    pairs = paired_decreases(steps, gaps)
    if not pairs:
        raise ValueError(f"steps: the plateau needs 2 or more checkpoints; got {list(steps)}")
    start = len(pairs)  # Index of the first pair of the plateau's run of small decreases.
    while start > 0 and abs(pairs[start - 1].decrease) < threshold:
        start -= 1
    deciding = pairs[start:] if start < len(pairs) else pairs[-1:]
    noisy = [pair for pair in deciding if not pair.stderr < threshold]
    if noisy:
        worst = max(noisy, key=lambda pair: pair.stderr)
        raise PlateauError(
            f"config.plateau.threshold = {threshold:g} nats cannot be decided for {where}: the "
            f"paired decrease of the held-out gap from step {worst.first} to {worst.second} is "
            f"{worst.decrease:.4g} +- {worst.stderr:.2g} nats on {worst.num_sentences} evaluation "
            f"sentences, a standard error not below the threshold. About "
            f"{_needed_sentences(worst, threshold)} evaluation sentences would resolve it (the "
            f"grammar's `num_evaluation`, `config.data.pcfg_config`), or raise "
            f"config.plateau.threshold above {worst.stderr:.2g}."
        )
    first = pairs[start].first if start < len(pairs) else None
    return Plateau(threshold, pairs, first)


def _record(plateau: Plateau) -> dict[str, Any]:
    return {
        "threshold": plateau.threshold,
        "start": plateau.start,
        "pairs": [dataclasses.asdict(pair) for pair in plateau.pairs],
    }


def mark_rows(
    rows: list[dict[str, Any]],
    records: Mapping[int, Mapping[str, Any]],
    config: ml_collections.ConfigDict,
    run_dir: pathlib.Path,
) -> Plateau | None:
    """Sets `on_plateau` (1/0) in the results rows of one run and writes `plateau.json`.

    Args:
      rows: the run's rows (one per checkpoint, each with its `step`), completed in place.
      records: step -> the checkpoint's metrics as pretraining logged them (`SENTENCE_GAPS`).
      config: the run's config (`config.plateau`).
      run_dir: the run's pretraining directory, where `plateau.json` goes.

    Returns:
      The `Plateau`, or None where fewer than 2 checkpoints have per-sentence gaps (a run that
      did not finish, or only one checkpoint): `on_plateau` is then left empty (not known).

    Raises:
      PlateauError: see `find_plateau`.
    """
    threshold = read_threshold(config)
    steps = sorted(
        int(row["step"]) for row in rows if SENTENCE_GAPS in records.get(int(row["step"]), {})
    )
    if len(steps) < 2:
        return None
    gaps = [np.asarray(records[step][SENTENCE_GAPS]) for step in steps]
    plateau = find_plateau(steps, gaps, threshold, where=str(run_dir))
    for row in rows:
        row[COLUMN] = int(plateau.on(int(row["step"]))) if int(row["step"]) in steps else None
    (run_dir / PLATEAU_FILE).write_text(json.dumps(_record(plateau), indent=2) + "\n")
    return plateau
