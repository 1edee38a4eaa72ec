"""`scripts/reproduce.py <study>`: run a reproduced study (study_pages.studies) through `losslab-train -m` and write
its page docs/results/<study>.md, our numbers beside the original ones, and the index docs/results/README.md.

Each multirun of the study goes to <out>/<study>/<multirun> (default outputs/reproduce/), so running the command
again skips the finished jobs and resumes the stopped ones; `--from-existing` only rebuilds the page from those
dirs. The multiruns run in this process, one after the other (one Python start for the whole study, and the
jobs see whatever this process has set up, e.g. a test's data fixtures). The tables come from the runs'
summary.json files through losslab.reporting.report: mean ± sample std over the seeds of each config.

A tuned row (study_pages.studies.Tuned) is two multiruns: its equal-budget tuning with Hydra's Optuna sweeper into
<out>/<study>/<multirun>/tune, then the best trial's values over the seeds into <out>/<study>/<multirun> (see
`run_tuned`); the page adds a tuning table under each table that has such rows.

The committed pages hold the studies as defined. A run given extra overrides (a smoke run such as
`trainer.max_steps=5 seed=0`) keeps its sweep dirs apart, under outputs/reproduce-with-overrides/, and writes its
page beside them, <out>/<study>.md, unless `--docs` says where the pages go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from losslab.config import REPO_ROOT, data_root
from losslab.errors import DataError, UserError
from losslab.fileio import atomic_write, write_json
from losslab.records.job_dirs import job_dirs, job_number
from losslab.records.sweep_state import tally, tally_text
from losslab.reporting.plots import new_figure, save
from losslab.reporting.report import write_report
from losslab.reporting.statistics import add_comparisons, by_metric, reference_config, reference_name
from losslab.reporting.sweep_data import LOWER_IS_BETTER, Config, read_runs
from losslab.reporting.tables import NO_TEST, comparison_cell, table, test_set_table
from losslab.reporting.test_set import add_test_set
from study_pages.studies import STUDIES, Figure, Multirun, Original, Study, Table, Trend, Tuned

PROG = "reproduce.py"
DEFAULT_LAUNCHER = "stacked"
OUT_DIR = REPO_ROOT / "outputs" / "reproduce"
OVERRIDES_OUT_DIR = REPO_ROOT / "outputs" / "reproduce-with-overrides"  # runs given extra overrides
DOCS_DIR = REPO_ROOT / "docs" / "results"
RECORD = "reproduce.json"  # in each sweep dir: the command, the equivalent losslab-train command, the machine
NOTES = ("<!-- notes: kept when the page is written again -->", "<!-- /notes -->")
HEADLINE = "<!-- headline: {} -->"
TOLERANCE_POINTS = 1.0  # an accuracy "agrees" with the original within max(1 point, 2 std)

SOURCES = {  # source -> (name, how to get it into <root>)
    "mnist": ("MNIST", "the repo ships it gzipped under data/MNIST/raw/ (git checkout data/MNIST)"),
    "cifar10": ("CIFAR-10",
                "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it in {root}/"),
    "emnist_letters": ("EMNIST letters", "download https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip and put its "
                       "emnist-letters-* files (.gz is fine) in {root}/EMNIST/raw"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=list(STUDIES))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="extra losslab-train overrides for every job (e.g. trainer.max_steps=5 seed=0,1)")
    parser.add_argument("--launcher", default=DEFAULT_LAUNCHER, help=f"hydra/launcher (default {DEFAULT_LAUNCHER})")
    parser.add_argument("--data-root", type=Path,
                        help="dataset.root for every job (default: $LOSSLAB_DATA_DIR or data/)")
    parser.add_argument("--no-download", action="store_true", help="fail at once if a dataset is missing")
    parser.add_argument("--out", type=Path, help="where the sweep dirs go (<out>/<study>/<multirun>; default "
                        "outputs/reproduce, or outputs/reproduce-with-overrides for a run given overrides)")
    parser.add_argument("--docs", type=Path, help="where the pages go (<docs>/<study>.md; default docs/results, or "
                        "beside the sweep dirs, <out>/<study>.md, for a run given overrides)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", metavar="MULTIRUN", help="run only these multiruns of the study")
    which.add_argument("--from-existing", action="store_true",
                       help="train nothing: rebuild the page from the sweep dirs")
    args = parser.parse_intermixed_args(argv)
    study = STUDIES[args.study]
    args.out = args.out or (OVERRIDES_OUT_DIR if args.overrides else OUT_DIR)
    try:
        code = 0
        if args.from_existing and not any(has_jobs(args.out / study.name / run.name) for run in study.multiruns()):
            check_not_run_page(study, args)
        if not args.from_existing:
            runs = selected(study, args.only)
            check_search_spaces(study, runs)
            check_data(study, runs, data_root(str(args.data_root) if args.data_root else None), not args.no_download)
            code = run_study(study, runs, args, command=shlex.join(["python", "scripts/reproduce.py", *argv]))
        if code in (0, 1):
            print(f"{PROG}: wrote {write_pages(study, args)}")
        return code
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def check_not_run_page(study: Study, args) -> None:
    """--from-existing without sweep dirs rewrites a page that says "not run yet" (its command and commit up to
    date); a page with results, or none, stays as it is."""
    page = (args.docs or (args.out if args.overrides else DOCS_DIR)) / f"{study.name}.md"
    if not page.exists() or page_headline(page.parent, study) != "not run yet":
        raise UserError(f"--from-existing found no sweep dir of {study.name} under {display(args.out)}, so there "
                        f"is no page to rebuild (the one in place stays); run the study first.")


def write_pages(study: Study, args) -> str:
    """The study's page, and the index beside it in a docs dir; what was written, in words."""
    if args.docs is not None or not args.overrides:
        docs = args.docs or DOCS_DIR
        page = write_page(study, args.out, docs)
        write_index(docs)
        return str(page)
    page = write_page(study, args.out, args.out)
    return (f"{page} (a run given overrides writes its page beside its sweep dirs; {display(DOCS_DIR)}/ holds "
            f"the runs without overrides, or pass --docs)")


