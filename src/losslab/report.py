"""`losslab-report <sweep dir>`: one row per config of a sweep, mean ± std over seeds, best row marked,
runs that did not finish listed, and comparison plots; written as report.csv, report.md and PNGs in the sweep dir.

It reads only the job dirs (`.hydra/overrides.yaml`, `summary.json`, `metrics.csv`), so it works on a sweep that
is still running. A config is the set of overrides that vary across the sweep's jobs, seed excluded. A config's
completed and early_stopped runs are aggregated; diverged, failed, interrupted and unfinished runs (no summary.json
yet) are listed, never averaged in.

Spread is the sample standard deviation (ddof=1) over seeds, empty (– in report.md) when n = 1. The best row has
the best mean of the metric the runs monitored (summary.json's `monitor`, from trainer.monitor and
trainer.monitor_mode), shown first; with `--metrics`, or for runs that record no monitor, the highest mean of the
first metric, or the lowest when that metric is lower-is-better: a name ending in loss, nll, ece or brier. Of equal
rows, the first in job order.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from losslab.errors import UserError
from losslab.fileio import atomic_write
from losslab.job_dirs import job_dirs
from losslab.rundir import CALIBRATION

PROG = "losslab-report"
TRAINED_TO_END = ("completed", "early_stopped")  # the statuses whose runs are averaged (a diverged run is listed)
DEFAULT_METRICS = ("val/acc", "test/acc", "test/nll")  # the NLL compares across losses, test/loss does not
DEFAULT_IF_PRESENT = ("val/ece",)
LOWER_IS_BETTER = ("loss", "nll", "ece", "brier")
CURVE_METRICS = ("val/loss", "val/acc")
WEIGHT_NORM = "weights/sq_norm"
LOG_SCALE_KEYS = ("lr", "weight_decay", "l2", "eps")
CALIBRATION_PREFIXES = ("calibration/", "calibrated/")  # the metrics of eval/calibration.json a report reads
SUMMARY_NOTES = (("error", "{}"), ("diverged_at_step", "diverged at step {}"), ("ended", "{}"),
                 ("resume", "resume: {}"))


@dataclass
class Run:
    """One job dir of the sweep, as far as it got."""

    job: str
    overrides: dict[str, str] | None  # None when .hydra/overrides.yaml is missing or unreadable
    status: str  # summary.json's status; "unfinished" without one
    summary: dict
    note: str  # why it is not aggregated, where known

    @property
    def aggregated(self) -> bool:
        return self.status in TRAINED_TO_END and self.overrides is not None

    @property
    def seed(self) -> int | str | None:
        return self.summary.get("seed", (self.overrides or {}).get("seed"))

    def value(self, metric: str) -> float | None:
        """The metric from summary.json's `final`, else a top-level number of summary.json (e.g. wall_s)."""
        final = self.summary.get("final")
        for source in (final if isinstance(final, dict) else {}, self.summary):
            value = source.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None


@dataclass
class Config:
    """The values of the varying overrides (None where a job does not set one) and the runs aggregated."""

    values: dict[str, str | None]
    runs: list[Run] = field(default_factory=list)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "all jobs"


@dataclass
class Report:
    """What `write_report` wrote, as plain data. `rows`: one dict per config with its values of `keys`, n,
    `<metric> mean`, `<metric> std`, best, seeds, jobs and counts (runs that have each metric).
    `not_aggregated`: one dict per run left out, with job, status, overrides (text), values, seed and note."""

    sweep_dir: Path
    keys: list[str]
    metrics: list[str]
    best_by: tuple[str, str]  # the metric that picks the best row, and "min" or "max"
    monitored: bool  # best_by is the runs' trainer.monitor (not the first metric)
    rows: list[dict]
    not_aggregated: list[dict]
    files: list[Path]

    @property
    def best(self) -> dict | None:
        return next((row for row in self.rows if row["best"]), None)


