"""The study's plots: what a reader looks at first, then the details.

First: the loss, the trace and each transfer score against the pretraining step, one line per
configuration (the mean over seeds, a band over the seeds' range, hollow markers off the loss
plateau where results.csv says which checkpoints are on it), and transfer against the trace with
the loss as colour (do checkpoints of the same loss differ in trace and transfer?), and the
spectral densities of the first and last plateau checkpoints overlaid. Then: every statistic
against each score.

Spectral densities are optional: per checkpoint, a ``.npz`` file with either ``grid`` and ``pdf``
arrays, or stochastic Lanczos quadrature ``nodes`` and ``weights`` (any shape; flattened), at a path
given by a pattern (:data:`experiments.analysis.markdown.DEFAULT_DENSITY_PATTERN`) formatted with
the row's cells.
"""

from __future__ import annotations

import io
import math
import os
import pathlib
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Reports are written on headless machines.

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from experiments.analysis.correlation import MIN_ROWS, kendall_tau  # noqa: E402
from experiments.analysis.results import (  # noqa: E402
    CONFIGURATION_COLUMNS,
    DENSITY_COLUMN,
    LABEL_COLUMNS,
    PLATEAU_COLUMN,
    RUN_COLUMNS,
    ResultsTable,
    format_number,
    label_columns,
    loss_column,
    plateau_known,
)


def write_plots(
    table: ResultsTable,
    predictors: Sequence[str],
    scores: Sequence[str],
    workdir: pathlib.Path,
    density_pattern: str,
) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """Writes every plot of the report into ``<workdir>/plots``.

    Args:
        table: the results.
        predictors: the statistics plotted against each score.
        scores: the transfer scores.
        workdir: the study's working directory.
        density_pattern: where spectral densities are, relative to ``workdir``.

    Returns:
        ``(first, more, notes)``: the PNGs a reader looks at first, and the others, in report
        order; and a line for each configuration measured at several steps that has no density
        plot, saying why (`plot_densities`).
    """
    plots_dir = workdir / "plots"
    plots_dir.mkdir(exist_ok=True)
    first, more = [], []
    if plot_trace_vs_step(table, scores, plots_dir / "trace_vs_step.png"):
        first.append(plots_dir / "trace_vs_step.png")
    for score in scores:
        path = plots_dir / f"trace_vs_{_file_name(score)}_by_loss.png"
        if plot_transfer_vs_trace_by_loss(table, score, path):
            first.append(path)
        path = plots_dir / f"scatter_{_file_name(score)}.png"
        if plot_statistic_vs_score(table, predictors, score, path):
            more.append(path)
    # The densities of the first and last plateau checkpoints are among the first plots.
    densities, notes = plot_densities(table, workdir, density_pattern, plots_dir)
    return first + densities, more, notes


def _configuration_label(table: ResultsTable, row: int, columns: Sequence[str]) -> str:
    parts = []
    for column in columns:
        value = table.text(column)[row]
        if value:
            parts.append(value if column in LABEL_COLUMNS else f"{column}{value}")
    return "/".join(parts) or "all"


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def _seed_band(
    panel: plt.Axes,
    table: ResultsTable,
    rows: np.ndarray,
    column: str,
    style: dict[str, object],
    plateau: np.ndarray | None,
) -> None:
    """One configuration's ``column`` against step: mean over seeds, band over their range."""
    step, values = table.values("step"), table.values(column)
    rows = rows[np.isfinite(step[rows]) & np.isfinite(values[rows])]
    steps = np.unique(step[rows])
    if not steps.size:
        return
    at_step = [rows[step[rows] == s] for s in steps]
    mean = np.array([values[r].mean() for r in at_step])
    panel.plot(steps, mean, **style)
    if any(len(r) > 1 for r in at_step):
        low, high = ([f(values[r]) for r in at_step] for f in (np.min, np.max))
        panel.fill_between(steps, low, high, color=style["color"], alpha=0.2, linewidth=0)
    # Hollow: off the plateau where results.csv says which checkpoints are on it.
    on_plateau = [plateau is None or bool(plateau[r].all()) for r in at_step]
    fill = [style["color"] if on else "white" for on in on_plateau]
    panel.scatter(steps, mean, s=22, edgecolors=style["color"], facecolors=fill, zorder=3)


def _plateau_span(table: ResultsTable, plateau: np.ndarray | None) -> tuple[float, float] | None:
    """The steps from the latest plateau start of any run to the last checkpoint, if every run has
    a plateau of two or more checkpoints (else None: nothing to shade)."""
    if plateau is None:
        return None
    step, starts, ends = table.values("step"), [], []
    for run in table.groups(RUN_COLUMNS):
        on = run[plateau[run] & np.isfinite(step[run])]
        if len(on) < 2:
            return None
        starts.append(step[on].min())
        ends.append(step[on].max())
    return (float(max(starts)), float(min(ends))) if max(starts) < min(ends) else None


