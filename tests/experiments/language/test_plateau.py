"""The plateau criterion on synthetic per-sentence gaps: exact markings, the noise error, the rows."""

import json

import ml_collections
import numpy as np
import pytest

from experiments.core import config_utils
from experiments.language import plateau

STEPS = (250, 500, 1000, 2000, 4000, 8000)


def _gaps(means, num_sentences=400, noise=0.001, seed=0):
    """Per-sentence gaps: a fixed spread over sentences (shared by every checkpoint, as the same
    sentences are harder or easier for every model) plus a small independent noise."""
    rng = np.random.default_rng(seed)
    spread = rng.gamma(2.0, 0.01, num_sentences)
    return [m + spread - spread.mean() + noise * rng.standard_normal(num_sentences) for m in means]


def test_paired_decreases_are_the_mean_and_stderr_of_the_differences():
    gaps = [np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.5])]
    (pair,) = plateau.paired_decreases((10, 20), gaps)
    assert (pair.first, pair.second, pair.num_sentences) == (10, 20, 3)
    assert pair.decrease == pytest.approx(2.0 / 3)  # differences 0.5, 1.0, 0.5
    assert pair.stderr == pytest.approx(np.std([0.5, 1.0, 0.5], ddof=1) / np.sqrt(3))


def test_pairing_removes_the_spread_over_sentences():
    first, second = _gaps((0.030, 0.029))
    (pair,) = plateau.paired_decreases((1, 2), [first, second])
    unpaired = np.hypot(first.std(ddof=1), second.std(ddof=1)) / np.sqrt(first.size)
    assert pair.stderr < unpaired / 5
    assert pair.decrease == pytest.approx(0.001, abs=3 * pair.stderr)


@pytest.mark.parametrize(
    "means, start",
    [
        # Falling, then flat from 2000 on: 2000, 4000 and 8000 are on the plateau.
        ((0.20, 0.10, 0.050, 0.030, 0.029, 0.028), 2000),
        # An early flat stretch (the unigram plateau) is not the plateau: the gap falls after it.
        ((0.040, 0.040, 0.031, 0.020, 0.018, 0.017), 2000),
        # Small rises and falls: flat from the first checkpoint.
        ((0.030, 0.031, 0.029, 0.030, 0.032, 0.030), 250),
        # A rise of the threshold or more (1000 to 2000) ends no plateau before it: from 2000 on.
        ((0.030, 0.031, 0.029, 0.037, 0.036, 0.035), 2000),
        # Rising by 0.008 at the last pair: no plateau.
        ((0.030, 0.031, 0.029, 0.028, 0.027, 0.035), None),
        # Only the last pair is flat: the plateau is the last two checkpoints.
        ((0.20, 0.10, 0.050, 0.030, 0.020, 0.019), 4000),
        # Still falling by 0.008 at the last pair: no plateau.
        ((0.20, 0.10, 0.050, 0.030, 0.029, 0.021), None),
    ],
)
def test_the_plateau_starts_where_every_later_pair_changes_less_than_the_threshold(means, start):
    found = plateau.find_plateau(STEPS, _gaps(means), threshold=0.005)
    assert found.start == start
    assert [found.on(step) for step in STEPS] == [
        start is not None and step >= start for step in STEPS
    ]
    assert [p.decrease for p in found.pairs] == pytest.approx(-np.diff(means), abs=5e-4)


def test_a_threshold_below_the_noise_of_the_pairs_is_an_error_naming_the_field():
    # A pair on the plateau with a standard error of about 0.02 / sqrt(100) = 0.002 nats.
    gaps = _gaps((0.05, 0.03, 0.029), num_sentences=100, noise=0.014)
    with pytest.raises(plateau.PlateauError, match=r"config\.plateau\.threshold") as error:
        plateau.find_plateau((1, 2, 3), gaps, threshold=0.001)
    stderr = plateau.paired_decreases((2, 3), gaps[1:])[0].stderr
    needed = int(100 * (stderr / 0.001) ** 2) + 1
    assert f"About {needed} evaluation sentences" in str(error.value)
    assert isinstance(error.value, config_utils.ConfigError)
    # The same gaps with a threshold above the noise: decided.
    assert plateau.find_plateau((1, 2, 3), gaps, threshold=0.01).start == 2


def test_noise_before_the_plateau_is_not_held_against_it():
    # The first pair is noisy (stderr about 0.01) but falls by 0.1: only the plateau's pairs count.
    rng = np.random.default_rng(1)
    noisy_first = 0.2 + 0.1 * rng.standard_normal(400)
    later = _gaps((0.10, 0.099, 0.098))
    assert plateau.find_plateau((1, 2, 3, 4), [noisy_first, *later], threshold=0.005).start == 2


def test_a_run_without_a_plateau_is_held_to_its_last_pair():
    gaps = _gaps((0.2, 0.1), num_sentences=50, noise=0.2)
    with pytest.raises(plateau.PlateauError, match="from step 1 to 2"):
        plateau.find_plateau((1, 2), gaps, threshold=0.005)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        plateau.find_plateau((2, 1), _gaps((0.1, 0.1)), 0.005)
    with pytest.raises(ValueError, match="same sentences"):
        plateau.find_plateau((1, 2), [np.zeros(5), np.zeros(6)], 0.005)
    with pytest.raises(ValueError, match="2 or more checkpoints"):
        plateau.find_plateau((1,), _gaps((0.1,)), 0.005)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan")])
def test_the_threshold_must_be_positive(threshold):
    config = ml_collections.ConfigDict({"plateau": {"threshold": threshold}})
    with pytest.raises(config_utils.ConfigError, match=r"config\.plateau\.threshold"):
        plateau.check_config(config)


def test_rows_of_a_run_are_marked_and_the_pairs_written(tmp_path):
    means = (0.20, 0.10, 0.050, 0.030, 0.029, 0.028)
    records = {s: {plateau.SENTENCE_GAPS: plateau.stored(g)} for s, g in zip(STEPS, _gaps(means))}
    del records[250][plateau.SENTENCE_GAPS]  # A checkpoint logged before the gaps were kept.
    rows = [{"step": step} for step in STEPS]
    config = ml_collections.ConfigDict()  # No `plateau` section: the default threshold.
    found = plateau.mark_rows(rows, records, config, tmp_path)
    assert found.threshold == 0.005 and found.start == 2000
    assert [row["on_plateau"] for row in rows] == [None, 0, 0, 1, 1, 1]
    written = json.loads((tmp_path / plateau.PLATEAU_FILE).read_text())
    assert written["start"] == 2000 and [p["second"] for p in written["pairs"]] == list(STEPS[2:])
    # Fewer than 2 checkpoints with gaps: not known, nothing written.
    single = [{"step": 8000}]
    assert plateau.mark_rows(single, records, config, tmp_path / "absent") is None
    assert single == [{"step": 8000}]
