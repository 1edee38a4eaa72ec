"""losslab-report: one row per config with mean ± std over seeds, the best row, runs that did not finish listed,
plots; on sweep dirs written here with known numbers, and on a real sweep."""

import csv
import json
import random
import re
import statistics
from pathlib import Path

import pytest
from helpers.report import PNG_SIGNATURE, write_job

from losslab.errors import UserError
from losslab.records.job_dirs import job_dir, job_dirs
from losslab.reporting.plots import parameter_figure
from losslab.reporting.report import main, write_report
from losslab.reporting.sweep_data import Config, Report, RunResult, read_curves

HEADER = ["step", "epoch", "lr", "weights/sq_norm", "train/loss", "val/loss", "val/acc", "test/loss", "test/nll",
          "test/acc"]
LOSSES, L2S, SEEDS = ("ce", "mbce"), ("0.001", "0.1"), (0, 1)


def metrics_csv(rng: random.Random, final: dict) -> str:
    """Two evaluation rows, then the final row with test metrics."""
    rows = [HEADER]
    for step in (10, 20):
        rows.append([step, step / 10, 0.1, rng.uniform(1, 2), rng.uniform(0, 1), rng.uniform(0, 1),
                     rng.uniform(0.5, 1), "", "", ""])
    rows.append([20, 2.0, 0.1, final["weights/sq_norm"], "", final["val/loss"], final["val/acc"],
                 final["test/loss"], final["test/nll"], final["test/acc"]])
    return "".join(",".join(map(str, row)) + "\n" for row in rows)


def write_sweep(sweep: Path) -> Path:
    """A 2×2 grid (loss × trainer.l2) with 2 seeds each, one of them early stopped; then a diverged job, a failed
    job, a job still running (no summary.json, metrics.csv cut mid-line) and a job killed before Hydra wrote its
    overrides. The grid's job dirs are named by what they vary, the others by their number alone (as sweeps were
    named before). The diverged job's numbers would win and shift the means if it were aggregated."""
    rng = random.Random(0)
    job = 0
    for loss in LOSSES:
        for l2 in L2S:
            for seed in SEEDS:
                final = {"val/loss": rng.uniform(0.1, 1), "val/acc": rng.uniform(0.5, 0.95),
                         "val/ece": rng.uniform(0, 0.2), "test/loss": rng.uniform(0.1, 1),
                         "test/nll": rng.uniform(0.1, 2), "test/acc": rng.uniform(0.5, 0.95),
                         "weights/sq_norm": float(l2) * 10 + rng.uniform(0, 1)}
                status = "early_stopped" if job == 3 else "completed"
                write_job(sweep, job, ["dataset=synthetic", f"loss={loss}", f"seed={seed}", f"trainer.l2={l2}"],
                          {"status": status, "seed": seed, "best": {}, "final": final, "wall_s": 1.0},
                          metrics_csv(rng, final), name=f"loss={loss},seed={seed},trainer.l2={l2}")
                job += 1
    write_job(sweep, 8, ["dataset=synthetic", "loss=ce", "seed=2", "trainer.l2=0.001"],
              {"status": "diverged", "seed": 2, "diverged_at_step": 7,
               "final": {"val/acc": 1.0, "test/acc": 1.0, "test/loss": 0.0}})
    write_job(sweep, 9, ["dataset=synthetic", "loss=mbce", "seed=2", "trainer.l2=0.1"],
              {"status": "failed", "error": "CUDA out of memory"})
    write_job(sweep, 10, ["dataset=synthetic", "loss=ce", "seed=2", "trainer.l2=0.1"],
              metrics_csv=",".join(HEADER) + "\n10,1.0,0.1,1.5,0.9,0.8,0.6,,,\n20,2.0,0.1,1.")
    (sweep / "11").mkdir()
    return sweep


@pytest.fixture
def sweep(tmp_path) -> Path:
    return write_sweep(tmp_path / "sweep")


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Report]:
    """`write_sweep`'s sweep and its report, written once for the tests that only read them (plots take seconds)."""
    sweep = write_sweep(tmp_path_factory.mktemp("reported") / "sweep")
    return sweep, write_report(sweep)


def expected_stats(sweep: Path) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per (loss, l2), each final metric's values over the completed and early_stopped runs, read back from disk."""
    values: dict = {}
    for folder in sweep.iterdir():
        summary_path = folder / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        if summary["status"] not in ("completed", "early_stopped"):
            continue
        overrides = dict(line[2:].split("=") for line in (folder / ".hydra/overrides.yaml").read_text().splitlines())
        config = values.setdefault((overrides["loss"], overrides["trainer.l2"]), {})
        for metric, value in summary["final"].items():
            config.setdefault(metric, []).append(value)
    return values