def write_report(sweep_dir: Path, metrics: list[str] | None = None) -> Report:
    """Write report.csv, report.md and the plots into `sweep_dir` and return what they hold."""
    sweep_dir = Path(sweep_dir)
    runs = read_runs(sweep_dir)
    keys = varying_keys(runs)
    configs = group_by_config(runs, keys)
    monitor = None if metrics else monitor_of(runs)
    metrics = choose_metrics(runs, metrics, monitor)
    best_by = monitor or (metrics[0], "min" if lower_is_better(metrics[0]) else "max")
    rows = [config_row(config, metrics) for config in configs]
    mark_best(rows, *best_by)
    not_aggregated = [run_row(run) for run in runs if not run.aggregated]
    report = Report(sweep_dir, keys, metrics, best_by, monitor is not None, rows, not_aggregated, files=[])

    report.files += plot_curves(sweep_dir, configs, runs)
    report.files += plot_against_parameters(sweep_dir, configs, keys, metrics)
    atomic_write(sweep_dir / "report.csv", lambda tmp: tmp.write_text(csv_text(report)))
    atomic_write(sweep_dir / "report.md", lambda tmp: tmp.write_text(markdown(report)))
    report.files += [sweep_dir / "report.csv", sweep_dir / "report.md"]
    return report


# ---- reading the job dirs


def read_runs(sweep_dir: Path) -> list[Run]:
    if not sweep_dir.exists():
        raise UserError(f"{sweep_dir} does not exist; pass the sweep dir of a `losslab-train -m` run.")
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory; pass the sweep dir of a `losslab-train -m` run.")
    jobs = job_dirs(sweep_dir)
    if not jobs:
        hint = " (it looks like a single run's dir)" if (sweep_dir / "summary.json").exists() else ""
        raise UserError(f"{sweep_dir} has no job folders (0_..., 1_..., named by job number){hint}; pass the sweep "
                        "dir of a `losslab-train -m` run, e.g. outputs/<name>/multirun/<timestamp>.")
    return [read_run(job) for job in jobs]


def read_run(job_dir: Path) -> Run:
    overrides = read_overrides(job_dir / ".hydra" / "overrides.yaml")
    status, summary, note = status_of(job_dir / "summary.json")
    add_calibration(summary, job_dir / CALIBRATION)
    if overrides is None:
        note = "; ".join(filter(None, ["no readable .hydra/overrides.yaml", note]))
    return Run(job_dir.name, overrides, status, summary, note)


def read_overrides(path: Path) -> dict[str, str] | None:
    """`key=value` task overrides by key (`+`/`~` prefixes dropped), or None when the file cannot be read."""
    try:
        items = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(items, list):
        return None
    pairs = [str(item).split("=", 1) for item in items]
    return {pair[0].lstrip("+~"): pair[1] if len(pair) == 2 else "" for pair in pairs}


def status_of(path: Path) -> tuple[str, dict, str]:
    """(status, summary, note: the error, where it diverged, how to resume); status "unfinished" without one."""
    if not path.exists():
        return "unfinished", {}, ""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return "unreadable", {}, f"summary.json: {e}"
    if not isinstance(summary, dict):
        return "unreadable", {}, "summary.json does not hold an object"
    note = "; ".join(template.format(summary[key]) for key, template in SUMMARY_NOTES if key in summary)
    return str(summary.get("status", "unknown")), summary, note


def add_calibration(summary: dict, path: Path) -> None:
    """The numbers `losslab-eval --calibrate` wrote to `path` under CALIBRATION_PREFIXES (e.g.
    calibration/temperature, calibrated/test/nll), added to summary.json's final, so --metrics can choose them;
    nothing when the run has no final metrics or no readable calibration file."""
    final = summary.get("final")
    if not isinstance(final, dict) or not path.is_file():
        return
    try:
        calibration = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(calibration, dict):
        final.update({key: value for key, value in calibration.items() if key.startswith(CALIBRATION_PREFIXES)
                      and isinstance(value, (int, float)) and not isinstance(value, bool)})


