"""The analysis of a study: from ``results.csv`` to ``report.md`` and ``plots/*.png``.

Modules, each importing only those above it:

* ``results``: the roles of the columns of ``results.csv`` (axis, indicator, score, bookkeeping,
  baseline, statistic), runs and configurations, :class:`~experiments.analysis.results.ResultsTable`.
* ``inference``: exact sign and Wilcoxon signed-rank tests, Holm's adjustment, bootstraps over
  units.
* ``correlation``: Kendall tau-b and partial tau, pooled with a cluster bootstrap over seeds, or per run
  along its checkpoints and summarised across runs.
* ``comparisons``: paired differences across seeds (two configurations, or two checkpoints).
* ``settings``: ``config.report`` checked (primary tests, equivalence margin, bootstrap), and
  ``report_config.json``.
* ``primary``: the pre-registered primary tests, Holm-adjusted per family, and their exploratory
  reruns on loss-matched seeds and on plateau pairs.
* ``quality``: negative trace estimates, and columns that are exact affine copies of another.
* ``formatting``, ``critics``, ``exploratory``: the report's numbers, the critics' sections, the
  exploratory sections.
* ``plots``: loss, trace and transfer against step with seed bands; transfer against the trace
  coloured by the loss; statistics against scores; spectral densities.
* ``markdown``: ``write_report``, which writes the report and its plots
  (``python -m experiments.report`` is its command line).
"""
