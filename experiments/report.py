"""Writes a study's report: ``report.md`` and ``plots/*.png`` from ``<workdir>/results.csv``.

Usage::

  python -m experiments.report --workdir=DIR [--num_resamples=1000] [--statistics=trace,...]

Started on several hosts (the `HESSJAX_*` environment), only the primary process writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags, logging

from experiments import multihost
from experiments.analysis import markdown

_WORKDIR = flags.DEFINE_string("workdir", None, "The study's working directory.", required=True)
_STATISTICS = flags.DEFINE_list(
    "statistics", None, "Predictor columns to correlate; default: every Hessian statistic."
)
_NUM_RESAMPLES = flags.DEFINE_integer("num_resamples", 1000, "Bootstrap resamples per interval.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
_DENSITY_PATTERN = flags.DEFINE_string(
    "density_pattern",
    markdown.DEFAULT_DENSITY_PATTERN,
    "Path of a checkpoint's spectral density relative to the workdir, formatted with its row.",
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    multihost.initialize()
    if not multihost.is_primary():
        return
    try:
        report = markdown.write_report(
            _WORKDIR.value,
            statistics=_STATISTICS.value,
            num_resamples=_NUM_RESAMPLES.value,
            seed=_SEED.value,
            density_pattern=_DENSITY_PATTERN.value,
        )
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from error
    logging.info("Wrote %s", report)


if __name__ == "__main__":
    app.run(main)
