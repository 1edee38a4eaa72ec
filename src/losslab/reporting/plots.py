"""A sweep report's figures: validation curves, learned loss values, and each metric against each swept number.

Constrained layout places each figure's axes with room for their titles, labels and tick labels, and the legend
right of them; the figures are laid out at the PNG's resolution, so what the layout measures is what is saved."""

from __future__ import annotations

import functools
import math
import re
import statistics
from pathlib import Path

from losslab.fileio import atomic_write
from losslab.reporting.statistics import mean_std
from losslab.reporting.sweep_data import LEARNED, WEIGHT_NORM, Config, RunResult, finite, read_curves, to_float

CURVE_METRICS = ("val/loss", "val/acc")  # the curves of runs that record no trainer.monitor


CURVES_FIGURE = "val_curves.png"


LOG_SCALE_KEYS = ("lr", "weight_decay", "l2", "eps")


LEARNED_FIGURE = "learned_values.png"


DPI = 80


PANEL_INCHES = (4.5, 3.5)  # width, height of one axes with its titles and labels


LEGEND_HEIGHT_SHARE = 0.95  # of the figure's height; the rest is constrained layout's padding


NO_CONFIG = "its .hydra/overrides.yaml is missing or unreadable, so its config is unknown"


def new_figure(n_axes: int, columns: int = 3):
    """An Agg figure with `n_axes` axes, at most `columns` to a row, PANEL_INCHES each, placed by constrained
    layout. Tick labels have no offset (+8.39e-1 above the axis), so each shows the value it marks."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = math.ceil(n_axes / columns), min(n_axes, columns)
    fig = Figure(figsize=(PANEL_INCHES[0] * n_cols, PANEL_INCHES[1] * n_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    with matplotlib.rc_context({"axes.formatter.useoffset": False}):
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_axes:]:
        ax.set_axis_off()
    return fig, axes[:n_axes]


def legend_outside(fig, handles: list, labels: list[str], title: str | None = None) -> None:
    """The legend right of the axes, in as many columns as the figure's height needs; the figure widens by the
    legend's measured width, so that the axes keep theirs."""
    if not labels:
        return
    place = functools.partial(fig.legend, handles, labels, loc="outside right upper", fontsize="small",
                              title=title, title_fontsize="small", frameon=False)
    renderer = fig.canvas.get_renderer()
    legend = place()
    columns = math.ceil(legend.get_window_extent(renderer).height / (LEGEND_HEIGHT_SHARE * fig.bbox.height))
    if columns > 1:
        legend.remove()
        legend = place(ncols=columns)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + legend.get_window_extent(renderer).width / fig.dpi, height)


def figure_legend_entries(fig) -> tuple[list, list[str]]:
    """Every labelled artist of the figure's axes, each label once."""
    entries = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def write_figures(sweep_dir: Path, figures: dict[str, object]) -> list[Path]:
    """Each figure saved as its file name in `sweep_dir`."""
    return [save(fig, sweep_dir / name) for name, fig in figures.items()]


def report_figures(sweep_dir: Path, configs: list[Config], runs: list[RunResult], keys: list[str],
                   metrics: list[str], learned: list[str], monitored: str | None = None
                   ) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """The report's figures by file name, and (job dir, why) for each job whose curve is missing from
    CURVES_FIGURE. `monitored`: trainer.monitor's metric (comparable across losses, where each loss's own val/loss
    is not), curved beside val/acc; without one, val/loss."""
    curve_metrics = list(dict.fromkeys([monitored or CURVE_METRICS[0], *CURVE_METRICS[1:]]))
    curves, missing = run_curves(sweep_dir, runs, curve_metrics)
    figures = {CURVES_FIGURE: curves_figure(configs, curves, curve_metrics)} if curves else {}
    figures |= parameter_figures(configs, keys, metrics)
    if (learned_trajectories := learned_figure(sweep_dir, configs, learned)) is not None:
        figures[LEARNED_FIGURE] = learned_trajectories
    return figures, missing