def plot_trace_vs_step(table: ResultsTable, scores: Sequence[str], path: pathlib.Path) -> bool:
    """The loss, the trace and each score against the step, one line per configuration.

    Each line is the mean over seeds at each step, its band the seeds' range (min to max); with
    ``on_plateau`` in results.csv, hollow markers are checkpoints off the loss plateau in some
    seed, and the steps on the plateau in every run are shaded. Log x axis (symlog, so that step 0
    shows).

    Args:
        table: the results.
        scores: the transfer scores, one panel each.
        path: the PNG to write.

    Returns:
        Whether a plot was written (``trace`` and ``step`` must be numeric).
    """
    if not (table.is_numeric("trace") and table.is_numeric("step")):
        return False
    columns = [c for c in (loss_column(table), "trace", *scores) if c]
    plateau = table.flags(PLATEAU_COLUMN) == 1 if plateau_known(table) else None
    figure, panels = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    for index, rows in enumerate(table.groups(CONFIGURATION_COLUMNS)):
        label = _configuration_label(table, rows[0], label_columns(table))
        for panel, column in zip(panels.flat, columns, strict=True):
            _seed_band(panel, table, rows, column, {"color": f"C{index % 10}", "label": label}, plateau)
    shaded = _plateau_span(table, plateau)
    for panel, column in zip(panels.flat, columns, strict=True):
        if shaded is not None:
            panel.axvspan(*shaded, color="0.85", zorder=0, linewidth=0)
        # symlog: logarithmic beyond step 1 yet able to show the initialisation at step 0.
        panel.set_xscale("symlog", linthresh=1)
        panel.set(xlabel="pretraining step", title=column)
    panels.flat[0].legend(fontsize="x-small")
    num_seeds = len([g for g in table.groups(["seed"]) if table.text("seed")[g[0]]])
    caption = f"mean over {num_seeds} seeds; band: their range" if num_seeds > 1 else "one seed"
    caption += "; hollow: off the loss plateau" if plateau is not None else ""
    caption += "; shaded: steps on the plateau in every run" if shaded is not None else ""
    figure.suptitle(caption, fontsize="small")
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)
    return True


def plot_transfer_vs_trace_by_loss(table: ResultsTable, score: str, path: pathlib.Path) -> bool:
    """Transfer against the trace, coloured by the loss: checkpoints at matched loss side by side.

    Args:
        table: the results.
        score: the transfer score on the y axis.
        path: the PNG to write.

    Returns:
        Whether a plot was written (``trace``, ``score`` and a loss column must be numeric).
    """
    loss = loss_column(table)
    if loss is None or not (table.is_numeric("trace") and table.is_numeric(score)):
        return False
    x, y, colour = table.values("trace"), table.values(score), table.values(loss)
    present = np.isfinite(x) & np.isfinite(y) & np.isfinite(colour)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    points = axes.scatter(x[present], y[present], c=colour[present], cmap="viridis", s=24)
    figure.colorbar(points, ax=axes, label=loss)
    axes.set(xlabel="trace", ylabel=score, title=f"{score} vs trace; colour: {loss}")
    figure.tight_layout()
    save_png(figure, path)
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
    figure, panels = plt.subplots(grid_rows, columns, figsize=(4 * columns, 3.3 * grid_rows), squeeze=False)
    y = table.values(score)
    for panel, statistic in zip(panels.flat, statistics, strict=False):
        x = table.values(statistic)
        present = np.isfinite(x) & np.isfinite(y)
        xs, ys = x[present], y[present]
        panel.scatter(xs, ys, s=18)
        tau = math.nan
        if len(xs) >= MIN_ROWS and np.ptp(xs) > 0:
            tau = float(kendall_tau(xs, ys))
            # The trend is fitted to the ranks (what tau measures) and drawn back in data units
            # through the score's quantiles, so it is monotone and stays within the data.
            x_ranks, y_ranks = stats.rankdata(xs), stats.rankdata(ys)
            slope, intercept, _, _ = stats.theilslopes(y_ranks, x_ranks)
            order = np.argsort(xs)
            trend = np.interp(intercept + slope * x_ranks[order], np.sort(y_ranks), np.sort(ys))
            panel.plot(xs[order], trend, color="C3", label="Theil-Sen fit of ranks")
        panel.set(xlabel=statistic, ylabel=score, title=f"pooled τ = {format_number(tau)}")
    for panel in panels.flat[len(statistics) :]:
        panel.set_visible(False)
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)
    return True


