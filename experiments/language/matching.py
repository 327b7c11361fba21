"""Matched-loss checkpoints: compare two training algorithms at the same pretraining loss.

Liu et al.'s algorithm comparison holds the pretraining loss fixed: the adversarial model is taken
where its loss equals AdamW's. `matched_loss_pairs` does this per seed on a study's rows: the
reference run's (AdamW's) first checkpoint on the loss plateau (`on_plateau`), and the other run's
(the adversarial one's) checkpoint of the same seed and model whose held-out gap
(`pretrain_loss_gap`) is nearest to it; the pair counts when the two gaps differ by at most
`num_stderr` standard errors of the reference gap (`pretrain_loss_gap_stderr`). A seed without a
plateau or without a checkpoint that close is left out, with the reason.

Not wired into the analysis (`experiments.analysis.comparisons` would own it: the analysis may not
import a setting); see the module's test for its use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

# The columns that must agree between the two runs of a pair, beside the seed (the axis differs).
_MATCHED = ("setting", "model", "width", "depth")


@dataclasses.dataclass(frozen=True)
class MatchedPair:
    """One seed's matched checkpoints.

    Attributes:
      seed: the seed (as written in the rows).
      reference_row: index of the reference checkpoint's row (first on the plateau).
      other_row: index of the other run's checkpoint with the nearest gap.
      gap_difference: the other's gap minus the reference's, in nats.
      tolerance: `num_stderr` standard errors of the reference gap, in nats.
    """

    seed: str
    reference_row: int
    other_row: int
    gap_difference: float
    tolerance: float


def _number(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def matched_loss_pairs(
    rows: Sequence[Mapping[str, Any]],
    axis: str = "objective",
    levels: tuple[str, str] = ("adamw", "adversarial"),
    num_stderr: float = 1.0,
) -> tuple[dict[str, MatchedPair], list[str]]:
    """Per seed, the reference's first plateau checkpoint and the other run's matched checkpoint.

    Args:
      rows: results rows (dicts of cells, as written to or read from results.csv).
      axis: the column that differs, e.g. `"objective"`.
      levels: `(reference, other)` values of `axis`.
      num_stderr: how many standard errors of the reference gap the two gaps may differ by.

    Returns:
      `(pairs, left_out)`: seed -> `MatchedPair` (one per seed; with several models per seed, the
      first in row order), and why each other seed was left out.
    """
    runs: dict[tuple[str, ...], list[int]] = {}
    for index, row in enumerate(rows):
        key = (str(row.get(axis)), *(str(row.get(c)) for c in _MATCHED), str(row.get("seed")))
        runs.setdefault(key, []).append(index)
    pairs: dict[str, MatchedPair] = {}
    left_out = []
    for key, indices in runs.items():
        if key[0] != str(levels[0]):
            continue
        seed = key[-1]
        plateau = [i for i in indices if _number(rows[i].get("on_plateau")) == 1]
        others = runs.get((str(levels[1]), *key[1:]), [])
        if not plateau or not others:
            left_out.append(f"seed {seed}: " + ("no plateau" if not plateau else f"no {levels[1]} run"))
            continue
        reference = min(plateau, key=lambda i: _number(rows[i]["step"]))
        gap = _number(rows[reference]["pretrain_loss_gap"])
        tolerance = num_stderr * _number(rows[reference]["pretrain_loss_gap_stderr"])
        candidates = [i for i in others if math.isfinite(_number(rows[i].get("pretrain_loss_gap")))]
        if not candidates or not math.isfinite(gap + tolerance):
            left_out.append(f"seed {seed}: no finite gap")
            continue
        nearest = min(candidates, key=lambda i: abs(_number(rows[i]["pretrain_loss_gap"]) - gap))
        difference = _number(rows[nearest]["pretrain_loss_gap"]) - gap
        if abs(difference) > tolerance:
            left_out.append(
                f"seed {seed}: the nearest {levels[1]} gap differs by {difference:+.2g} nats, more "
                f"than {tolerance:.2g}"
            )
        elif seed not in pairs:
            pairs[seed] = MatchedPair(seed, reference, nearest, difference, tolerance)
    return pairs, left_out
