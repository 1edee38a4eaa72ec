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
lacking a seed the reference has is compared over the seeds both have, and the number of pairs is shown. The p
values of one metric's comparisons are corrected together (Holm; `--correction fdr_bh` for Benjamini–Hochberg),
and a difference is called better or worse only when its corrected p is below 0.05; otherwise it is "equivalent"
within a margin given with `--equivalence` (TOST) or "inconclusive", with the smallest difference the seeds
detect at 80 % power (`--power` adds the seeds a given effect needs). `losslab-report` adds the test set's own
variance (losslab.reporting.test_set: McNemar's test per seed pair, bootstrap intervals over test examples, ECE
with equal-mass bins); the report a sweep writes at its end leaves it out (it reads every run's predictions).

The losses with learnable coefficients and log bases (min_ent, mix_ent) log them as loss/* columns of metrics.csv:
their final values get a table (mean ± std over seeds) and their trajectories a figure, learned_values.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from losslab.errors import UserError, unwritable
from losslab.fileio import atomic_write
from losslab.reporting.plots import report_figures, write_figures
from losslab.reporting.statistics import (
    CORRECTIONS,
    add_comparisons,
    choose_reference,
    config_row,
    mark_best,
    reference_config,
    run_row,
)
from losslab.reporting.sweep_data import (
    DEFAULT_IF_PRESENT,
    DEFAULT_METRICS,
    Report,
    choose_metrics,
    group_by_config,
    learned_keys,
    lower_is_better,
    monitor_of,
    read_runs,
    to_float,
    varying_keys,
)
from losslab.reporting.tables import csv_text, markdown

PROG = "losslab-report"


def write_report(sweep_dir: Path, metrics: list[str] | None = None,
                 reference: dict[str, str | None] | None = None, unrecorded: list[str] = (),
                 margins: dict[str, float] | None = None, effects: dict[str, float] | None = None,
                 correction: str = "holm", test_set: bool = False) -> Report:
    """Write report.csv, report.md and the plots into `sweep_dir` and return what they hold. `reference`: the
    values that pick the reference configs (see `choose_reference`; None: the default). `unrecorded`: the ends of
    jobs that the launcher could not write into their run dirs, one sentence each. `margins`, `effects` and
    `correction`: see losslab.reporting.statistics.add_comparisons; `test_set`: add the test set's variance."""
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
    add_comparisons(rows, configs, metrics, reference, margins=margins, effects=effects, correction=correction)
    if test_set:
        from losslab.reporting.test_set import add_test_set

        add_test_set(rows, configs, [reference_config(c, configs, reference) for c in configs],
                     [sweep_dir] * len(configs))
    not_aggregated = [run_row(run) for run in runs if not run.aggregated]
    learned = learned_keys(runs)
    learned_rows = [config_row(config, learned) for config in configs
                    if any(run.value(key) is not None for run in config.runs for key in learned)]
    report = Report(sweep_dir, keys, metrics, best_by, monitor is not None, rows, not_aggregated, files=[],
                    reference=reference, learned=learned, learned_rows=learned_rows, unrecorded=list(unrecorded),
                    margins=dict(margins or {}), effects=dict(effects or {}), correction=correction,
                    test_set=test_set)

    figures, report.missing_curves = report_figures(sweep_dir, configs, runs, keys, metrics, learned,
                                                    (monitor_of(runs) or (None,))[0])
    report.files += write_figures(sweep_dir, figures)
    atomic_write(sweep_dir / "report.csv", lambda tmp: tmp.write_text(csv_text(report)))
    atomic_write(sweep_dir / "report.md", lambda tmp: tmp.write_text(markdown(report)))
    report.files += [sweep_dir / "report.csv", sweep_dir / "report.md"]
    return report


def reference_values(text: str) -> dict[str, str | None]:
    """`KEY=VALUE[,KEY=VALUE]` as a dict; an empty VALUE (`KEY=`) is None: a config that does not set KEY."""
    pairs = [item.split("=", 1) for item in text.split(",")]
    if not all(len(pair) == 2 and pair[0] for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE[,KEY=VALUE], e.g. loss=ce")
    return {key: value or None for key, value in pairs}


def jobs_figures_drawn(sweep_dir: Path, drawn: bool):
    """With `drawn`, the figures of each finished job of the sweep that has none, drawn on every core while the
    report is written (losslab.reporting.run_figures.runs_figures_drawn); else nothing."""
    from contextlib import nullcontext

    if not drawn or not Path(sweep_dir).is_dir():
        return nullcontext()
    from losslab.records.job_dirs import job_dirs
    from losslab.reporting.run_figures import runs_figures_drawn
    from losslab.training.runtime import usable_cores  # torch: the figures' weight templates load it anyway

    jobs = [job for job in job_dirs(Path(sweep_dir)) if not (job / "figures").exists()]
    return runs_figures_drawn(jobs, usable_cores())


def metric_values(text: str) -> dict[str, float]:
    """`METRIC=NUMBER[,METRIC=NUMBER]` as a dict of positive numbers, e.g. `acc=0.002,test/nll=0.01`."""
    values = {}
    for item in text.split(","):
        key, _, number = item.partition("=")
        value = to_float(number)
        if not key or value is None or not value > 0 or key in values:
            raise argparse.ArgumentTypeError(f"{text!r} is not METRIC=NUMBER[,METRIC=NUMBER] with positive numbers, "
                                             "e.g. acc=0.002 (accuracy is a fraction: 0.002 is 0.2 points)")
        values[key] = value
    return values


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
    parser.add_argument("--equivalence", type=metric_values, metavar="METRIC=MARGIN[,...]", default={},
                        help="the smallest difference of interest per metric, in the metric's units (acc for every "
                             "split's accuracy, or test/acc; accuracy is a fraction: acc=0.002 is 0.2 points): a "
                             "comparison not found better or worse is tested for equivalence within ±MARGIN (TOST) "
                             "and reads 'equivalent' or 'inconclusive'")
    parser.add_argument("--power", type=metric_values, metavar="METRIC=EFFECT[,...]", default={},
                        help="an effect per metric: each comparison also gives the seeds that detect it at 80 %% "
                             "power (from the spread of its differences); the smallest difference the sweep's seeds "
                             "detect is always given")
    parser.add_argument("--figures", action="store_true",
                        help="also draw each finished job's own figures (weight templates, confidence histogram, "
                             "reliability diagram, curves) where it has none: a sweep draws them at its end only "
                             "with trainer.figures=true")
    parser.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm",
                        help="how the p values of one metric's comparisons are corrected for their number: holm "
                             "(default) or fdr_bh (Benjamini-Hochberg)")
    args = parser.parse_args(argv)
    try:
        with jobs_figures_drawn(args.sweep_dir, args.figures):
            report = write_report(args.sweep_dir, args.metrics, args.reference, margins=args.equivalence,
                                  effects=args.power, correction=args.correction, test_set=True)
    except (UserError, OSError) as e:
        refused = e if isinstance(e, UserError) else unwritable(
            e, "copy the sweep dir to a place you can write and report the copy (the report is written into it)")
        if refused is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # as losslab.commands.messages.fail; importing losslab.commands would import torch just to print one line
        print(f"{PROG}: error: {refused}", file=sys.stderr)
        sys.exit(2)
    print((report.sweep_dir / "report.md").read_text(), end="")
