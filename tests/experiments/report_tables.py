"""Small synthetic ``results.csv`` tables with known structure, for the report's tests."""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from experiments.analysis import results

STEPS = (250, 1000, 2000, 4000, 8000)
PLATEAU_FROM = 2000


def language_rows(seeds=(0, 1, 2), rng_seed=0, steps=STEPS, plateau=True):
    """A language-like study: 2 algorithms x 2 widths x ``seeds`` x ``steps``.

    Built so that the primary tests have known answers: along the plateau the trace falls and the
    probe accuracy rises in every run; width 32 has a smaller trace and better probes than width
    16; the adversarial algorithm has the same loss as AdamW, a larger trace and worse probes.
    """
    rng = np.random.default_rng(rng_seed)
    rows = []
    for objective in ("adamw", "adversarial"):
        for width in (16, 32):
            for seed in seeds:
                for index, step in enumerate(steps):
                    adversarial = objective == "adversarial"
                    gap = 1.0 / (1 + index) + 0.01 * rng.normal() - 0.02 * (width == 32)
                    trace = 60 - 5 * index - 10 * (width == 32) + 8 * adversarial + rng.normal()
                    accuracy = 0.6 + 0.04 * index + 0.05 * (width == 32) - 0.06 * adversarial
                    row = {
                        "setting": "language",
                        "objective": objective,
                        "model": f"text_transformer_w{width}_d2",
                        "width": width,
                        "depth": 2,
                        "num_params": 100 * width,
                        "seed": seed,
                        "step": step,
                        "pretrain_loss": 2 + gap,
                        "pretrain_loss_gap": gap,
                        "trace": trace,
                        "trace_stderr": 1.0,
                        "matvecs": 32,
                        "top_eigenvalue": trace / 5 + rng.normal(),
                        "trace_downstream": trace + 3 * rng.normal(),
                        "linear_probe_acc": accuracy + 0.005 * rng.normal(),
                        "nan_reason": "",
                    }
                    if plateau:
                        row["on_plateau"] = "true" if step >= PLATEAU_FROM else "false"
                    rows.append(row)
    return rows


def write_csv(path: pathlib.Path, rows) -> None:
    """Writes rows (mappings) as a results.csv."""
    table = results.ResultsTable.from_rows(rows)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(table.columns)
        writer.writerows(zip(*table.columns.values(), strict=True))


LANGUAGE_TESTS = (
    {
        "name": "continued_training",
        "kind": "delta_along_steps",
        "statistic": "trace",
        "score": "linear_probe_acc",
        "where": {"objective": "adamw"},
    },
    {
        "name": "size",
        "kind": "paired_difference",
        "statistic": "trace",
        "score": "linear_probe_acc",
        "axis": "width",
        "levels": (16, 32),
        "where": {"objective": "adamw"},
    },
    {
        "name": "algorithm",
        "kind": "paired_difference",
        "statistic": "trace",
        "score": "linear_probe_acc",
        "axis": "objective",
        "levels": ("adamw", "adversarial"),
        "where": {"width": 32},
        "test": "sign",
    },
)
