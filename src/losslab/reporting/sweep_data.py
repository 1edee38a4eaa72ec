"""A sweep dir read back: each job's run (overrides, summary.json, metrics.csv), the configs they form, and the
Report that `losslab-report` writes from them, as plain data."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from losslab.errors import UserError
from losslab.records.job_dirs import job_dirs
from losslab.records.run_dir import CALIBRATION

TRAINED_TO_END = ("completed", "early_stopped")  # the statuses whose runs are averaged (a diverged run is listed)


DEFAULT_METRICS = ("val/acc", "test/acc", "test/nll")  # the NLL compares across losses, test/loss does not


DEFAULT_IF_PRESENT = ("val/ece",)


LOWER_IS_BETTER = ("loss", "nll", "ece", "brier")


WEIGHT_NORM = "weights/sq_norm"


CALIBRATION_PREFIXES = ("calibration/", "calibrated/")  # the metrics of eval/calibration.json a report reads


SUMMARY_NOTES = (("error", "{}"), ("diverged_at_step", "diverged at step {}"), ("ended", "{}"),
                 ("resume", "resume: {}"))


LEARNED = "loss/"  # the prefix of a loss's learned values in metrics.csv and summary.json's final


@dataclass
class RunResult:
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
    """The values of the varying overrides (None where a job does not set one), the runs aggregated, and how many
    of its runs diverged (a result, but not averaged: its metrics are those before the divergence)."""

    values: dict[str, str | None]
    runs: list[RunResult] = field(default_factory=list)
    diverged: int = 0

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "all jobs"


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
    missing_curves: list[tuple[str, str]] = field(default_factory=list)  # (job dir, why) of jobs not in the curves
    reference: dict[str, str | None] = field(default_factory=dict)  # the reference values; {} for none
    learned: list[str] = field(default_factory=list)
    learned_rows: list[dict] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # ends the launcher could not write into run dirs
    margins: dict[str, float] = field(default_factory=dict)  # equivalence margins by metric (TOST)
    effects: dict[str, float] = field(default_factory=dict)  # effects whose seeds needed are asked for
    correction: str = "holm"  # of the comparisons' p values
    test_set: bool = False  # rows hold losslab.reporting.test_set's columns

    @property
    def best(self) -> dict | None:
        return next((row for row in self.rows if row["best"]), None)


def read_runs(sweep_dir: Path) -> list[RunResult]:
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


def read_run(job_dir: Path) -> RunResult:
    overrides = read_overrides(job_dir / ".hydra" / "overrides.yaml")
    status, summary, note = status_of(job_dir / "summary.json")
    add_calibration(summary, job_dir / CALIBRATION)
    if overrides is None:
        note = "; ".join(filter(None, ["no readable .hydra/overrides.yaml", note]))
    return RunResult(job_dir.name, overrides, status, summary, note)


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


def varying_keys(runs: list[RunResult]) -> list[str]:
    """Override keys whose value differs between jobs (or that some jobs lack), seed excluded, in command-line order."""
    known = [run.overrides for run in runs if run.overrides is not None]
    keys = dict.fromkeys(key for overrides in known for key in overrides)
    return [key for key in keys if key != "seed" and len({overrides.get(key) for overrides in known}) > 1]


def group_by_config(runs: list[RunResult], keys: list[str]) -> list[Config]:
    """Configs in job order; a config with no run trained to its end is kept, with no runs aggregated."""
    configs: dict[tuple, Config] = {}
    for run in runs:
        if run.overrides is None:
            continue
        values = {key: run.overrides.get(key) for key in keys}
        config = configs.setdefault(tuple(values.values()), Config(values))
        if run.aggregated:
            config.runs.append(run)
        config.diverged += run.status == "diverged"
    return list(configs.values())


def monitor_of(runs: list[RunResult]) -> tuple[str, str] | None:
    """(metric, "min" or "max") of summary.json's `monitor`, which every run of a sweep shares; None when the
    aggregated runs record none (runs from before trainer.monitor)."""
    for run in runs:
        monitor = run.summary.get("monitor")
        if run.aggregated and isinstance(monitor, dict) and monitor.get("mode") in ("min", "max"):
            return str(monitor["metric"]), monitor["mode"]
    return None


def choose_metrics(runs: list[RunResult], metrics: list[str] | None, monitor: tuple[str, str] | None) -> list[str]:
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


def lower_is_better(metric: str) -> bool:
    return metric.endswith(LOWER_IS_BETTER)


def learned_keys(runs: list[RunResult]) -> list[str]:
    """The loss/* values in the aggregated runs' summary.json `final`, in the order logged, without those that
    are one value in every run (a fixed coefficient or basis: a constant, not something learned)."""
    finals = [run.summary.get("final") or {} for run in runs if run.aggregated]
    keys = dict.fromkeys(key for final in finals for key in final if key.startswith(LEARNED))
    return [key for key in keys if len(finals) == 1 or len({final.get(key) for final in finals}) > 1]


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