def test_one_row_per_config_with_mean_and_sample_std_over_seeds(reported):
    sweep, report = reported
    assert report.keys == ["loss", "trainer.l2"]  # dataset is the same everywhere, seed is aggregated
    assert report.metrics == ["val/acc", "test/acc", "test/nll", "val/ece"]  # test/nll: comparable across losses
    assert [(row["loss"], row["trainer.l2"]) for row in report.rows] == [(lo, l2) for lo in LOSSES for l2 in L2S]
    expected = expected_stats(sweep)
    for row in report.rows:
        values = expected[row["loss"], row["trainer.l2"]]
        assert row["n"] == 2
        for metric in report.metrics:
            assert row[f"{metric} mean"] == pytest.approx(statistics.mean(values[metric]), rel=1e-12)
            assert row[f"{metric} std"] == pytest.approx(statistics.stdev(values[metric]), rel=1e-12)

    best_config = max(expected, key=lambda config: statistics.mean(expected[config]["val/acc"]))
    assert [(row["loss"], row["trainer.l2"]) for row in report.rows if row["best"]] == [best_config]
    assert (report.best["loss"], report.best["trainer.l2"]) == best_config


def test_runs_that_did_not_finish_are_listed_not_aggregated(reported):
    sweep, report = reported
    listed = {run["job"]: run for run in report.not_aggregated}
    assert [run["job"] for run in report.not_aggregated] == ["8", "9", "10", "11"]  # in job order
    assert {job: run["status"] for job, run in listed.items()} == {
        "8": "diverged", "9": "failed", "10": "unfinished", "11": "unfinished"}
    assert listed["8"]["overrides"] == "dataset=synthetic loss=ce seed=2 trainer.l2=0.001"
    assert listed["9"]["note"] == "CUDA out of memory" and listed["8"]["note"] == "diverged at step 7"
    assert "overrides.yaml" in listed["11"]["note"]
    assert sum(row["n"] for row in report.rows) == 8
    assert all("8" not in row["jobs"] and 2 not in row["seeds"] for row in report.rows)

    md = (sweep / "report.md").read_text()
    section = md.split("## Runs not aggregated")[1]
    for job, status in (("8", "diverged"), ("9", "failed"), ("10", "unfinished"), ("11", "unfinished")):
        assert f"| {job} | {status} |" in section
    assert "loss=mbce seed=2 trainer.l2=0.1" in section and "CUDA out of memory" in section


def test_report_md_marks_the_best_row_and_states_the_spread(reported):
    sweep, report = reported
    md = (sweep / "report.md").read_text()
    assert "sample std (ddof=1)" in md
    best_lines = [line for line in md.splitlines() if "**best**" in line and line.startswith("|")]
    assert len(best_lines) == 1
    best = report.best
    assert best['diverged'] == 1  # its third seed diverged: counted, not averaged
    assert best_lines[0].startswith(f"| {best['loss']} | {best['trainer.l2']} | 2 | 1 | {best['val/acc mean']:.4g} ± ")


