"""Matched-loss checkpoints of two algorithms: AdamW's first plateau checkpoint and the nearest gap."""

import pytest

from experiments.language import matching


def _row(objective, seed, step, gap, on_plateau=None, stderr=0.001):
    return {
        "setting": "language", "model": "m", "width": 32, "depth": 2, "objective": objective,
        "seed": seed, "step": step, "pretrain_loss_gap": gap, "pretrain_loss_gap_stderr": stderr,
        "on_plateau": on_plateau,
    }


ROWS = [
    # Seed 0: AdamW's plateau starts at 4000 (gap 0.0180); the adversarial 8000 is 0.0005 away.
    _row("adamw", 0, 2000, 0.030, 0), _row("adamw", 0, 4000, 0.0180, 1),
    _row("adamw", 0, 8000, 0.0165, 1),
    _row("adversarial", 0, 4000, 0.0240), _row("adversarial", 0, 8000, 0.0185),
    # Seed 1: the nearest adversarial gap is 0.004 above: no match.
    _row("adamw", 1, 4000, 0.0170, 1), _row("adamw", 1, 8000, 0.0160, 1),
    _row("adversarial", 1, 4000, 0.0250), _row("adversarial", 1, 8000, 0.0210),
    # Seed 2: AdamW never reaches a plateau.
    _row("adamw", 2, 4000, 0.030, 0), _row("adamw", 2, 8000, 0.020, 0),
    _row("adversarial", 2, 8000, 0.020),
    # Seed 3: matched at the adversarial's first checkpoint (text cells, as read from a csv).
    *[
        {k: str(v) for k, v in row.items()}
        for row in (_row("adamw", 3, 4000, 0.0175, 1), _row("adversarial", 3, 4000, 0.0168),
                    _row("adversarial", 3, 8000, 0.0150))
    ],
]


def test_each_seed_pairs_adamws_first_plateau_checkpoint_with_the_nearest_gap():
    pairs, left_out = matching.matched_loss_pairs(ROWS)
    assert sorted(pairs) == ["0", "3"]
    assert (pairs["0"].reference_row, pairs["0"].other_row) == (1, 4)
    assert pairs["0"].gap_difference == pytest.approx(0.0005)
    assert pairs["0"].tolerance == pytest.approx(0.001)
    assert (ROWS[pairs["3"].other_row]["step"], pairs["3"].gap_difference) == ("4000", pytest.approx(-0.0007))
    assert left_out[0].startswith("seed 1: the nearest adversarial gap differs by +0.004")
    assert left_out[1] == "seed 2: no plateau"


def test_a_wider_tolerance_matches_more_seeds():
    pairs, left_out = matching.matched_loss_pairs(ROWS, num_stderr=5.0)
    assert sorted(pairs) == ["0", "1", "3"] and left_out == ["seed 2: no plateau"]
    assert ROWS[pairs["1"].other_row]["step"] == 8000
