"""Progress as a user sees it: on a terminal (a pseudo-terminal) the bar with each evaluation's line above it,
kept at the end; without one, lines within long epochs; a stacked sweep like single runs; all of it in cli.log."""

import csv
import json
import re
from pathlib import Path

from losslab.records.job_dirs import job_dirs

SHORT = ["dataset.train_size=2000", "trainer.epochs=2", "trainer.figures=false"]  # 16 steps of 128 per epoch


def evaluated_steps(run_dir: Path) -> list[int]:
    """The steps of metrics.csv's evaluation rows (the last row is the final evaluation)."""
    with open(run_dir / "metrics.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)][:-1]


LINE = r"\]\[\w+\](?:\[INFO\] -)? "  # a log line's prefix in Hydra's job logging (and its launcher's) format


def progress_lines(text: str, running: str = "") -> list[int]:
    return [int(step) for step in re.findall(rf"{LINE}step (\d+)/32 epoch [\d.]+ \| {running}\S+ steps/s, \S+ left\n",
                                             text)]


def evaluation_lines(text: str, job: str = "") -> list[int]:
    return [int(step) for step in re.findall(rf"{LINE}{job}step (\d+) epoch [\d.]+ \| train/loss \S+ val/loss \S+ "
                                             r"val/acc \S+\r?\n", text)]


def test_on_a_terminal_each_evaluation_is_a_line_above_the_bar_and_in_cli_log(tmp_path, losslab):
    screen = losslab.on_a_terminal(*SHORT, "trainer.eval_every=0.5", cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    steps = evaluated_steps(run_dir)
    assert steps == [8, 16, 24, 32]
    assert evaluation_lines(screen) == steps
    assert evaluation_lines((run_dir / "cli.log").read_text()) == steps
    # the bar's final state stays on the screen, above the run's last line
    assert re.search(r"100%\|[^\r\n]*\| 32/32 [^\r\n]*\r\n\[[^]]*\]\[losslab\]\[INFO\] - completed after 32 steps",
                     screen), screen[-600:]


def test_without_a_terminal_a_line_every_tenth_of_an_epoch_between_evaluations(tmp_path, losslab):
    result = losslab.train(*SHORT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert evaluation_lines(result.stdout) == evaluated_steps(run_dir) == [16, 32]
    # every ceil(16 / 10) = 2 steps, but not at an evaluation
    assert progress_lines(result.stdout) == [2, 4, 6, 8, 10, 12, 14, 18, 20, 22, 24, 26, 28, 30]
    assert result.stdout.count("\n") == len((run_dir / "cli.log").read_text().splitlines())


def test_a_stacked_sweep_logs_each_jobs_evaluations_and_its_progress(tmp_path, losslab):
    sweep_dir = tmp_path / "s"
    result = losslab.train("-m", "hydra/launcher=stacked", *SHORT, "seed=0,1", f"hydra.sweep.dir={sweep_dir}",
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for job in job_dirs(sweep_dir):
        assert evaluation_lines(result.stdout, f"job {job.name} ") == evaluated_steps(job) == [16, 32]
    assert progress_lines(result.stdout, "2 jobs running, ") == [2, 4, 6, 8, 10, 12, 14, 18, 20, 22, 24, 26, 28, 30]


def test_a_submitit_sweep_says_where_the_jobs_output_goes_and_when_each_job_finishes(tmp_path, losslab):
    sweep_dir = tmp_path / "s"
    result = losslab.train("-m", "hydra/launcher=submitit_local", "dataset=synthetic", "trainer.epochs=1",
                           "optimizer.lr=0.5,0.05", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"losslab sweep {sweep_dir}: the jobs' output (stdout, stderr) goes to "
                        f"{sweep_dir}/.submitit/<job id>/, each job's log to <its run dir>/cli.log")
    assert any(d.name.isdigit() for d in (sweep_dir / ".submitit").iterdir())
    for job in job_dirs(sweep_dir):
        accuracy = json.loads((job / "summary.json").read_text())["final"]["test/acc"]
        assert lines.count(f"job {job.name} completed: test/acc {accuracy:.4g}") == 1