def test_report_csv_has_config_rows_and_the_runs_left_out(reported):
    sweep, report = reported
    with open(sweep / "report.csv", newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    for column in ("loss", "trainer.l2", "status", "n", "best", "seeds", "jobs", "note",
                   "val/acc mean", "val/acc std", "test/acc mean", "test/acc std", "test/nll mean", "val/ece std"):
        assert column in reader.fieldnames
    aggregates = [r for r in records if r["status"] == "aggregate"]
    assert len(aggregates) == 4
    for record, row in zip(aggregates, report.rows):
        assert float(record["test/acc mean"]) == row["test/acc mean"] and float(record["test/acc std"]) == row[
            "test/acc std"]
        assert record["best"] == ("1" if row["best"] else "0")
    runs = {r["jobs"]: r for r in records if r["status"] != "aggregate"}
    assert {job: r["status"] for job, r in runs.items()} == {
        "8": "diverged", "9": "failed", "10": "unfinished", "11": "unfinished"}
    assert runs["8"]["loss"] == "ce" and runs["8"]["seeds"] == "2" and runs["8"]["val/acc mean"] == ""


def test_plots_are_pngs_with_one_figure_per_numeric_parameter(reported):
    sweep, report = reported
    plots = {path.name for path in report.files if path.suffix == ".png"}
    assert plots == {"val_curves.png", "vs_trainer.l2.png"}  # loss is not numeric
    for name in plots:
        assert (sweep / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in (sweep / "report.md").read_text()


@pytest.mark.parametrize("key, values, scale", [
    ("optimizer.lr", ("0.1", "0.01"), "log"),  # a learning rate: log however few decades
    ("optimizer.weight_decay", ("0.001", "0.0005"), "log"),
    ("trainer.l2", ("0", "0.1", "1"), "symlog"),  # 0 has no place on a log axis: linear up to 0.1, log above
    ("dataset.crop_padding", ("0", "2", "4"), "linear"),
    ("trainer.batch_size", ("32", "64"), "linear"),
    ("trainer.batch_size", ("8", "1024"), "log"),  # any parameter spanning two decades
])
def test_learning_rates_and_parameters_spanning_decades_are_plotted_on_a_log_or_symlog_axis(key, values, scale):
    run = RunResult("0", {key: values[0]}, "completed", {"final": {"val/acc": 0.5}}, "")
    configs = [Config({key: value}, [run]) for value in values]
    fig = parameter_figure(configs, key, ["val/acc"])
    assert fig.axes[0].get_xscale() == scale


def test_the_best_row_names_its_run_dirs(reported):
    sweep, report = reported
    best = report.best
    expected = sorted(d.name for d in sweep.iterdir() if (d / "summary.json").exists()
                      and json.loads((d / "summary.json").read_text())["status"] in ("completed", "early_stopped")
                      and f"loss={best['loss']}," in d.name and d.name.endswith(f"trainer.l2={best['trainer.l2']}"))
    assert len(expected) == 2
    config = f"loss={best['loss']} trainer.l2={best['trainer.l2']}"
    line = f"**best**: {config}; run dirs: `{expected[0]}/`, `{expected[1]}/`."
    assert line in (sweep / "report.md").read_text().splitlines()


def test_curves_drop_the_final_row_and_a_line_still_being_written(reported):
    sweep, _ = reported
    first = read_curves(job_dir(sweep, 0))
    assert [row["step"] for row in first] == [10, 20]  # the final row (test metrics) is not a curve
    running = read_curves(sweep / "10")
    assert [row["step"] for row in running] == [10] and running[0]["val/acc"] == 0.6


def test_chosen_metrics_a_loss_picks_the_lowest_and_one_seed_has_no_std(sweep, tmp_path):
    report = write_report(sweep, ["test/loss", "weights/sq_norm"])
    means = [row["test/loss mean"] for row in report.rows]
    assert report.best["test/loss mean"] == min(means)
    with open(sweep / "report.csv", newline="") as f:
        assert "val/acc mean" not in csv.DictReader(f).fieldnames

    single = tmp_path / "single"
    for job, lr in enumerate(("0.1", "0.01")):
        write_job(single, job, [f"optimizer.lr={lr}", "seed=0"],
                  {"status": "completed", "final": {"val/acc": 0.5 + job / 10, "test/acc": 0.4, "test/nll": 1.0}})
    report = write_report(single)
    assert report.metrics == ["val/acc", "test/acc", "test/nll"]  # no val/ece in these summaries
    assert [row["n"] for row in report.rows] == [1, 1] and report.rows[0]["val/acc std"] is None
    assert report.best["optimizer.lr"] == "0.01"
    assert "| 0.01 | 1 | 0 | 0.6 ± – |" in (single / "report.md").read_text()
    with open(single / "report.csv", newline="") as f:
        assert next(csv.DictReader(f))["val/acc std"] == ""


FINALS = {"0.1": {"val/acc": 0.90, "val/nll": 0.40, "test/acc": 0.88, "test/nll": 0.45},
          "0.03": {"val/acc": 0.85, "val/nll": 0.30, "test/acc": 0.86, "test/nll": 0.35},
          "0.01": {"val/acc": 0.80, "val/nll": 0.50, "test/acc": 0.79, "test/nll": 0.25}}


@pytest.mark.parametrize("monitor, metrics, best, first_column, says", [
    ({"metric": "val/acc", "mode": "max"}, None, "0.1", "val/acc", "highest mean val/acc (the runs' trainer.monitor"),
    ({"metric": "val/nll", "mode": "min"}, None, "0.03", "val/nll", "lowest mean val/nll (the runs' trainer.monitor"),
    (None, None, "0.1", "val/acc", "highest mean val/acc (lower is better for metrics ending in"),  # old runs
    ({"metric": "val/nll", "mode": "min"}, ["test/nll", "val/acc"], "0.01", "test/nll", "lowest mean test/nll"),
])
def test_the_best_row_follows_the_runs_monitor_unless_metrics_are_chosen(tmp_path, monitor, metrics, best,
                                                                         first_column, says):
    sweep = tmp_path / "sweep"
    for job, (lr, final) in enumerate(FINALS.items()):
        summary = {"status": "completed", "final": final, **({"monitor": monitor} if monitor else {})}
        write_job(sweep, job, [f"optimizer.lr={lr}", "seed=0"], summary)
    report = write_report(sweep, metrics)
    assert [row["optimizer.lr"] for row in report.rows if row["best"]] == [best]
    assert report.metrics[0] == first_column and len(set(report.metrics)) == len(report.metrics)
    assert f"**best**: {says}" in (sweep / "report.md").read_text()


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"), ("file", "is not a directory"), ("empty", "has no job folders"),
    ("single run", "looks like a single run's dir"), ("unknown metric", "test/accuracy")])
