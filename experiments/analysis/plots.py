"""The study's plots: trace against step, statistics against scores, spectral densities.

Spectral densities are optional: per checkpoint, a ``.npz`` file with either ``grid`` and ``pdf``
arrays, or stochastic Lanczos quadrature ``nodes`` and ``weights`` (any shape; flattened), at a path
given by a pattern (:data:`experiments.analysis.markdown.DEFAULT_DENSITY_PATTERN`) formatted with
the row's cells.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Reports are written on headless machines.

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from experiments.analysis.results import ResultsTable, format_number  # noqa: E402
from experiments.analysis.statistics import SWEEP_AXES, axis_groups, rank_correlations  # noqa: E402


def write_plots(
    table: ResultsTable,
    predictors: Sequence[str],
    scores: Sequence[str],
    workdir: pathlib.Path,
    density_pattern: str,
) -> list[pathlib.Path]:
    """Writes every plot of the report into ``<workdir>/plots``.

    Args:
        table: the results.
        predictors: the statistics plotted against each score.
        scores: the transfer scores, one scatter plot each.
        workdir: the study's working directory.
        density_pattern: where spectral densities are, relative to ``workdir``.

    Returns:
        The PNGs written, in the order the report shows them.
    """
    plots_dir = workdir / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = []
    if plot_trace_vs_step(table, plots_dir / "trace_vs_step.png"):
        plots.append(plots_dir / "trace_vs_step.png")
    for score in scores:
        path = plots_dir / f"scatter_{_file_name(score)}.png"
        if plot_statistic_vs_score(table, predictors, score, path):
            plots.append(path)
    return plots + plot_densities(table, workdir, density_pattern, plots_dir)


def _configuration_label(table: ResultsTable, row: int, columns: Sequence[str]) -> str:
    parts = []
    for column in columns:
        value = table.text(column)[row]
        if value:
            parts.append(
                value if column in ("setting", "objective", "model") else f"{column}{value}"
            )
    return "/".join(parts) or "all"


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def plot_trace_vs_step(table: ResultsTable, path: pathlib.Path) -> bool:
    """Plots the trace against the checkpoint step, one line per configuration (log x axis).

    Args:
        table: the results.
        path: the PNG to write.

    Returns:
        Whether a plot was written (``trace`` and ``step`` must be numeric).
    """
    if not (table.is_numeric("trace") and table.is_numeric("step")):
        return False
    step, trace = table.values("step"), table.values("trace")
    stderr = table.values("trace_stderr")
    iterations = next(a for a in SWEEP_AXES if a.name == "iterations")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for rows in axis_groups(table, iterations):
        rows = rows[np.isfinite(step[rows]) & np.isfinite(trace[rows])]
        if not len(rows):
            continue
        rows = rows[np.argsort(step[rows])]
        label = _configuration_label(table, rows[0], iterations.group_by)
        yerr = np.nan_to_num(stderr[rows])
        axes.errorbar(step[rows], trace[rows], yerr=yerr, marker="o", capsize=2, label=label)
    # symlog: logarithmic beyond step 1 yet able to show the initialisation at step 0.
    axes.set_xscale("symlog", linthresh=1)
    axes.set(xlabel="pretraining step", ylabel="Hessian trace", title="Trace vs step")
    axes.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_statistic_vs_score(
    table: ResultsTable, statistics: Sequence[str], score: str, path: pathlib.Path
) -> bool:
    """Scatter plots of each statistic against one transfer score, with a rank trend line.

    Args:
        table: the results.
        statistics: predictor columns, one panel each.
        score: the transfer score on the y axis.
        path: the PNG to write.

    Returns:
        Whether a plot was written (at least one statistic must be given).
    """
    if not statistics:
        return False
    columns = min(3, len(statistics))
    grid_rows = math.ceil(len(statistics) / columns)
    figure, panels = plt.subplots(
        grid_rows, columns, figsize=(4 * columns, 3.3 * grid_rows), squeeze=False
    )
    y = table.values(score)
    for panel, statistic in zip(panels.flat, statistics, strict=False):
        x = table.values(statistic)
        present = np.isfinite(x) & np.isfinite(y)
        xs, ys = x[present], y[present]
        panel.scatter(xs, ys, s=18)
        tau = math.nan
        if len(xs) >= 2 and np.ptp(xs) > 0:
            tau = float(rank_correlations(xs, ys)[0])
            # The trend is fitted to the ranks (what tau measures) and drawn back in data units
            # through the score's quantiles, so it is monotone and stays within the data.
            x_ranks, y_ranks = stats.rankdata(xs), stats.rankdata(ys)
            slope, intercept, _, _ = stats.theilslopes(y_ranks, x_ranks)
            order = np.argsort(xs)
            trend = np.interp(intercept + slope * x_ranks[order], np.sort(y_ranks), np.sort(ys))
            panel.plot(xs[order], trend, color="C3", label="Theil-Sen fit of ranks")
        panel.set(xlabel=statistic, ylabel=score, title=f"τ = {format_number(tau)}")
    for panel in panels.flat[len(statistics) :]:
        panel.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def load_density(
    path: str | os.PathLike[str], grid_size: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a spectral density saved by the Hessian stage.

    Args:
        path: an ``.npz`` with ``grid`` and ``pdf``, or with Lanczos-quadrature ``nodes`` and
            ``weights`` (any shape, flattened); the latter are smoothed with Gaussians of width
            1% of the spectral range.
        grid_size: grid points when smoothing nodes and weights.

    Returns:
        ``(grid, pdf)``.

    Raises:
        ValueError: when the file has neither pair of arrays.
    """
    with np.load(path) as data:
        if {"grid", "pdf"} <= set(data.files):
            return np.asarray(data["grid"], float), np.asarray(data["pdf"], float)
        if not {"nodes", "weights"} <= set(data.files):
            raise ValueError(f"{path} has {data.files}; expected 'grid'+'pdf' or 'nodes'+'weights'")
        nodes, weights = np.ravel(data["nodes"]), np.ravel(data["weights"])
    weights = weights / weights.sum()
    span = float(np.ptp(nodes)) or 1.0
    sigma = 0.01 * span
    grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, grid_size)
    pdf = weights @ stats.norm.pdf(grid[None, :], loc=nodes[:, None], scale=sigma)
    return grid, pdf