def load_density(path: str | os.PathLike[str], grid_size: int = 400) -> tuple[np.ndarray, np.ndarray]:
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
    sigma = 0.01 * span  # The measurement stage's DENSITY_RESOLUTION (its negative mass's margin).
    grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, grid_size)
    pdf = weights @ stats.norm.pdf(grid[None, :], loc=nodes[:, None], scale=sigma)
    return grid, pdf


def save_png(figure: matplotlib.figure.Figure, path: str | os.PathLike[str]) -> None:
    """Writes `figure` at 110 dpi as a PNG of 256 colours: the grids of scatter panels come to about
    a third of their full-colour size (0.34 instead of 0.89 MB), and a study's figures are committed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _first_and_last(table: ResultsTable, rows: np.ndarray) -> tuple[int, int] | None:
    """A run's first and last checkpoints on the loss plateau (``on_plateau``), or of the run
    when results.csv does not say which are on it; None with fewer than two."""
    step = table.values("step")
    rows = rows[np.isfinite(step[rows])]
    if plateau_known(table):
        rows = rows[table.flags(PLATEAU_COLUMN)[rows] == 1]
    if len(rows) < 2:
        return None
    return int(rows[np.argmin(step[rows])]), int(rows[np.argmax(step[rows])])


def plot_densities(
    table: ResultsTable, workdir: pathlib.Path, pattern: str, plots_dir: pathlib.Path
) -> tuple[list[pathlib.Path], list[str]]:
    """Overlays the spectral densities of the first and last plateau checkpoints, per configuration.

    One figure per configuration: for each seed, the density at its run's first checkpoint on the
    loss plateau (blue) and at its last (red), or the run's first and last checkpoints when
    results.csv has no ``on_plateau`` column. Does the spectrum change along the plateau, the same
    way in every seed?

    Args:
        table: the results.
        workdir: density paths are relative to it.
        pattern: a ``str.format`` pattern filled with the row's cells, e.g.
            :data:`experiments.analysis.markdown.DEFAULT_DENSITY_PATTERN`, used when results.csv
            has no ``density_file`` column (the study writes one: each checkpoint's density file,
            relative to the workdir); runs whose files are absent are skipped.
        plots_dir: where ``density_<configuration>.png`` files go.

    Returns:
        ``(written, notes)``: the PNGs (none when no density file exists), and for each
        configuration measured at several steps that got none, a line saying why: no run with two
        checkpoints on the plateau, or no density files.
    """
    if not table.is_numeric("step"):
        return [], []
    written, notes = [], []
    step = table.values("step")
    for configuration in table.groups(CONFIGURATION_COLUMNS):
        curves = []  # (first?, path)
        pairs = 0  # Runs with two checkpoints to compare.
        for rows in table.groups(RUN_COLUMNS):
            pair = _first_and_last(table, np.intersect1d(rows, configuration))
            if pair is None:
                continue
            pairs += 1
            if DENSITY_COLUMN in table.columns:  # The study's own record of each file.
                names = [table.text(DENSITY_COLUMN)[r] for r in pair]
                paths = [workdir / name for name in names if name]
            else:
                try:
                    cells = [{n: table.text(n)[r] for n in table.columns} for r in pair]
                    paths = [workdir / pattern.format(**c) for c in cells]
                except KeyError:  # The pattern names a column this table lacks.
                    return [], []
            if len(paths) == 2 and all(p.exists() for p in paths):
                curves += list(zip((True, False), paths, strict=True))
        label = _configuration_label(table, int(configuration[0]), CONFIGURATION_COLUMNS)
        if not curves:
            if len(np.unique(step[configuration][np.isfinite(step[configuration])])) > 1:
                why = (
                    "no run of it has two checkpoints on the loss plateau"
                    if not pairs and plateau_known(table)
                    else "its spectral density files are absent"
                )
                notes.append(f"No spectral density plot for {label}: {why}.")
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        labelled = set()
        for first, density_path in curves:
            grid, pdf = load_density(density_path)
            which = "first" if first else "last"
            name = f"{which} plateau checkpoint" if plateau_known(table) else f"{which} checkpoint"
            axes.plot(
                grid, np.maximum(pdf, 1e-12), color="tab:blue" if first else "tab:red", alpha=0.7,
                linewidth=1.2, label=None if which in labelled else f"{name} (one line per seed)",
            )
            labelled.add(which)
        axes.set_yscale("log")
        axes.set(xlabel="eigenvalue", ylabel="density", title=f"Hessian spectrum: {label}")
        axes.legend()
        figure.tight_layout()
        path = plots_dir / f"density_{_file_name(label)}.png"
        save_png(figure, path)
        plt.close(figure)
        written.append(path)
    return written, notes