def run_curves(sweep_dir: Path, runs: list[RunResult], metrics: list[str]
               ) -> tuple[list[tuple[RunResult, list[dict]]], list[tuple[str, str]]]:
    """(run, its metrics.csv rows) of each job with a point of `metrics`, and (job dir, why) of each without."""
    curves, missing = [], []
    for run in runs:
        rows = read_curves(sweep_dir / run.job)
        why = NO_CONFIG if run.overrides is None else why_no_curve(sweep_dir / run.job, rows, metrics)
        if why:
            missing.append((run.job, why))
        else:
            curves.append((run, rows))
    return curves, missing


def why_no_curve(job_dir: Path, rows: list[dict], metrics: list[str]) -> str | None:
    """Why a job's curve rows (`read_curves`) give no finite point of any of `metrics`; None where they give one."""
    if any(finite(row.get("step")) and finite(row.get(metric)) for row in rows for metric in metrics):
        return None
    if rows:
        return f"its metrics.csv has no finite {' or '.join(metrics)}"
    try:
        text = (job_dir / "metrics.csv").read_text()
    except FileNotFoundError:
        return "it has no metrics.csv"
    except OSError as e:
        return f"its metrics.csv cannot be read ({e.strerror})"
    if not text.strip():
        return "its metrics.csv is empty"
    if text.count("\n") < 2:  # the header and a complete row
        return "its metrics.csv has no rows"
    return "its metrics.csv has no evaluation before the final one"


def curves_figure(configs: list[Config], curves: list[tuple[RunResult, list[dict]]], metrics: list[str]):
    """`metrics` against step, one line per run coloured by its config; dashed: not aggregated."""
    index_of = {tuple(config.values.items()): i for i, config in enumerate(configs)}
    keys = list(configs[0].values)
    colors = config_colors(len(configs))
    fig, axes = new_figure(len(metrics))
    labelled = set()
    for run, rows in curves:
        index = index_of[tuple((key, run.overrides.get(key)) for key in keys)]
        for ax, metric in zip(axes, metrics):
            points = [(row["step"], row[metric]) for row in rows if finite(row.get("step")) and finite(row.get(metric))]
            if not points:
                continue
            label = None if index in labelled else configs[index].label()
            labelled.add(index)
            ax.plot(*zip(*points), color=colors(index % colors.N), label=label,
                    linestyle="-" if run.aggregated else "--", marker="." if len(points) < 20 else None)
    dashed = " (dashed: not aggregated)" if any(not run.aggregated for run, _ in curves) else ""
    for ax, metric in zip(axes, metrics):
        ax.set(xlabel="step", ylabel=metric)
        ax.set_title(metric + dashed)
        ax.grid(alpha=0.3)
    legend_outside(fig, *figure_legend_entries(fig))
    return fig


def config_colors(n_configs: int):
    """A colormap of at least `n_configs` colours where it can (tab20 past ten configs; beyond 20 they repeat)."""
    from matplotlib import colormaps

    return colormaps["tab10" if n_configs <= 10 else "tab20"]


def learned_curves(sweep_dir: Path, config: Config) -> list[dict[str, list[tuple[float, float]]]]:
    """Per aggregated run of `config`: each loss/* value's (step, value) at the evaluations of its metrics.csv."""
    curves = []
    for run in config.runs:
        rows = read_curves(sweep_dir / run.job)
        keys = dict.fromkeys(key for row in rows for key in row if key.startswith(LEARNED))
        points = {key: [(row["step"], row[key]) for row in rows if finite(row.get("step")) and finite(row.get(key))]
                  for key in keys}
        curves.append({key: line for key, line in points.items() if line})
    return curves