def selected(study: Study, names: list[str] | None) -> list[Multirun]:
    runs = study.multiruns()
    unknown = [name for name in names or [] if name not in {run.name for run in runs}]
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not a multirun of {study.name}; "
                        f"choose from {', '.join(run.name for run in runs)}.")
    return [run for run in runs if not names or run.name in names]


# ---- data


def sources(runs: list[Multirun]) -> list[str]:
    """The on-disk sources the runs' experiments read, in order of first use."""
    from losslab.commands.cli import compose
    from losslab.data import TASKS

    names = [compose([f"experiment={run.experiment}", *dataset_overrides(run)]).dataset.name for run in runs]
    found = [TASKS[name][0] for name in names if name in TASKS]  # synthetic data is no task: nothing to read
    return [source for source in dict.fromkeys(found) if source in SOURCES]


def dataset_overrides(run: Multirun | Tuned) -> list[str]:
    """The run's overrides of the dataset (the rest, a grid of seeds among them, says nothing of its files)."""
    return [o for o in run.fixed if key_of(o).split(".")[0] == "dataset"]


def missing_files(source: str, root: Path) -> list[str]:
    from losslab.data.sources import READERS

    return [rel for rel in READERS[source][1] if not (root / rel).exists() and not (root / f"{rel}.gz").exists()]


def check_data(study: Study, runs: list[Multirun], root: Path, download: bool) -> None:
    """Download what is missing (unless `download` is off); raise one sentence naming what is still missing."""
    from losslab.data.sources import read_source

    failures, problems = [], []
    for source in sources(runs):
        if missing_files(source, root) and download:
            try:
                read_source(source, root, download=True)
            except DataError as e:
                failures.append(str(e.__cause__ or e).strip().splitlines()[0])
        missing = missing_files(source, root)
        if missing:
            name, how = SOURCES[source]
            problems.append(f"{name} ({', '.join(missing)}): {how.format(root=root)}")
    if problems:
        failed = f" (the download failed: {'; '.join(failures)})" if failures else ""
        raise DataError(f"{study.name} needs files that are not in {root}{failed}; " + "; ".join(problems)
                        + "; or pass --data-root DIR of a folder that has them.")


# ---- running


def run_study(study: Study, runs: list[Multirun | Tuned], args, command: str) -> int:
    """Each multirun in turn: 0, 1 if a job failed, or (at once) losslab-train's code for a mistake (2) or a stop."""
    code = 0
    for run in runs:
        if isinstance(run, Tuned):
            exit_code = run_tuned(study, run, args, command)
        else:
            sweep_dir = (args.out / study.name / run.name).resolve()
            exit_code = launch(f"{study.name}/{run.name}", sweep_dir, run.overrides(), args, command,
                               study.calibrate)
        if exit_code not in (0, 1):
            return exit_code
        code = max(code, exit_code)
    return code