def read_curves(job_dir: Path) -> list[dict[str, float]]:
    """The evaluation rows of metrics.csv without the final one (the row with test metrics); a last line without
    its newline is still being written and is ignored."""
    try:
        lines = (job_dir / "metrics.csv").read_text().split("\n")[:-1]
    except OSError:
        return []
    rows = [{k: to_float(v) for k, v in row.items() if k is not None} for row in csv.DictReader(lines)]
    return [row for row in rows if not any(v is not None for k, v in row.items() if k.startswith("test/"))]


def to_float(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ---- aggregating


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between jobs (or that some jobs lack), seed excluded, in command-line order."""
    known = [run.overrides for run in runs if run.overrides is not None]
    keys = dict.fromkeys(key for overrides in known for key in overrides)
    return [key for key in keys if key != "seed" and len({overrides.get(key) for overrides in known}) > 1]


def group_by_config(runs: list[Run], keys: list[str]) -> list[Config]:
    """Configs in job order; a config with no run trained to its end is kept, with no runs aggregated."""
    configs: dict[tuple, Config] = {}
    for run in runs:
        if run.overrides is None:
            continue
        values = {key: run.overrides.get(key) for key in keys}
        config = configs.setdefault(tuple(values.values()), Config(values))
        if run.aggregated:
            config.runs.append(run)
    return list(configs.values())


def monitor_of(runs: list[Run]) -> tuple[str, str] | None:
    """(metric, "min" or "max") of summary.json's `monitor`, which every run of a sweep shares; None when the
    aggregated runs record none (runs from before trainer.monitor)."""
    for run in runs:
        monitor = run.summary.get("monitor")
        if run.aggregated and isinstance(monitor, dict) and monitor.get("mode") in ("min", "max"):
            return str(monitor["metric"]), monitor["mode"]
    return None


def choose_metrics(runs: list[Run], metrics: list[str] | None, monitor: tuple[str, str] | None) -> list[str]:
    """`metrics` as given, else the monitored metric and the defaults."""
    available = {key for run in runs if run.aggregated for key in (run.summary.get("final") or {})}
    if not metrics:
        first = [monitor[0]] if monitor else []
        return list(dict.fromkeys([*first, *DEFAULT_METRICS, *(m for m in DEFAULT_IF_PRESENT if m in available)]))
    if available:
        unknown = [m for m in metrics if not any(run.value(m) is not None for run in runs if run.aggregated)]
        if unknown:
            raise UserError(f"No completed or early_stopped run of the sweep has {', '.join(unknown)} in its "
                            f"summary.json; choose from {', '.join(sorted(available))}.")
    return list(metrics)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std None for one value, nan when a value is not finite."""
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    std = statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan
    return statistics.fmean(values), std


def config_row(config: Config, metrics: list[str]) -> dict:
    row = {**config.values, "n": len(config.runs)}
    counts = {}
    for metric in metrics:
        values = [v for run in config.runs if (v := run.value(metric)) is not None]
        row[f"{metric} mean"], row[f"{metric} std"] = mean_std(values)
        counts[metric] = len(values)
    return {**row, "best": False, "seeds": [run.seed for run in config.runs],
            "jobs": [run.job for run in config.runs], "counts": counts}


def lower_is_better(metric: str) -> bool:
    return metric.endswith(LOWER_IS_BETTER)


def mark_best(rows: list[dict], metric: str, mode: str) -> None:
    """Marks the row with the lowest (mode "min") or highest ("max") finite mean of `metric` (the first of equals),
    if any row has one."""
    sign = -1 if mode == "min" else 1
    scored = [row for row in rows if row[f"{metric} mean"] is not None and not math.isnan(row[f"{metric} mean"])]
    if scored:
        max(scored, key=lambda row: sign * row[f"{metric} mean"])["best"] = True


def run_row(run: Run) -> dict:
    overrides = " ".join(f"{k}={v}" for k, v in (run.overrides or {}).items())
    return {"job": run.job, "status": run.status, "overrides": overrides, "note": run.note,
            "values": run.overrides or {}, "seed": run.seed}


# ---- report.csv and report.md


def csv_text(report: Report) -> str:
    """Config rows (status "aggregate") then one row per run not aggregated, with its own status and job."""
    stats = [f"{m} {s}" for m in report.metrics for s in ("mean", "std")]
    columns = [*report.keys, "status", "n", *stats, "best", "seeds", "jobs", "note"]
    records = [{**row, "status": "aggregate", "best": int(row["best"])} for row in report.rows]
    records += [{**run["values"], "status": run["status"], "seeds": [run["seed"]], "jobs": [run["job"]],
                 "note": run["note"]} for run in report.not_aggregated]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([csv_cell(record.get(column)) for column in columns])
    return out.getvalue()


def csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join("" if v is None else str(v) for v in value)
    return str(value)


def markdown(report: Report) -> str:
    metric, mode = report.best_by
    direction = "lowest" if mode == "min" else "highest"
    why = ("the runs' trainer.monitor" if report.monitored
           else f"lower is better for metrics ending in {', '.join(LOWER_IS_BETTER)}")
    n_aggregated = sum(row["n"] for row in report.rows)
    lines = [
        "# Sweep report",
        "",
        f"`{report.sweep_dir}`: {n_aggregated + len(report.not_aggregated)} jobs, {n_aggregated} aggregated "
        f"(completed or early_stopped), {len(report.not_aggregated)} not aggregated (listed below).",
        "",
        "One row per config (the overrides that vary across the jobs, seed excluded). Each cell is the mean ± "
        "sample std (ddof=1) over the config's aggregated runs; – when n = 1, (n=k) when only k of them have the "
        f"metric. **best**: {direction} mean {metric} ({why}; of equals, the first).",
        "",
        table([*report.keys, "n", *report.metrics, "best"],
              [[*(row[k] for k in report.keys), row["n"], *(stat_cell(row, m) for m in report.metrics),
                "**best**" if row["best"] else ""] for row in report.rows]),
        *best_line(report),
        "",
        "## Runs not aggregated",
        "",
    ]
    if report.not_aggregated:
        lines.append(table(["job", "status", "overrides", "note"],
                           [[run["job"], run["status"], run["overrides"], run["note"]]
                            for run in report.not_aggregated]))
        lines += continue_line(report)
    else:
        lines.append("None: every job completed or stopped early.")
    plots = [path for path in report.files if path.suffix == ".png"]
    if plots:
        lines += ["", "## Plots", "", *(f"![{path.stem}]({path.name})" for path in plots)]
    return "\n".join(lines) + "\n"


def continue_line(report: Report) -> list[str]:
    """The command that continues the jobs left failed, interrupted or unfinished (a diverged run is a result)."""
    from losslab.sweep import LEFT, continue_command

    left = [run for run in report.not_aggregated if run["status"] in LEFT]
    if not left:
        return []
    return ["", f"{len(left)} of the jobs did not finish. This command continues them (from their last checkpoint "
                f"where they have one) and skips the finished ones:", "", "```bash",
            continue_command(report.sweep_dir), "```"]


def best_line(report: Report) -> list[str]:
    """The best row's config and run dirs (in the sweep dir), as a paragraph after the table."""
    best = report.best
    if best is None:
        return []
    config = " ".join(f"{key}={best[key]}" for key in report.keys) or "all jobs"
    return ["", f"**best**: {config}; run dirs: " + ", ".join(f"`{job}/`" for job in best["jobs"]) + "."]


def stat_cell(row: dict, metric: str) -> str:
    mean, std, count = row[f"{metric} mean"], row[f"{metric} std"], row["counts"][metric]
    if mean is None:
        return ""
    text = f"{mean:.4g} ± " + ("–" if std is None else f"{std:.2g}")
    return text + (f" (n={count})" if count < row["n"] else "")


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


# ---- plots


def new_figure(n_axes: int, columns: int = 3):
    """An Agg figure with `n_axes` axes, at most `columns` to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = math.ceil(n_axes / columns), min(n_axes, columns)
    fig = Figure(figsize=(4.5 * n_cols + 2, 3.5 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_axes:]:
        ax.set_axis_off()
    return fig, axes[:n_axes]


def save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def plot_curves(sweep_dir: Path, configs: list[Config], runs: list[Run]) -> list[Path]:
    """val/loss and val/acc against step, one line per run coloured by config; dashed: not aggregated."""
    index_of = {tuple(config.values.items()): i for i, config in enumerate(configs)}
    keys = list(configs[0].values) if configs else []
    curves = [(run, read_curves(sweep_dir / run.job)) for run in runs if run.overrides is not None]
    curves = [(run, rows) for run, rows in curves if rows]
    if not curves:
        return []
    from matplotlib import colormaps

    colors = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    fig, axes = new_figure(len(CURVE_METRICS))
    labelled = set()
    for run, rows in curves:
        index = index_of[tuple((key, run.overrides.get(key)) for key in keys)]
        for ax, metric in zip(axes, CURVE_METRICS):
            points = [(row["step"], row[metric]) for row in rows if finite(row.get("step")) and finite(row.get(metric))]
            if not points:
                continue
            label = None if index in labelled else configs[index].label()
            labelled.add(index)
            ax.plot(*zip(*points), color=colors(index % colors.N), label=label,
                    linestyle="-" if run.aggregated else "--", marker="." if len(points) < 20 else None)
    dashed = " (dashed: not aggregated)" if any(not run.aggregated for run, _ in curves) else ""
    for ax, metric in zip(axes, CURVE_METRICS):
        ax.set(xlabel="step", ylabel=metric, title=metric + dashed)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return [save(fig, sweep_dir / "val_curves.png")]


def plot_against_parameters(sweep_dir: Path, configs: list[Config], keys: list[str], metrics: list[str]) -> list[Path]:
    """Per numeric swept parameter: each metric (and weights/sq_norm) against it, mean ± std over seeds, one line
    per combination of the other swept values."""
    aggregated = [config for config in configs if config.runs]
    plotted = list(metrics)
    if WEIGHT_NORM not in plotted and any(run.value(WEIGHT_NORM) is not None for c in aggregated for run in c.runs):
        plotted.append(WEIGHT_NORM)
    numeric = [key for key in keys if all(to_float(config.values[key]) is not None for config in configs)]
    return [save(parameter_figure(configs, key, plotted), sweep_dir / ("vs_" + re.sub(r"[^\w.=-]", "_", key) + ".png"))
            for key in (numeric if aggregated else [])]


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
        if log_axis(key, xs):
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")
        ax.grid(alpha=0.3)
    if len(lines) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


def mean_point(config: Config, key: str, metric: str) -> tuple[float, float, float] | None:
    """(value of `key`, mean, std or 0) of `metric` over the config's runs; None when no run has the metric."""
    mean, std = mean_std([v for run in config.runs if (v := run.value(metric)) is not None])
    return None if mean is None else (float(config.values[key]), mean, std or 0.0)


def log_axis(key: str, xs: list[float]) -> bool:
    """Whether `key`'s values `xs` go on a log axis: all positive, and either a scale parameter (a learning rate,
    weight decay, L2 coefficient or epsilon, swept by factors however few) or spanning at least two decades."""
    if min(xs) <= 0:
        return False
    return key.rsplit(".", 1)[-1] in LOG_SCALE_KEYS or max(xs) >= 100 * min(xs)


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# ---- console entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir of a `losslab-train -m` run")
    parser.add_argument("--metrics", nargs="+", metavar="TAG",
                        help="keys of summary.json's final, e.g. val/acc test/acc, or after `losslab-eval "
                             "--calibrate` calibrated/test/nll calibrated/test/ece calibrated/test/brier "
                             "calibration/temperature (default: the metric the runs "
                             f"monitored, then {' '.join(DEFAULT_METRICS)}, and {' '.join(DEFAULT_IF_PRESENT)} when "
                             "logged). The best row is the best mean of the runs' trainer.monitor (min or max, as "
                             "trainer.monitor_mode says); with --metrics, or for runs that record no monitor, of the "
                             "first metric: the lowest for a name ending in loss, nll, ece or brier, else the highest")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.metrics)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # as cli._fail; importing losslab.cli would import torch (seconds) just to print one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print((report.sweep_dir / "report.md").read_text(), end="")
