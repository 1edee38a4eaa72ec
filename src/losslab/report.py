"""`losslab-report <sweep dir>`: one row per config of a sweep, mean ± std over seeds, best row marked,
runs that did not finish listed, and comparison plots; written as report.csv, report.md and PNGs in the sweep dir.

It reads only the job dirs (`.hydra/overrides.yaml`, `summary.json`, `metrics.csv`), so it works on a sweep that
is still running. A config is the set of overrides that vary across the sweep's jobs, seed excluded. A config's
completed and early_stopped runs are aggregated; diverged, failed, interrupted and unfinished runs (no summary.json
yet) are listed, never averaged in.

Spread is the sample standard deviation (ddof=1) over seeds, empty (– in report.md) when n = 1. Beside it, the 95 %
confidence interval of the mean: mean ± t(0.975, n − 1)·s/√n (Student t, from scipy), none when n = 1 and wide at
n = 2 (t(0.975, 1) = 12.7). The best row has the best mean of the metric the runs monitored (summary.json's
`monitor`, from trainer.monitor and trainer.monitor_mode), shown first; with `--metrics`, or for runs that record no
monitor, the highest mean of the first metric, or the lowest when that metric is lower-is-better: a name ending in
loss, nll, ece or brier. Of equal rows, the first in job order.

Each config is compared with a reference config over matched seeds (see `paired_comparison`): the reference values
(`--reference loss=ce`; by default loss=ce when the sweep varies the loss and ce is one of its values, else no
comparison) pick the reference configs, and a config is compared with the one that shares most of its other swept
values. The same seed gives the same initialisation and data order in every config, so runs pair by seed; a config
lacking a seed the reference has is compared over the seeds both have, and the number of pairs is shown.

The losses with learnable coefficients and log bases (min_ent, mix_ent) log them as loss/* columns of metrics.csv:
their final values get a table (mean ± std over seeds) and their trajectories a figure, learned_values.png.
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
CONFIDENCE = 0.95  # of the intervals: the mean's, and the mean paired difference's
ALPHA = 0.05  # a paired comparison with p below it reads "better than" or "worse than"
DEFAULT_REFERENCE = {"loss": "ce"}  # where the sweep varies the loss and ce is one of its values
LEARNED = "loss/"  # the prefix of a loss's learned values in metrics.csv and summary.json's final
LEARNED_FIGURE = "learned_values.png"
COMPARED = ("pairs", "diff", "diff low", "diff high", "p", "vs reference")  # a row's comparison, per metric
NO_TEST = {0: "– with 0 pairs: no seed in common with the reference (runs pair by seed; a run without one cannot "
              "be paired).",
           1: "– with 1 pair: one difference has no spread, so no interval and no test."}


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
class Paired:
    """A metric of a config against its reference config over the seeds both have: `pairs` of them, the mean of
    the differences config − reference, its 95 % interval (low, high) and the paired t-test's two-sided p. Only
    the mean for one pair or a value not finite; low = high = mean and no p when every difference is the same."""

    pairs: int
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None


@dataclass
class Report:
    """What `write_report` wrote, as plain data. `rows`: one dict per config with its values of `keys`, n,
    `<metric> mean`, `<metric> std`, `<metric> ci low`, `<metric> ci high`, best, seeds, jobs and counts (runs
    that have each metric); then `reference` (the label of the config it is compared with, None for a reference
    config or without one) and per metric `<metric> pairs`, `diff`, `diff low`, `diff high`, `p` and
    `vs reference` (the comparison in words). `not_aggregated`: one dict per run left out, with job, status,
    overrides (text), values, seed and note. `learned_rows`: config rows of the `learned` loss/* values."""

    sweep_dir: Path
    keys: list[str]
    metrics: list[str]
    best_by: tuple[str, str]  # the metric that picks the best row, and "min" or "max"
    monitored: bool  # best_by is the runs' trainer.monitor (not the first metric)
    rows: list[dict]
    not_aggregated: list[dict]
    files: list[Path]
    reference: dict[str, str | None] = field(default_factory=dict)  # the reference values; {} for none
    learned: list[str] = field(default_factory=list)
    learned_rows: list[dict] = field(default_factory=list)

    @property
    def best(self) -> dict | None:
        return next((row for row in self.rows if row["best"]), None)


def write_report(sweep_dir: Path, metrics: list[str] | None = None,
                 reference: dict[str, str | None] | None = None) -> Report:
    """Write report.csv, report.md and the plots into `sweep_dir` and return what they hold. `reference`: the
    values that pick the reference configs (see `choose_reference`; None: the default)."""
    sweep_dir = Path(sweep_dir)
    runs = read_runs(sweep_dir)
    keys = varying_keys(runs)
    configs = group_by_config(runs, keys)
    monitor = None if metrics else monitor_of(runs)
    metrics = choose_metrics(runs, metrics, monitor)
    best_by = monitor or (metrics[0], "min" if lower_is_better(metrics[0]) else "max")
    rows = [config_row(config, metrics) for config in configs]
    mark_best(rows, *best_by)
    reference = choose_reference(configs, keys, reference)
    add_comparisons(rows, configs, metrics, reference)
    not_aggregated = [run_row(run) for run in runs if not run.aggregated]
    learned = learned_keys(runs)
    learned_rows = [config_row(config, learned) for config in configs
                    if any(run.value(key) is not None for run in config.runs for key in learned)]
    report = Report(sweep_dir, keys, metrics, best_by, monitor is not None, rows, not_aggregated, files=[],
                    reference=reference, learned=learned, learned_rows=learned_rows)

    report.files += plot_curves(sweep_dir, configs, runs)
    report.files += plot_against_parameters(sweep_dir, configs, keys, metrics)
    report.files += plot_learned(sweep_dir, configs)
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


def mean_interval(values: list[float]) -> tuple[float | None, float | None]:
    """The 95 % confidence interval of the mean, mean ± t(0.975, n − 1)·s/√n (Student t, what scipy's
    ttest_1samp gives); (None, None) for fewer than two values, (nan, nan) when a value is not finite, the mean
    twice when all values are equal."""
    if len(values) < 2:
        return None, None
    if not all(map(math.isfinite, values)):
        return math.nan, math.nan
    if min(values) == max(values):
        return values[0], values[0]
    return t_interval(statistics.fmean(values), statistics.stdev(values), len(values))


def t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    """mean ± t(0.975, n − 1)·std/√n, the Student t quantile from scipy.special (scipy.stats gives the same
    numbers but takes ~0.9 s to import, a sweep report's largest cost)."""
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2)) * std / math.sqrt(n)
    return mean - half, mean + half


def config_row(config: Config, metrics: list[str]) -> dict:
    row = {**config.values, "n": len(config.runs)}
    counts = {}
    for metric in metrics:
        values = [v for run in config.runs if (v := run.value(metric)) is not None]
        row[f"{metric} mean"], row[f"{metric} std"] = mean_std(values)
        row[f"{metric} ci low"], row[f"{metric} ci high"] = mean_interval(values)
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


# ---- comparing with a reference config over matched seeds


def choose_reference(configs: list[Config], keys: list[str],
                     given: dict[str, str | None] | None) -> dict[str, str | None]:
    """The reference values: `given` (swept keys only, matched by some config), else loss=ce where the sweep
    varies the loss and ce is one of its values, else none ({}: no comparison)."""
    if given is None:
        default = "loss" in keys and any(matches(config.values, DEFAULT_REFERENCE) for config in configs)
        return dict(DEFAULT_REFERENCE) if default else {}
    unswept = [key for key in given if key not in keys]
    if unswept:
        raise UserError(f"--reference names {', '.join(unswept)}, which the sweep does not vary; choose from "
                        f"{', '.join(keys) or 'none (every job has the same overrides but the seed)'}.")
    if not any(matches(config.values, given) for config in configs):
        seen = "; ".join(f"{key}: {', '.join(sorted({str(c.values[key]) for c in configs}))}" for key in given)
        raise UserError(f"No config of the sweep has {reference_name(given)}; its values are {seen}.")
    return dict(given)


def matches(values: dict[str, str | None], reference: dict[str, str | None]) -> bool:
    """Whether `values` has the reference values: equal as text or as numbers (0 and 0.0); a reference value of
    None matches a config that does not set the key."""
    def same(value: str | None, wanted: str | None) -> bool:
        if value is None or wanted is None:
            return value is wanted
        return value == wanted or to_float(value) is not None and to_float(value) == to_float(wanted)

    return all(same(values.get(key), wanted) for key, wanted in reference.items())


def reference_name(reference: dict[str, str | None]) -> str:
    """The reference values in words: the loss's name alone where the loss is the only key (ce), else
    key=value pairs."""
    if list(reference) == ["loss"] and reference["loss"] is not None:
        return reference["loss"]
    return " ".join(f"{key} unset" if value is None else f"{key}={value}" for key, value in reference.items())


def reference_config(config: Config, configs: list[Config], reference: dict[str, str | None]) -> Config | None:
    """The config `config` is compared with: of those that have the reference values, the one sharing most of
    its other swept values (in a loss × l2 grid, ce at the same l2), the first in job order of equals; None for a
    config that has the reference values itself, or without reference values."""
    if not reference or matches(config.values, reference):
        return None
    candidates = [other for other in configs if matches(other.values, reference)]
    others = [key for key in config.values if key not in reference]
    return max(candidates, key=lambda other: sum(other.values[key] == config.values[key] for key in others))


def by_seed(config: Config, metric: str) -> dict[str, float]:
    """`metric` of the config's runs by seed (as text); runs without a seed or without the metric are left out."""
    values: dict[str, float] = {}
    for run in config.runs:
        value = run.value(metric)
        if run.seed is not None and value is not None:
            values.setdefault(str(run.seed), value)
    return values


def paired_comparison(config: Config, reference: Config, metric: str) -> Paired:
    """`metric` of `config` against `reference` over the seeds both have, by the paired t-test (as scipy's
    ttest_rel computes it): the differences d_i = config_i − reference_i of seed i, their mean d̄, its 95 % interval
    d̄ ± t(0.975, n − 1)·s_d/√n, and the two-sided p of t = d̄/(s_d/√n) with n − 1 degrees of freedom.

    Paired, because a seed fixes the initialisation and the data order in every config: much of a run's luck is
    its seed's, shared by both runs of a pair, and the differences are free of it, where an unpaired test would
    count it as noise twice. A t-test, because a rank test cannot reject at the seed counts a sweep has:
    Wilcoxon's signed-rank test has no two-sided p below 0.05 for n ≤ 5 pairs (at best 2/2⁵ = 0.0625), however
    large and consistent the differences. The t-test assumes the differences roughly normal."""
    own, theirs = by_seed(config, metric), by_seed(reference, metric)
    seeds = [seed for seed in own if seed in theirs]
    diffs = [own[seed] - theirs[seed] for seed in seeds]
    if len(diffs) < 2 or not all(map(math.isfinite, diffs)):
        return Paired(len(diffs), statistics.fmean(diffs) if diffs else None)
    mean = statistics.fmean(diffs)
    if min(diffs) == max(diffs):  # no spread: t is 0/0 or ±∞, no test
        return Paired(len(diffs), mean, mean, mean)
    from scipy.special import stdtr

    n, std = len(diffs), statistics.stdev(diffs)
    t = mean / (std / math.sqrt(n))
    return Paired(n, mean, *t_interval(mean, std, n), float(2 * stdtr(n - 1, -abs(t))))


def verdict(paired: Paired, metric: str, name: str) -> str:
    """The comparison in words, at α = 0.05: "better than" or "worse than" `name` (by the sign of the difference
    and whether lower is better for the metric) when p < α, else "not distinguishable from" (which is no proof of
    equality); "–" without a test (fewer than two pairs, a value not finite)."""
    if paired.pairs < 2 or paired.diff is None or not math.isfinite(paired.diff):
        return "–"
    direction = "worse" if (paired.diff > 0) == lower_is_better(metric) else "better"
    if paired.p is None:
        if paired.diff == 0:
            return f"not distinguishable from {name} (identical in all {paired.pairs} pairs)"
        return f"{direction} than {name} by the same amount in all {paired.pairs} pairs (no spread: no test)"
    if paired.p >= ALPHA:
        return f"not distinguishable from {name} ({p_text(paired.p)})"
    return f"{direction} than {name} ({p_text(paired.p)})"


def p_text(p: float) -> str:
    """p to two significant digits (more where two would round it onto α), or "p < 0.001"."""
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    return f"p = {p:.4g}" if float(text) == ALPHA and p != ALPHA else f"p = {text}"


def add_comparisons(rows: list[dict], configs: list[Config], metrics: list[str],
                    reference: dict[str, str | None], name: str | None = None) -> None:
    """Adds to each config's row its comparison with its reference config (`reference_config`), per metric; the
    words name the reference `name` (default: `reference_name`)."""
    name = name or reference_name(reference)
    for row, config in zip(rows, configs):
        against = reference_config(config, configs, reference)
        row["reference"] = against.label() if against else None
        for metric in metrics:
            row.update({f"{metric} {column}": None for column in COMPARED})
            if against:
                paired = paired_comparison(config, against, metric)
                values = (paired.pairs, paired.diff, paired.low, paired.high, paired.p, verdict(paired, metric, name))
                row.update({f"{metric} {column}": value for column, value in zip(COMPARED, values)})


def learned_keys(runs: list[Run]) -> list[str]:
    """The loss/* values in the aggregated runs' summary.json `final`, in the order logged."""
    finals = [run.summary.get("final") or {} for run in runs if run.aggregated]
    return list(dict.fromkeys(key for final in finals for key in final if key.startswith(LEARNED)))


def run_row(run: Run) -> dict:
    overrides = " ".join(f"{k}={v}" for k, v in (run.overrides or {}).items())
    return {"job": run.job, "status": run.status, "overrides": overrides, "note": run.note,
            "values": run.overrides or {}, "seed": run.seed}


# ---- report.csv and report.md


def csv_text(report: Report) -> str:
    """Config rows (status "aggregate") then one row per run not aggregated, with its own status and job. A config
    row has per metric mean, std and its 95 % interval (ci low, ci high), then the reference config it is compared
    with and per metric the pairs, the mean difference, its interval (diff low, diff high), p and the words."""
    stats = [f"{m} {s}" for m in report.metrics for s in ("mean", "std", "ci low", "ci high")]
    compared = [f"{m} {s}" for m in report.metrics for s in COMPARED]
    columns = [*report.keys, "status", "n", *stats, "best", "reference", *compared, "seeds", "jobs", "note"]
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
        "sample std (ddof=1) over the config's aggregated runs [the 95 % confidence interval of the mean, Student t "
        "with n − 1 degrees of freedom]; – and no interval when n = 1 (one value has no spread), (n=k) when only k "
        f"of them have the metric. **best**: {direction} mean {metric} ({why}; of equals, the first).",
        "",
        table([*report.keys, "n", *report.metrics, "best"],
              [[*(row[k] for k in report.keys), row["n"], *(stat_cell(row, m) for m in report.metrics),
                "**best**" if row["best"] else ""] for row in report.rows]),
        *best_line(report),
        *comparison_lines(report),
        *learned_lines(report),
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
    low, high = row[f"{metric} ci low"], row[f"{metric} ci high"]
    text += "" if low is None else f" [{low:.4g}, {high:.4g}]"
    return text + (f" (n={count})" if count < row["n"] else "")


def comparison_lines(report: Report) -> list[str]:
    """The section comparing each config with its reference config: one row per config compared, a column per
    metric with the mean difference [its 95 % interval] and the words, the pairs it rests on, then why a cell is
    – where one is. Without reference values, one sentence on how to ask for them."""
    if not report.reference:
        return [] if len(report.rows) < 2 else [
            "", "No comparison between configs: the sweep does not vary the loss with ce among its values; "
                "`losslab-report <sweep dir> --reference KEY=VALUE` compares each config with the one you name."]
    name = reference_name(report.reference)
    compared = [row for row in report.rows if row["reference"]]
    lines = ["", f"## Compared with {name}", "",
             f"Each config against the config with {name} that shares its other values (the reference column), "
             "over the seeds both have (pairs; a seed is the same initialisation and data order in both): the mean "
             "difference config − reference [its 95 % interval] and the paired t-test's two-sided p. At α = 0.05 "
             "the words say better or worse (for the metric: lower is better for names ending in "
             f"{', '.join(LOWER_IS_BETTER)}), else not distinguishable, which is no proof of equality; p is not "
             "corrected for the number of comparisons.", ""]
    cells = []
    for row in compared:
        most = max(row[f"{m} pairs"] for m in report.metrics)
        cells.append([*(row[k] for k in report.keys), row["reference"], most,
                      *(comparison_cell(row, m, most) for m in report.metrics)])
    lines.append(table([*report.keys, "reference", "pairs", *report.metrics], cells))
    pairs = {row[f"{m} pairs"] for row in compared for m in report.metrics}
    notes = [NO_TEST[n] for n in sorted(pairs & NO_TEST.keys())]
    return lines + (["", *notes] if notes else [])


def comparison_cell(row: dict, metric: str, most: int) -> str:
    """The mean difference [its 95 % interval]: the words; (n=k) where fewer pairs than `most` have the metric."""
    words, diff, low, high, pairs = (row[f"{metric} {s}"] for s in ("vs reference", "diff", "diff low",
                                                                     "diff high", "pairs"))
    fewer = f" (n={pairs})" if pairs < most else ""
    if words == "–" or low is None:
        return words + fewer
    return f"{diff:+.2g} [{low:+.2g}, {high:+.2g}]: {words}{fewer}"


def learned_lines(report: Report) -> list[str]:
    """The table of the learned loss values at the end of training, per config."""
    if not report.learned_rows:
        return []
    return ["", "## Learned loss values", "",
            "The loss's coefficients and log bases at the end of training (summary.json's final, from the best "
            "weights under early stopping), mean ± sample std [95 % interval] over seeds; their trajectories over "
            f"training are in {LEARNED_FIGURE}.", "",
            table([*report.keys, "n", *report.learned],
                  [[*(row[k] for k in report.keys), row["n"], *(stat_cell(row, m) for m in report.learned)]
                   for row in report.learned_rows])]


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


# ---- plots


def new_figure(n_axes: int, columns: int = 3):
    """An Agg figure with `n_axes` axes, at most `columns` to a row, each 4.5 x 3.5 inches with its margins fixed
    (no layout engine: measuring every tick label to place the axes costs as much as drawing them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = math.ceil(n_axes / columns), min(n_axes, columns)
    width, height = 4.5 * n_cols, 3.5 * n_rows + 0.4
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.8 / height,
                        wspace=0.35, hspace=0.9 / 3.5)
    for ax in axes[n_axes:]:
        ax.set_axis_off()
    return fig, axes[:n_axes]


def legend_outside(fig, handles: list, labels: list[str]) -> None:
    """The legend right of the axes: the figure widens by the legend's width, estimated from its longest label
    at the small font size."""
    if not labels:
        return
    width, height = fig.get_size_inches()
    extra = 0.4 + 0.065 * max(map(len, labels))
    fig.set_size_inches(width + extra, height)
    params = fig.subplotpars
    fig.subplots_adjust(left=params.left * width / (width + extra), right=params.right * width / (width + extra))
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(width / (width + extra), 1 - 0.8 / height),
               fontsize="small", frameon=False)


def figure_legend_entries(fig) -> tuple[list, list[str]]:
    """Every labelled artist of the figure's axes, each label once."""
    entries = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    return path


def plot_curves(sweep_dir: Path, configs: list[Config], runs: list[Run]) -> list[Path]:
    """val/loss and val/acc against step, one line per run coloured by config; dashed: not aggregated."""
    index_of = {tuple(config.values.items()): i for i, config in enumerate(configs)}
    keys = list(configs[0].values) if configs else []
    curves = [(run, read_curves(sweep_dir / run.job)) for run in runs if run.overrides is not None]
    curves = [(run, rows) for run, rows in curves if rows]
    if not curves:
        return []
    colors = config_colors(len(configs))
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
        ax.set(xlabel="step", ylabel=metric)
        ax.set_title(metric + dashed, y=1.0)  # y given: no search for room above the ticks
        ax.grid(alpha=0.3)
    legend_outside(fig, *figure_legend_entries(fig))
    return [save(fig, sweep_dir / "val_curves.png")]


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


def plot_learned(sweep_dir: Path, configs: list[Config]) -> list[Path]:
    """learned_values.png: one panel per loss/* value against step, a thin line per aggregated run and a thick one
    for the config's mean over seeds (`mean_trajectory`), coloured by config; none when no run logged one."""
    curves = [learned_curves(sweep_dir, config) for config in configs]
    keys = list(dict.fromkeys(key for runs in curves for run in runs for key in run))
    if not keys:
        return []
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
        ax.set_title(key, y=1.0)
        ax.grid(alpha=0.3)
    fig.suptitle("Learned loss values at each evaluation (thin: one run; thick: mean over seeds)")
    legend_outside(fig, *figure_legend_entries(fig))
    return [save(fig, sweep_dir / LEARNED_FIGURE)]


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
            ax.minorticks_off()  # the swept values are the points; unlabelled minor ticks only cost drawing time
        ax.set(xlabel=key, ylabel=metric)
        ax.set_title(f"{metric} vs {key}", y=1.0)
        ax.grid(alpha=0.3)
    if len(lines) > 1:
        legend_outside(fig, *axes[0].get_legend_handles_labels())
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


def reference_values(text: str) -> dict[str, str | None]:
    """`KEY=VALUE[,KEY=VALUE]` as a dict; an empty VALUE (`KEY=`) is None: a config that does not set KEY."""
    pairs = [item.split("=", 1) for item in text.split(",")]
    if not all(len(pair) == 2 and pair[0] for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE[,KEY=VALUE], e.g. loss=ce")
    return {key: value or None for key, value in pairs}


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
    parser.add_argument("--reference", type=reference_values, metavar="KEY=VALUE[,KEY=VALUE]",
                        help="the values of the config to compare every config with, over matched seeds (e.g. "
                             "loss=ce; KEY= for a key the reference does not set); each config is compared with the "
                             "one having these values that shares most of its other values (default: loss=ce when "
                             "the sweep varies the loss and ce is one of its values, else no comparison)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.metrics, args.reference)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # as cli._fail; importing losslab.cli would import torch (seconds) just to print one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print((report.sweep_dir / "report.md").read_text(), end="")