def train_overrides(sweep_dir: Path, overrides: list[str], args, extras: list[str]) -> list[str]:
    """A multirun's `losslab-train -m` overrides: its own (less the keys `extras` set: the command line's win), the
    launcher, its sweep dir, the data, then `extras`."""
    extra_keys = {key_of(extra) for extra in extras}
    full = [o for o in overrides if key_of(o) not in extra_keys]
    full += [f"hydra/launcher={args.launcher}", f"hydra.sweep.dir={sweep_dir}"]
    if args.data_root:
        full.append(f"dataset.root={args.data_root.resolve()}")
    if args.no_download:
        full.append("dataset.download=false")
    return full + extras


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def launch(name: str, sweep_dir: Path, overrides: list[str], args, command: str, calibrate: bool,
           extras: list[str] | None = None) -> int:
    """`losslab-train -m` into `sweep_dir` (train_overrides; `extras`: the command line's, by default), recorded in
    its reproduce.json; its exit code."""
    full = train_overrides(sweep_dir, overrides, args, args.overrides if extras is None else extras)
    record = {"command": command, "losslab_train": shlex.join(["losslab-train", "-m", *full]),
              "environment": environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(f"{PROG}: {name}: {record['losslab_train']}", flush=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / RECORD, record)
    exit_code = run_multirun(full)
    if calibrate and exit_code in (0, 1):
        calibrate_runs(sweep_dir)
    write_json(sweep_dir / RECORD, {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                    "exit_code": exit_code})
    return exit_code


def run_multirun(overrides: list[str]) -> int:
    """`losslab-train -m *overrides` in this process; its exit code."""
    from hydra.core.global_hydra import GlobalHydra

    from losslab.commands import cli

    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["losslab-train", "-m", *overrides]
    try:
        cli.train()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:  # cli.train sets it for its own error handling
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
        GlobalHydra.instance().clear()


def calibrate_runs(sweep_dir: Path) -> None:
    """`losslab-eval <job> --calibrate` for each finished job of the sweep that has no calibration yet; a job it
    refuses is said in one line and left out."""
    from losslab.commands.evaluate import main as evaluate
    from losslab.records.run_dir import CALIBRATION
    from losslab.records.summary import read_summary
    from losslab.reporting.sweep_data import TRAINED_TO_END

    for job in job_dirs(sweep_dir):
        if (read_summary(job) or {}).get("status") in TRAINED_TO_END and not (job / CALIBRATION).exists():
            try:
                evaluate([str(job), "--calibrate"])
            except UserError as e:
                print(f"{PROG}: {job.name}: not calibrated: {e}", flush=True)


# ---- equal-budget tuning (studies.Tuned)

TUNE_DIR = "tune"  # <out>/<study>/<multirun>/tune: a tuned row's trials
RESULTS = "optimization_results.yaml"  # what Hydra's Optuna sweeper writes in its sweep dir at its end


def tune_dir(out: Path, study: Study, run: Tuned) -> Path:
    return out / study.name / run.name / TUNE_DIR


def tuning_result(tune: Path) -> dict | None:
    """The Optuna sweeper's results in `tune` (best_params, best_value), None before it has written them."""
    try:
        results = yaml.safe_load((tune / RESULTS).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return results if isinstance(results, dict) and "best_params" in results else None


def run_tuned(study: Study, run: Tuned, args, command: str) -> int:
    """Tune the row (unless it is tuned), then retrain the best trial's values over the seeds.

    A tuning whose results were written by this very command is reused. Any other (stopped, never run) runs the
    same Optuna sweep into the same dir: the seeded sampler proposes the same trials in the same order, the finished
    ones are skipped and report their recorded objective, a stopped one resumes from its last.pt, so the tuning ends
    as an uninterrupted one would."""
    name, tune = f"{study.name}/{run.name}", tune_dir(args.out, study, run).resolve()
    extras = [o for o in args.overrides if key_of(o) != "seed"]  # the trials' seed is the tuning's; seed= retrains
    code = 0
    if tuned(tune, train_overrides(tune, run.tune_overrides(), args, extras)):
        print(f"{PROG}: {name}: already tuned, its {RESULTS} reused", flush=True)
    else:
        (tune / RESULTS).unlink(missing_ok=True)  # an earlier command's: never taken for this one's
        code = launch(f"{name} tuning", tune, run.tune_overrides(), args, command, False, extras)
        if code not in (0, 1):
            return code
    result = tuning_result(tune)
    if result is None:
        print(f"{PROG}: {name}: its tuning wrote no {RESULTS}, so its seeds are not trained", flush=True)
        return 1
    seeds = launch(name, tune.parent, run.seeds_overrides(result["best_params"]), args, command, study.calibrate)
    return max(code, seeds)


def tuned(tune: Path, overrides: list[str]) -> bool:
    """Whether `tune` holds the results of a tuning by `losslab-train -m *overrides`."""
    record = read_record(tune)
    return (tuning_result(tune) is not None and record is not None
            and record.get("losslab_train") == shlex.join(["losslab-train", "-m", *overrides]))


def read_record(sweep_dir: Path) -> dict | None:
    try:
        return json.loads((sweep_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def check_search_spaces(study: Study, runs: list[Multirun | Tuned]) -> None:
    """Each tuned row's search space, before anything trains: a range Optuna's sweeper samples, of a key that the
    row's config has, whose ends (an interval's) or values (a choice's) that config, its checks and its loss accept;
    else one sentence."""
    import copy

    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from losslab.commands.cli import compose
    from losslab.commands.messages import did_you_mean, one_sentence

    for run in [run for run in runs if isinstance(run, Tuned)]:
        where = f"the tuned row {study.name}/{run.name} ({' '.join(run.overrides())})"
        try:
            config = compose(run.overrides())
        except (HydraException, OmegaConfBaseException) as e:
            raise UserError(f"{where} does not compose: {one_sentence(e)}") from None
        for key, value in run.search_space().items():
            for end in sampled_values(where, key, value):
                job = copy.deepcopy(config)
                try:
                    OmegaConf.update(job, key, end, merge=True)
                except OmegaConfBaseException as e:
                    reason = str(e).splitlines()[0].rstrip(".")
                    raise UserError(f"{where} searches {key}={value}, which its config refuses: {reason}"
                                    f"{did_you_mean(e)}.") from None
                refused = refusal(job)
                if refused:
                    raise UserError(f"{where} searches {key}={value}, whose value {end} is refused: {refused}")


def refusal(config) -> str | None:
    """Why a job of `config` would be refused at its start (losslab.config.check, then the loss's own checks of its
    numbers as it is built), None if it would not be."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from losslab.config import check

    try:
        check(config)
        instantiate(config.loss)
    except UserError as e:
        return str(e)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            return str(e.__cause__)
        raise
    return None


def sampled_values(where: str, key: str, value: str) -> list:
    """The ends of an interval, or the values of a choice or range, that Optuna's sweeper samples for `key`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"{key}={value}")
    except HydraException as e:
        raise UserError(f"{where} searches {key}={value}, which is not an override: "
                        f"{' '.join(str(e).split())}") from None
    if not override.is_sweep_override():
        raise UserError(f"{where} searches {key}={value}, one value: give a range to sample, interval(low,high) "
                        "(tag(log,interval(low,high)) on a log scale), choice(a,b,...) or range(start,stop,step).")
    swept = override.value()
    return [swept.start, swept.end] if isinstance(swept, IntervalSweep) else list(override.sweep_iterator())


def environment() -> dict:
    import torch

    from losslab.records.provenance import versions

    return {**versions(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- the tables


@dataclass
class Row:
    values: dict[str, str | None]  # the multirun's label and the overrides that vary in its sweep (shown)
    overrides: dict[str, str | None]  # the label and every override of its runs (matched against originals)
    n: int
    stats: dict[str, tuple[float | None, float | None, int]]  # metric -> (mean, std, runs that have it)
    runs: list = field(default_factory=list)  # its aggregated losslab.reporting.sweep_data.RunResults
    sweep_dir: Path | None = None  # where its runs are


@dataclass
class Result:
    """What the sweep dirs of one table hold."""

    table: Table
    rows: list[Row]
    keys: list[str]
    not_run: list[str]  # multiruns without a sweep dir (or without jobs)
    not_aggregated: list[str]  # one line per job not aggregated (diverged, failed, interrupted, unfinished)
    runs: dict[str, list]  # multirun -> its losslab.reporting.sweep_data.RunResults
    records: dict[str, dict]  # multirun -> its reproduce.json


def has_jobs(sweep_dir: Path) -> bool:
    return sweep_dir.is_dir() and bool(job_dirs(sweep_dir))


def collect(study: Study, tab: Table, out: Path) -> Result:
    result = Result(tab, [], [], [], [], {}, {})
    for multirun in tab.multiruns:
        sweep_dir = out / study.name / multirun.name
        if not has_jobs(sweep_dir):
            result.not_run.append(multirun.name)
            continue
        report = write_report(sweep_dir, list(tab.metrics))
        result.runs[multirun.name] = read_runs(sweep_dir)
        overrides_of = {job.job: job.overrides for job in result.runs[multirun.name]}
        try:
            result.records[multirun.name] = json.loads((sweep_dir / RECORD).read_text())
        except (OSError, ValueError):
            pass
        for key in [*multirun.label, *report.keys]:
            if key not in result.keys:
                result.keys.append(key)
        for row in report.rows:
            stats = {m: (row[f"{m} mean"], row[f"{m} std"], row["counts"][m]) for m in tab.metrics}
            values = {**multirun.label, **{k: row[k] for k in report.keys}}
            overrides = {**(overrides_of[row["jobs"][0]] if row["jobs"] else {}), **values}
            runs = [run for run in result.runs[multirun.name] if run.job in row["jobs"]]
            result.rows.append(Row(values, overrides, row["n"], stats, runs, sweep_dir))
        for job in report.not_aggregated:
            note = f", {job['note']}" if job["note"] else ""
            line = f"{multirun.name} job {job['job']} ({job['overrides']}): {job['status']}{note}"
            result.not_aggregated.append(line)
    return result


def same(a: str | None, b: str) -> bool:
    """Override values are equal as text, or as numbers (0 == 0.0)."""
    if a is None:
        return False
    try:
        return a == b or float(a) == float(b)
    except ValueError:
        return False


def matches(values: dict[str, str | None], match: dict[str, str]) -> bool:
    return all(same(values.get(key), value) for key, value in match.items())


def find_row(rows: list[Row], match: dict[str, str]) -> Row | None:
    return next((row for row in rows if matches(row.overrides, match)), None)


def original_of(tab: Table, row: Row) -> Original | None:
    return next((o for o in tab.originals if matches(row.overrides, o.match)), None)


def percent(metric: str) -> bool:
    return metric.endswith("/acc")


def stat(mean: float | None, std: float | None, count: int, n: int, metric: str) -> str:
    """mean ± sample std (– for one run); accuracies in %, 2 decimals; others 4 significant digits."""
    if mean is None:
        return ""
    if percent(metric):
        text = f"{100 * mean:.2f} ± " + ("–" if std is None else f"{100 * std:.2f}")
    else:
        text = f"{mean:.4g} ± " + ("–" if std is None else f"{std:.2g}")
    return text + (f" (n={count})" if count < n else "")


def header(metric: str) -> str:
    return f"{metric} (%)" if percent(metric) else metric


def markdown_table(result: Result) -> str:
    tab = result.table
    rows = [[*(("–" if row.values.get(k) is None else row.values[k]) for k in result.keys), row.n,
             *(stat(*row.stats[m], row.n, m) for m in tab.metrics),
             (o.text if (o := original_of(tab, row)) else "–")] for row in result.rows]
    return table([*result.keys, "n", *map(header, tab.metrics), "original"], rows)


def compared_rows(result: Result) -> list[dict]:
    """Each row's comparison with the table's reference config over matched seeds (losslab.reporting.report's paired
    t-test), across the table's multiruns: a dict per row with `reference` and, per compared metric, its pairs,
    diff, diff low, diff high, p and words (`vs reference`)."""
    tab = result.table
    configs = [Config({key: row.values.get(key) for key in result.keys}, row.runs) for row in result.rows]
    rows = [dict(config.values) for config in configs]
    add_comparisons(rows, configs, list(tab.compared), tab.reference, tab.reference_name or None,
                    margins=tab.margins)
    for metric in (m for m in tab.compared if percent(m) and by_metric(tab.margins, m) is not None):
        margin = by_metric(tab.margins, metric)  # the words give an accuracy's margin in points, as its cells
        for row in rows:
            words = row[f"{metric} vs reference"]
            row[f"{metric} vs reference"] = words and words.replace(f"±{margin:.2g}", f"±{100 * margin:.2g} points")
    if tab.test_set:
        against = [reference_config(config, configs, tab.reference) for config in configs]
        add_test_set(rows, configs, against, [row.sweep_dir for row in result.rows])
    return rows


def comparison_section(result: Result) -> list[str]:
    """The rows compared with the reference, under their own heading: the mean difference [its 95 % interval] per
    metric (accuracies in points), the words, and the pairs it rests on; with the table's `test_set`, the test
    set's variance under a heading of its own."""
    tab = result.table
    every_row = compared_rows(result) if tab.reference else []
    rows = [row for row in every_row if row["reference"]]
    if not rows:
        return []
    name = tab.reference_name or reference_name(tab.reference)
    cells = []
    for row in rows:
        most = max(row[f"{m} pairs"] for m in tab.compared)
        cells.append([*(("–" if row.get(k) is None else row[k]) for k in result.keys), most,
                      *(compared_cell(row, m, most) for m in tab.compared)])
    pairs = {row[f"{m} pairs"] for row in rows for m in tab.compared}
    notes = [NO_TEST[n] for n in sorted(pairs & NO_TEST.keys())]
    values = ", ".join(f"{key}={value}" for key, value in tab.reference.items())
    intro = (f"Each config against {name} ({values}) over matched seeds (a seed is the same initialisation and data "
             f"order for every loss): the mean difference config − {name} [its 95 % interval] and the paired "
             f"t-test's two-sided p with that p Holm-corrected over the table's comparisons of the metric "
             f"(losslab-report's comparison). Where the corrected p is below 0.05 the words say better or worse "
             f"(lower is better for {', '.join(LOWER_IS_BETTER)}), else inconclusive, which is no proof of equality; "
             "MDE is the smallest difference these seeds detect at 80 % power.")
    if tab.margins:
        intro += (" Not better or worse, a difference is tested for equivalence within ±margin (TOST, two one-sided "
                  "paired t-tests): " + ", ".join(f"{key} ±{100 * value:.2g} points" if key.endswith("acc") else
                                                  f"{key} ±{value:.2g}" for key, value in tab.margins.items()) + ".")
    key_cells = [["–" if row.get(k) is None else row[k] for k in result.keys] for row in every_row]
    header_cells = [*result.keys, "pairs", *(f"{m} (points)" if percent(m) else m for m in tab.compared)]
    lines = [f"### {tab.title}: compared with {name}", "", intro, "", table(header_cells, cells),
             *(["", *notes] if notes else []), ""]
    if tab.test_set:
        lines += [f"### {tab.title}: the test set's variance", "",
                  *test_set_table(result.keys, [{**row, **dict(zip(result.keys, cells[:len(result.keys)]))}
                                                for row, cells in zip(every_row, key_cells)], points=True), ""]
    return lines


def compared_cell(row: dict, metric: str, most: int) -> str:
    """losslab.reporting.report's comparison cell, with an accuracy's difference in percentage points."""
    if not percent(metric) or row[f"{metric} diff low"] is None:
        return comparison_cell(row, metric, most)
    scaled = {**row, **{f"{metric} {s}": 100 * row[f"{metric} {s}"] for s in ("diff", "diff low", "diff high", "mde")
                        if row[f"{metric} {s}"] is not None}}
    return comparison_cell(scaled, metric, most)


def label(row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.values.items() if v is not None) or "all runs"


def tuning_section(study: Study, result: Result, out: Path) -> list[str]:
    """Under a table with tuned rows: the budget in words and, per tuned row, its trials, its own space, the values
    chosen, the best trial's objective and the tuning's training time."""
    tuned = [run for run in result.table.multiruns if isinstance(run, Tuned)]
    if not tuned:
        return []
    tuning = tuned[0].tuning
    intro = (f"Every tuned row had the same budget: {tuning.trials} trials of Hydra's Optuna sweeper (TPE, sampler "
             f"seed {tuning.sampler_seed}, {tuning.batch} trials proposed at a time), each a run of seed "
             f"{tuning.tune_seed}, over {space_text(tuning.shared)} for every row and the row's own space below (a "
             f"loss with none spends its trials on the shared space); objective: the final {tuning.objective} on "
             f"the validation split, {'maximised' if tuning.mode == 'max' else 'minimised'}. The best trial's values "
             f"were retrained over seeds {tuning.seeds}: the table's tuned rows; runs.csv gives each run's values.")
    columns = ["row", "trials", "own space", "chosen", f"best {header(tuning.objective)}", "tuning time (min)"]
    rows = [tuning_row(run, tune_dir(out, study, run)) for run in tuned]
    return [f"### {result.table.title}: tuning", "", intro, "", table(columns, rows), ""]


def tuning_row(run: Tuned, tune: Path) -> list[str]:
    own = space_text(run.space) or "none"
    if not has_jobs(tune):
        return [" ".join(run.fixed), "not run yet", own, "–", "–", "–"]
    result = tuning_result(tune)
    if result is None:
        chosen, best = "– (not finished)", "–"
    else:
        chosen = ", ".join(f"{key}={number(value)}" for key, value in result["best_params"].items())
        value = -result["best_value"] if run.tuning.mode == "max" else result["best_value"]
        best = f"{100 * value:.2f}" if percent(run.tuning.objective) else f"{value:.4g}"
    minutes = training_time(read_runs(tune)) / 60
    return [" ".join(run.fixed), tally_text(tally(tune)), own, chosen, best, f"{minutes:.1f}"]


def space_text(space: dict[str, str]) -> str:
    return ", ".join(f"`{key}={value}`" for key, value in space.items())


def number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- commentary, from the numbers


def comparisons(result: Result) -> list[str]:
    """One sentence per original figure: ours, the original, the difference in points, agrees / higher / lower."""
    sentences = []
    for original in result.table.originals:
        row = find_row(result.rows, original.match)
        for metric, value in original.values.items():
            if row is None or row.stats[metric][0] is None:
                continue
            mean, std, count = row.stats[metric]
            diff = 100 * (mean - value)
            tolerance = max(TOLERANCE_POINTS, 2 * 100 * (std or 0.0))
            verdict = "agrees" if abs(diff) <= tolerance else ("higher" if diff > 0 else "lower")
            theirs = original.text if len(original.values) == 1 else f"{100 * value:.6g} %"
            sentences.append(f"{label(row)}: {metric} {stat(mean, std, count, row.n, metric)} % vs {theirs} in the "
                             f"original ({diff:+.2f} points): {verdict}.")
    return sentences


def trend_sentence(trend: Trend, rows: list[Row]) -> str | None:
    points = sorted((float(row.values[trend.key]), row.stats[trend.metric][0]) for row in rows
                    if row.values.get(trend.key) is not None and row.stats[trend.metric][0] is not None)
    if len(points) < 2:
        return None
    means = [mean for _, mean in points]
    sign = -1 if trend.direction == "falls" else 1
    monotone = all(sign * (b - a) >= 0 for a, b in zip(means, means[1:])) and sign * (means[-1] - means[0]) > 0
    shown = ", ".join(f"{100 * m:.2f} %" if percent(trend.metric) else f"{m:.4g}" for m in means)
    keys = ", ".join(f"{x:g}" for x, _ in points)
    verdict = f"{trend.direction} monotonically" if monotone else f"does not {trend.direction[:-1]} monotonically"
    return f"{trend.claim} Ours, {trend.metric} at {trend.key} = {keys}: {shown}; it {verdict}."


# ---- figures


def copy_figures(study: Study, result: Result, out: Path, folder: Path) -> list[str]:
    """The table's figures as Markdown lines (copied or drawn into `folder`), or a line saying why one is missing."""
    lines = []
    for figure in result.table.figures:
        target = folder / f"{figure.name}.png"
        if figure.plot:
            reason = draw(figure, result, target)
        elif figure.panels:
            reason = draw_reliability(figure, result, out / study.name, target)
        else:
            reason = copy_figure(study, figure, result, out, target)
        if reason:
            lines.append(f"_{figure.caption} (not available: {reason}.)_")
        else:
            lines.append(f"![{figure.name}]({folder.name}/{target.name})\n\n{figure.caption}")
    return lines


def copy_figure(study: Study, figure: Figure, result: Result, out: Path, target: Path) -> str | None:
    runs = result.runs.get(figure.multirun)
    if runs is None:
        return f"{figure.multirun} has not run"
    sweep_dir = out / study.name / figure.multirun
    source = sweep_dir / figure.source
    if figure.match is not None:
        aggregated = [run for run in runs if run.aggregated and matches(run.overrides, figure.match)]
        if not aggregated:
            return "no completed or early_stopped run of that config"
        first = min(aggregated, key=lambda run: (seed_order(run.seed), job_number(sweep_dir / run.job)))
        source = sweep_dir / first.job / figure.source
        if not source.exists():  # a sweep's jobs draw their own figures on demand
            from losslab.reporting.run_figures import draw_run_figures

            draw_run_figures(sweep_dir / first.job)
    if not source.exists():
        return f"{source.relative_to(sweep_dir)} was not written"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return None


def seed_order(seed) -> float:
    try:
        return float(seed)
    except (TypeError, ValueError):
        return float("inf")


def draw(figure: Figure, result: Result, target: Path) -> str | None:
    """Each metric's mean ± std against the numeric key, on a symmetric-log axis (so 0 shows)."""
    key, metrics = figure.plot
    rows = [row for row in result.rows if row.values.get(key) is not None]
    if not rows:
        return f"{figure.multirun} has no runs that vary {key}"
    xs = sorted({float(row.values[key]) for row in rows})
    fig, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        scale = 100 if percent(metric) else 1
        points = sorted((float(row.values[key]), scale * row.stats[metric][0], scale * (row.stats[metric][1] or 0.0))
                        for row in rows if row.stats[metric][0] is not None)
        if points:
            ax.errorbar(*zip(*points), marker="o", capsize=3)
        positive = [x for x in xs if x > 0]
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set(xlabel=key, ylabel=header(metric), title=f"{header(metric)} vs {key}")
        ax.grid(alpha=0.3)
    target.parent.mkdir(parents=True, exist_ok=True)
    save(fig, target)
    return None


def draw_reliability(figure: Figure, result: Result, study_dir: Path, target: Path) -> str | None:
    """Reliability diagrams side by side, one per panel: the test predictions (predictions_test.npz) of every
    aggregated run of the panel's config, pooled over its seeds, with their ECE."""
    import numpy as np

    from losslab.evaluation.metrics import ECE_BINS
    from losslab.reporting.drawing import calibration_bins, expected_calibration_error
    from losslab.reporting.run_figures import PREDICTIONS, read_predictions

    pooled = []
    for multirun, match, title in figure.panels:
        label = next((run.label for run in result.table.multiruns if run.name == multirun), {})
        runs = [run for run in result.runs.get(multirun, [])
                if run.aggregated and matches({**label, **run.overrides}, match)]
        arrays = [a for run in runs if (a := read_predictions(study_dir / multirun / run.job / PREDICTIONS))]
        if not arrays:
            return f"{multirun} has no predictions of {title}"
        pooled.append((title, len(arrays), *(np.concatenate(column) for column in zip(*arrays))))
    fig, axes = new_figure(len(pooled), columns=len(pooled))
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, (title, n, confidence, correct) in zip(axes, pooled):
        count, mean_confidence, accuracy = calibration_bins(confidence, correct, ECE_BINS)
        filled = count > 0
        ax.stairs(np.where(filled, accuracy, 0), edges, fill=True, alpha=0.7, color="tab:blue")
        ax.plot(mean_confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4)
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ece = expected_calibration_error(confidence, correct, ECE_BINS)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy",
               title=f"{title}: ECE {ece:.4f} ({n} runs)")
    target.parent.mkdir(parents=True, exist_ok=True)
    save(fig, target)
    return None


# ---- the page


def display(path: Path, outside: str | None = None) -> str:
    """A path as a page shows it: relative to the repository inside it (the commands run from its root), else
    `outside` (a placeholder such as OUT) when given: a page never holds a path of the machine that wrote it."""
    path = path.resolve()
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    return str(path) if outside is None else outside


# paths outside the repository, as --help names them
PLACEHOLDERS = {"--out": "OUT", "--docs": "DOCS", "--data-root": "DATA_ROOT", "dataset.root": "DATA_ROOT"}


def portable(command: str) -> str:
    """A recorded command with its absolute paths shown by `display` (a sweep dir as OUT/<study>/<multirun>)."""
    tokens = shlex.split(command)
    for i, token in enumerate(tokens):
        key, eq, value = token.partition("=")
        if i > 0 and tokens[i - 1] in PLACEHOLDERS and Path(token).is_absolute():
            tokens[i] = display(Path(token), PLACEHOLDERS[tokens[i - 1]])
        elif eq and Path(value).is_absolute() and (key in PLACEHOLDERS or key == "hydra.sweep.dir"):
            path = Path(value)
            below = -3 if path.name == TUNE_DIR else -2  # OUT/<study>/<multirun>[/tune]
            placeholder = PLACEHOLDERS.get(key) or "/".join(["OUT", *path.parts[below:]])
            tokens[i] = f"{key}={display(path, placeholder)}"
    return shlex.join(tokens)


def default_command(overrides: list[str], sweep_dir: Path) -> str:
    return portable(shlex.join(["losslab-train", "-m", *overrides, f"hydra/launcher={DEFAULT_LAUNCHER}",
                                f"hydra.sweep.dir={sweep_dir.resolve()}"]))


CHOSEN = "CHOSEN"  # a tuned row's values in its seeds command before its tuning has chosen them


def commands_of(study: Study, run: Multirun | Tuned, out: Path, records: dict[str, dict]) -> list[str]:
    """A multirun's losslab-train command as recorded, else as the default launcher runs it; a tuned row's two:
    its tuning, then its seeds with the values chosen."""
    sweep_dir = out / study.name / run.name
    seeds = records.get(run.name)
    if not isinstance(run, Tuned):
        return [portable(seeds["losslab_train"]) if seeds else default_command(run.overrides(), sweep_dir)]
    tune = read_record(sweep_dir / TUNE_DIR)
    chosen = {key: CHOSEN for key in run.search_space()}
    return [portable(tune["losslab_train"]) if tune else default_command(run.tune_overrides(), sweep_dir / TUNE_DIR),
            portable(seeds["losslab_train"]) if seeds else default_command(run.seeds_overrides(chosen), sweep_dir)]


def data_lines(study: Study) -> list[str]:
    needed = sources(study.multiruns())
    return [f"- {SOURCES[s][0]}: {SOURCES[s][1].format(root='data')} (or pass `--data-root DIR`)." for s in needed]


def write_page(study: Study, out: Path, docs: Path) -> Path:
    """docs/<study>.md and the figures in docs/<study>/, from the sweep dirs under out/<study>/."""
    page, folder = docs / f"{study.name}.md", docs / study.name
    results = [collect(study, tab, out) for tab in study.tables]
    ran = any(result.runs for result in results)
    if folder.exists():
        for old in folder.glob("*.png"):
            old.unlink()
    lines = [f"# {study.title}", "", HEADLINE.format(headline(study, results)), "",
             f"**The original:** {study.original}", ""]
    if study.sources:
        lines += ["Where the original's figures come from:", "", *(f"> {source}" for source in study.sources), ""]
    if study.notes:
        lines += [study.notes, ""]
    lines += command_section(study, results, out, ran)
    if not ran:
        lines += ["## Results", "", "**Not run yet.** No sweep dir of this study exists; run the command above.", ""]
    else:
        lines += environment_section(results)
        lines += ["## Results", "",
                  "Each cell: mean ± sample std (ddof = 1) over the seeds of that config (– for one run), from the "
                  "runs' summary.json (`final`: the test-time model); accuracies in %. **original**: the figure the "
                  "original reported for that setting.", ""]
        for result in results:
            lines += [f"### {result.table.title}", ""]
            if result.table.note:
                lines += [result.table.note, ""]
            if result.not_run:
                lines += [f"Not run yet: {', '.join(result.not_run)}.", ""]
            if result.rows:
                lines += [markdown_table(result), ""]
                lines += comparison_section(result)
            lines += tuning_section(study, result, out)
            if result.not_aggregated:
                lines += ["Not aggregated (see report.md in the sweep dir):", "",
                          *(f"- {line}" for line in result.not_aggregated), ""]
            for figure in copy_figures(study, result, out, folder):
                lines += [figure, ""]
        lines += commentary_section(results)
    notes = kept_notes(page)
    check_notes(notes, "\n".join(lines) + "\n" + " ".join(run_numbers(results)), page)
    lines += [NOTES[0], notes, NOTES[1], ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    if ran:
        folder.mkdir(exist_ok=True)
        atomic_write(folder / RUNS_CSV, lambda tmp: tmp.write_text(runs_csv(results)))
    atomic_write(page, lambda tmp: tmp.write_text("\n".join(lines)))
    return page


RUNS_CSV = "runs.csv"  # beside each page, in docs/results/<study>/: one row per run of the study


def runs_csv(results: list[Result]) -> str:
    """Every run of the study's tables: its table, multirun, job, the overrides its sweep varies (and a tuned row's
    chosen values), seed, status, the commit it trained at (summary.json's git, `+changes` for a dirty checkout) and
    its final metrics."""
    import csv
    import io

    rows = []
    for result in results:
        shown = [*result.keys, *(key for run in result.table.multiruns if isinstance(run, Tuned)
                                 for key in run.search_space())]
        for multirun, runs in result.runs.items():
            for run in runs:
                trained = (run.summary.get("git") or {})
                commit = trained.get("commit", "")[:12] + ("+changes" if trained.get("dirty") else "")
                rows.append({"table": result.table.title, "multirun": multirun, "job": run.job,
                             **{k: v for k, v in (run.overrides or {}).items() if k in shown},
                             "seed": run.seed, "status": run.status, "commit": commit,
                             **{k: v for k, v in (run.summary.get("final") or {}).items()
                                if isinstance(v, (int, float))}})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")  # unsigned: "+9.13 points" is cited as 9.13


def run_numbers(results: list[Result]) -> list[str]:
    """Each run's final metrics as a note may cite them: 4 significant digits, and as a percentage to 1 and 2
    decimals (one seed's accuracy, from runs.csv)."""
    values = [v for result in results for runs in result.runs.values() for run in runs
              for v in (run.summary.get("final") or {}).values() if isinstance(v, (int, float))]
    return [text for v in values for text in (f"{v:.4g}", f"{100 * v:.1f}", f"{100 * v:.2f}")]


def check_notes(notes: str, generated: str, page: Path) -> None:
    """The hand-written notes' numbers are the page's numbers: each decimal number in the notes (outside lines
    quoted with `>`, which cite a source) must appear in the page's generated text or be a run's final metric
    (`run_numbers`), else the rebuild stops with the numbers that no longer do, so a note cannot go stale
    unnoticed."""
    found = set(NUMBER.findall(generated))
    quoted = "\n".join(line for line in notes.splitlines() if not line.lstrip().startswith(">"))
    stale = [n for n in dict.fromkeys(NUMBER.findall(quoted)) if n not in found]
    if stale:
        raise UserError(f"the notes of {display(page)} cite {', '.join(stale)}, which the rebuilt tables no longer "
                        "show; correct the notes (between the notes markers) to the new numbers, or quote a source's "
                        "number on a line starting with '>', then rebuild.")


def command_section(study: Study, results: list[Result], out: Path, ran: bool) -> list[str]:
    records = {name: record for result in results for name, record in result.records.items()}
    tunings = [record for run in study.multiruns()
               if isinstance(run, Tuned) and (record := read_record(tune_dir(out, study, run)))]
    commands = list(dict.fromkeys(portable(record["command"]) for record in [*tunings, *records.values()])) or [
        f"python scripts/reproduce.py {study.name}"]
    lines = ["## Command", "", provenance_line(study, results, ran), "", "```bash", *commands, "```", "",
             "runs these multiruns, one after the other (a second run skips finished jobs; delete a sweep dir to "
             "train it again, or add `--from-existing` to rebuild this page from the sweep dirs without training):",
             "", "```bash"]
    lines += [command for run in study.multiruns() for command in commands_of(study, run, out, records)]
    lines += ["```", ""]
    if any(isinstance(run, Tuned) for run in study.multiruns()):
        lines += [f"A tuned row is two lines: its tuning (Hydra's Optuna sweeper, into `<multirun>/{TUNE_DIR}`; a "
                  f"second run reuses a finished tuning) and its seeds with the values the tuning chose, read from "
                  f"its {RESULTS} ({CHOSEN} until it has run).", ""]
    if not ran:
        lines += ["Data it needs (CIFAR-10 and EMNIST are downloaded on first use where there is network):", "",
                  *data_lines(study), ""]
    return lines


def provenance_line(study: Study, results: list[Result], ran: bool) -> str:
    """Which commit built the page and which commits trained its runs (each run's summary.json), and where the
    per-run results are."""
    commit, dirty = built_at()
    page = f"This page was built at commit `{commit[:12]}`" + (" with changes not committed" if dirty else "")
    trained = sorted({(run.summary.get("git") or {}).get("commit", "unknown")[:12]
                      for result in results for runs in result.runs.values() for run in runs})
    if not ran:
        return page + "."
    return (page + f"; its runs trained at commit {', '.join(f'`{c}`' for c in trained)}; every run's config, "
            f"seed, status and final metrics are in [{RUNS_CSV}]({study.name}/{RUNS_CSV}).")


def built_at() -> tuple[str, bool]:
    """The commit whose code builds the pages, and whether anything but the pages themselves (docs/results/, which
    a rebuild rewrites one study after another) differs from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", ".", ":(exclude)docs/results"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def environment_section(results: list[Result]) -> list[str]:
    records = [record for result in results for record in result.records.values()]
    runs = [run for result in results for runs in result.runs.values() for run in runs]
    devices = sorted({str(run.summary["device"]) for run in runs if run.summary.get("device")})
    wall = training_time(runs)
    lines = ["## Environment", "", table(["", ""], [
        ["device (summary.json)", ", ".join(devices) or "–"],
        ["runs", f"{sum(run.aggregated for run in runs)} finished of {len(runs)}; "
                 f"{wall / 60:.1f} min of training in all (wall_s, a stack of jobs counted once)"],
        *(row for env in dict.fromkeys(json.dumps(r["environment"], sort_keys=True) for r in records)
          for row in environment_rows(json.loads(env))),
        ["date", ", ".join(sorted({r["started"][:10] for r in records})) or "–"],
    ]), ""]
    return lines


def training_time(runs) -> float:
    """The sum of the runs' wall_s, where the jobs of one stack (hydra/launcher=stacked) count once: their longest."""
    alone, stacks = 0.0, {}
    for run in runs:
        wall, stack = run.summary.get("wall_s") or 0.0, run.summary.get("stacked")
        if stack:
            # summaries written before stacks named their jobs: the stacks of one sweep dir, told apart by size
            key = (str(Path(run.summary.get("run_dir", "")).parent), tuple(stack.get("jobs", [stack["members"]])))
            stacks[key] = max(stacks.get(key, 0.0), wall)
        else:
            alone += wall
    return alone + sum(stacks.values())


def environment_rows(env: dict) -> list[list[str]]:
    return [["CPU", f"{env.get('cpu')} ({env.get('cores')} cores)"], ["GPU", env.get("gpu") or "none"],
            ["python / torch / torchvision", f"{env.get('python')} / {env.get('torch')} / {env.get('torchvision')}"],
            ["platform", str(env.get("platform"))]]


def commentary_section(results: list[Result]) -> list[str]:
    sentences = []
    for result in results:
        sentences += comparisons(result)
        sentences += [s for trend in result.table.trends if (s := trend_sentence(trend, result.rows))]
    lines = ["## Commentary", "",
             f"Generated from the tables above; an accuracy agrees with the original within max({TOLERANCE_POINTS:g} "
             "point, 2 std).", ""]
    lines += [f"- {s}" for s in sentences] or ["- No original figure to compare with has a finished run yet."]
    return [*lines, "", "What this means, by whoever ran the study (kept when the page is rebuilt):", ""]


def kept_notes(page: Path) -> str:
    try:
        text = page.read_text()
    except OSError:
        text = ""
    start, end = text.find(NOTES[0]), text.find(NOTES[1])
    if 0 <= start < end:
        return text[start + len(NOTES[0]):end].strip("\n")
    return "_To be written by whoever runs the study._"


def headline(study: Study, results: list[Result]) -> str:
    parts = []
    for line in study.headlines:
        result = results[line.table]
        row = find_row(result.rows, line.match)
        if row is None or row.stats[line.metric][0] is None:
            continue
        original = original_of(result.table, row)
        parts.append(f"{line.label} {stat(*row.stats[line.metric], row.n, line.metric)} %"
                     + (f" (original {original.text})" if original else ""))
    return "; ".join(parts) or "not run yet"


def write_index(docs: Path) -> Path:
    lines = ["# Reproduced studies", "",
             "One page per study: the command, the machine, our mean ± std over seeds beside the original figures, "
             "key figures and a commentary. Run one with `python scripts/reproduce.py <study>`.", "",
             table(["study", "headline"], [[f"[{study.name}]({study.name}.md): {study.title}",
                                            page_headline(docs, study)] for study in STUDIES.values()]), ""]
    index = docs / "README.md"
    docs.mkdir(parents=True, exist_ok=True)
    atomic_write(index, lambda tmp: tmp.write_text("\n".join(lines)))
    return index


def page_headline(docs: Path, study: Study) -> str:
    prefix, suffix = HEADLINE.split("{}")
    try:
        for line in (docs / f"{study.name}.md").read_text().splitlines():
            if line.startswith(prefix) and line.endswith(suffix):
                return line[len(prefix):-len(suffix)]
    except OSError:
        pass
    return "not run yet"