def mean_trajectory(lines: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """(step, mean of the runs' values at that step) for every step any run has, in order. A config's runs
    evaluate at the same steps; past the end of a run that stopped early, the mean is the other runs'."""
    at: dict[float, list[float]] = {}
    for line in lines:
        for step, value in line:
            at.setdefault(step, []).append(value)
    return [(step, statistics.fmean(values)) for step, values in sorted(at.items())]


def learned_figure(sweep_dir: Path, configs: list[Config], learned: list[str]):
    """One panel per `learned` loss/* value (losslab.reporting.sweep_data.learned_keys) against step, a thin line
    per aggregated run and a thick one for the config's mean over seeds (`mean_trajectory`), coloured by config;
    None when no run logged one."""
    curves = [learned_curves(sweep_dir, config) for config in configs]
    keys = [key for key in dict.fromkeys(key for runs in curves for run in runs for key in run) if key in learned]
    if not keys:
        return None
    colors = config_colors(len(configs))
    fig, axes = new_figure(len(keys), columns=2)
    for index, (config, runs) in enumerate(zip(configs, curves)):
        color, label = colors(index % colors.N), config.label()
        for ax, key in zip(axes, keys):
            lines = [run[key] for run in runs if key in run]
            for line in lines:
                ax.plot(*zip(*line), color=color, linewidth=0.8, alpha=0.4)
            if lines:
                ax.plot(*zip(*mean_trajectory(lines)), color=color, linewidth=2.5, label=label)
                label = None  # one legend entry per config
    for ax, key in zip(axes, keys):
        ax.set(xlabel="step", ylabel=key)
        ax.set_title(f"learned {key} at each evaluation")
        ax.grid(alpha=0.3)
    # the key to the lines is the legend's title: a suptitle would span the legend's column, where the legend starts
    legend_outside(fig, *figure_legend_entries(fig), title="thin: one run\nthick: mean over seeds")
    return fig


def parameter_figures(configs: list[Config], keys: list[str], metrics: list[str]) -> dict[str, object]:
    """Per numeric swept parameter, vs_<parameter>.png: each metric (and weights/sq_norm) against it, mean ± std
    over seeds, one line per combination of the other swept values."""
    aggregated = [config for config in configs if config.runs]
    plotted = list(metrics)
    if WEIGHT_NORM not in plotted and any(run.value(WEIGHT_NORM) is not None for c in aggregated for run in c.runs):
        plotted.append(WEIGHT_NORM)
    numeric = [key for key in keys if all(to_float(config.values[key]) is not None for config in configs)]
    return {"vs_" + re.sub(r"[^\w.=-]", "_", key) + ".png": parameter_figure(configs, key, plotted)
            for key in (numeric if aggregated else [])}


def parameter_figure(configs: list[Config], key: str, plotted: list[str]):
    """The figure of `plotted` metrics against `key` (a log x axis where `log_axis` says so)."""
    lines: dict[str, list[Config]] = {}
    for config in configs:
        if config.runs:
            others = " ".join(f"{k}={v}" for k, v in config.values.items() if k != key)
            lines.setdefault(others, []).append(config)
    xs = [float(config.values[key]) for config in configs]
    fig, axes = new_figure(len(plotted))
    for ax, metric in zip(axes, plotted):
        for others, line in lines.items():
            points = sorted(point for config in line if (point := mean_point(config, key, metric)))
            if points:
                ax.errorbar(*zip(*points), marker="o", capsize=3, label=others or None)
        scale = axis_scale(key, xs)
        if scale == "symlog":  # linear below the smallest positive value, so 0 has its place
            ax.set_xscale("symlog", linthresh=min(x for x in xs if x > 0))
        elif scale == "log":
            ax.set_xscale("log")
        if scale != "linear":
            ax.minorticks_off()  # the swept values are the points; unlabelled minor ticks only cost drawing time
        ax.set(xlabel=key, ylabel=metric)
        ax.set_title(f"{metric} vs {key}")
        ax.grid(alpha=0.3)
    if len(lines) > 1:
        legend_outside(fig, *axes[0].get_legend_handles_labels())
    return fig


def mean_point(config: Config, key: str, metric: str) -> tuple[float, float, float] | None:
    """(value of `key`, mean, std or 0) of `metric` over the config's runs; None when no run has the metric."""
    mean, std = mean_std([v for run in config.runs if (v := run.value(metric)) is not None])
    return None if mean is None else (float(config.values[key]), mean, std or 0.0)


def axis_scale(key: str, xs: list[float]) -> str:
    """The x axis for `key`'s values `xs`: `log` where all are positive and `key` is a scale parameter (a learning
    rate, weight decay, L2 coefficient or epsilon, swept by factors however few) or they span two decades; `symlog`
    for a scale parameter swept from 0 (trainer.l2=0,0.01,0.1); else `linear`."""
    scale_parameter = key.rsplit(".", 1)[-1] in LOG_SCALE_KEYS
    if min(xs) > 0 and (scale_parameter or max(xs) >= 100 * min(xs)):
        return "log"
    if min(xs) == 0 and scale_parameter and max(xs) > 0:
        return "symlog"
    return "linear"
