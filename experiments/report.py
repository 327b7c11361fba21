"""Writes a study's report: ``report.md`` and ``plots/*.png`` from ``<workdir>/results.csv``.

Usage::

  python -m experiments.report --workdir=DIR [--num_resamples=N] [--seed=S] [--statistics=trace,...]
      [--plateau_threshold=NATS]

The report's settings (primary tests, equivalence margin, bootstrap) are those the study recorded
in ``DIR/report_config.json`` (its ``config.report``); without that file, the defaults (no primary
test). ``--num_resamples`` and ``--seed`` override the recorded values for this report only.

Started on several hosts (the `HESSJAX_*` environment), only the primary process writes.
"""

from absl import flags, logging

from experiments.analysis import markdown
from experiments.core import binaries, multihost

_WORKDIR = binaries.define_workdir_flag("The study's working directory.")
_STATISTICS = flags.DEFINE_list(
    "statistics", None, "Predictor columns to correlate; default: every Hessian statistic."
)
_NUM_RESAMPLES = flags.DEFINE_integer(
    "num_resamples", None, "Bootstrap resamples per interval; default: the recorded settings'."
)
_SEED = flags.DEFINE_integer("seed", None, "Seed of the bootstrap; default: the recorded settings'.")
_PLATEAU_THRESHOLD = flags.DEFINE_float(
    "plateau_threshold",
    None,
    "The study's config.plateau.threshold (nats), for the primary tests' loss-matched reruns; "
    "default: the one the runs recorded in runs/**/plateau.json.",
)
_DENSITY_PATTERN = flags.DEFINE_string(
    "density_pattern",
    markdown.DEFAULT_DENSITY_PATTERN,
    "Path of a checkpoint's spectral density relative to the workdir, formatted with its row.",
)


def _write_report() -> None:
    if not multihost.is_primary():
        return
    report = markdown.write_report(
        _WORKDIR.value,
        statistics=_STATISTICS.value,
        num_resamples=_NUM_RESAMPLES.value,
        seed=_SEED.value,
        density_pattern=_DENSITY_PATTERN.value,
        plateau_threshold=_PLATEAU_THRESHOLD.value,
    )
    logging.info("Wrote %s", report)


if __name__ == "__main__":
    binaries.run(_write_report)
