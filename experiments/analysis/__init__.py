"""The analysis of a study: from ``results.csv`` to ``report.md`` and ``plots/*.png``.

Modules, each importing only those above it:

* ``results``: the roles of the columns of ``results.csv`` (axis, score, bookkeeping, baseline,
  statistic), :class:`~experiments.analysis.results.ResultsTable` and how it is read.
* ``statistics``: sweep axes and their groups, Kendall tau-b and Spearman rho with
  percentile-bootstrap intervals, predictor rankings and comparisons, the trace's probe budget.
* ``plots``: trace against step, statistics against scores, spectral densities.
* ``markdown``: the tables and sections of ``report.md``, and ``write_report``, which writes the
  report and its plots (``python -m experiments.report`` is its command line).
"""