def plot_densities(
    table: ResultsTable, workdir: pathlib.Path, pattern: str, plots_dir: pathlib.Path
) -> list[pathlib.Path]:
    """Plots the spectral density of the first and last checkpoint of each configuration.

    Args:
        table: the results.
        workdir: density paths are relative to it.
        pattern: a ``str.format`` pattern filled with the row's cells, e.g.
            :data:`experiments.analysis.markdown.DEFAULT_DENSITY_PATTERN`; configurations whose
            files are absent are skipped.
        plots_dir: where ``density_<configuration>.png`` files go.

    Returns:
        The PNGs written (empty when no density file exists).
    """
    if not table.is_numeric("step"):
        return []
    iterations = next(a for a in SWEEP_AXES if a.name == "iterations")
    step = table.values("step")
    written = []
    for rows in axis_groups(table, iterations):
        rows = rows[np.isfinite(step[rows])]
        if len(rows) < 2:
            continue
        first, last = rows[np.argmin(step[rows])], rows[np.argmax(step[rows])]
        paths = {}
        for row in (first, last):
            cells = {name: table.text(name)[row] for name in table.columns}
            try:
                paths[row] = workdir / pattern.format(**cells)
            except KeyError:  # The pattern names a column this table lacks.
                return []
        if not all(p.exists() for p in paths.values()):
            continue
        label = _configuration_label(table, first, iterations.group_by)
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for row, density_path in paths.items():
            grid, pdf = load_density(density_path)
            axes.plot(grid, np.maximum(pdf, 1e-12), label=f"step {table.text('step')[row]}")
        axes.set_yscale("log")
        axes.set(xlabel="eigenvalue", ylabel="density", title=f"Hessian spectrum: {label}")
        axes.legend()
        figure.tight_layout()
        path = plots_dir / f"density_{_file_name(label)}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