def test_bad_input_is_one_sentence(sweep, tmp_path, monkeypatch, capsys, case, expected):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    target = {"missing": tmp_path / "nope", "file": tmp_path / "file.txt", "empty": tmp_path / "empty",
              "single run": job_dir(sweep, 0), "unknown metric": sweep}[case]
    metrics = ["test/acc", "test/accuracy"] if case == "unknown metric" else None
    with pytest.raises(UserError, match=re.escape(expected)):
        write_report(target, metrics)

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main([str(target), *(["--metrics", *metrics] if metrics else [])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab-report: error: ") and err.count("\n") == 1 and expected in err


def test_real_sweep(tmp_path, capsys, losslab):
    sweep = tmp_path / "sweep"
    done = losslab.train("-m", "dataset=synthetic", "optimizer.lr=0.1,0.01", "seed=0,1", "trainer.epochs=1",
                         "trainer.progress=log", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    main([str(sweep)])
    printed = capsys.readouterr().out
    rows = [line for line in printed.split("\n## ")[0].splitlines() if line.startswith("| 0.")]
    assert [line.split(" | ")[:2] for line in rows] == [["| 0.1", "2"], ["| 0.01", "2"]]
    assert sum("**best**" in line for line in rows) == 1
    assert [d.name for d in job_dirs(sweep)] == ["0_optimizer.lr=0.1,seed=0", "1_optimizer.lr=0.1,seed=1",
                                                 "2_optimizer.lr=0.01,seed=0", "3_optimizer.lr=0.01,seed=1"]
    best_lr = next(line for line in rows if "**best**" in line).split(" | ")[0].removeprefix("| ")
    first = 0 if best_lr == "0.1" else 2
    dirs = [f"`{first + seed}_optimizer.lr={best_lr},seed={seed}/`" for seed in (0, 1)]
    assert f"**best**: optimizer.lr={best_lr}; run dirs: {dirs[0]}, {dirs[1]}." in printed
    assert "None: every job completed or stopped early." in printed
    for name in ("report.csv", "report.md", "val_curves.png", "vs_optimizer.lr.png"):
        assert (sweep / name).exists()


def test_the_report_gives_the_command_that_continues_the_jobs_left(tmp_path):
    from losslab.reporting.report import write_report

    sweep = tmp_path / "outputs" / "mnist-linear-ce" / "multirun" / "t"
    done = {"status": "completed", "final": {"val/acc": 0.9, "test/acc": 0.9, "test/nll": 0.3}}
    write_job(sweep, 0, ["seed=0"], done, name="seed=0")
    write_job(sweep, 1, ["seed=1"], {"status": "interrupted", "final": {}}, name="seed=1")
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra: ['hydra/launcher=slurm', 'hydra.launcher.mem_gb=1', 'hydra.mode=MULTIRUN',"
        f" 'hydra.sweep.dir={sweep}']\n    task: ['seed=0,1']\n")
    write_report(sweep)
    text = (sweep / "report.md").read_text()
    assert (f"```bash\nlosslab-train -m hydra/launcher=slurm hydra.launcher.mem_gb=1 seed=0,1 hydra.sweep.dir={sweep}\n"
            "```") in text
    assert "1 of the jobs did not finish" in text

    (sweep / "1_seed=1" / "summary.json").write_text(json.dumps({"status": "diverged", "final": {}}))
    write_report(sweep)  # a diverged run is a result: nothing to continue
    assert "losslab-train -m" not in (sweep / "report.md").read_text()
