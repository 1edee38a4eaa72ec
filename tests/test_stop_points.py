"""A run stopped at any step resumes to the same metrics.csv, byte for byte: SIGTERM and SIGKILL sent at chosen
points of the loop (LOSSLAB_TEST_STOP_AT: the tests' hook on losslab.training.hooks, stop_hook/sitecustomize.py),
then the user's relaunch command.

The run: 1,792 synthetic training images in batches of 128, 14 steps an epoch, 3 epochs (42 steps), an
evaluation every 7 steps. Points: the first step, a mid-epoch step, an evaluation step (a signal during the step,
and one after its evaluation row is written), an epoch's end (before last.pt), the last step, the finishing
(after the final row, before summary.json).
"""

import csv
import json
import re
import signal
from pathlib import Path

import pytest

from losslab.records.job_dirs import job_dirs

RUN = ["dataset=synthetic", "model=fnn", "model.dropout=0.2", "dataset.hflip=true", "trainer.epochs=3",
       "trainer.eval_every=0.5", "trainer.patience=50", "trainer.deterministic=true", "scheduler=step",
       "scheduler.step_size=1", "scheduler.gamma=0.5", "trainer.progress=log", "trainer.figures=false"]
# no dropout: a stack draws its members' dropout masks from one generator, a separate run from its own
STACK = ["-m", "hydra/launcher=stacked", "optimizer.lr=0.1,0.05", *(o for o in RUN if "dropout" not in o)]
POINTS = ["step 1", "step 5", "step 7", "eval 7", "epoch 1", "step 42", "finish any"]


def status(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def expected_exit(signal_name: str) -> int:
    return -signal.SIGKILL if signal_name == "SIGKILL" else 128 + signal.SIGTERM


@pytest.fixture(scope="module")
def reference(tmp_path_factory, losslab) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = losslab.train(*RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", POINTS)
def test_a_single_run_stopped_at_any_point_resumes_to_the_same_metrics(tmp_path, reference, signal_name, point,
                                                                      losslab):
    run_dir = tmp_path / "run"
    stopped = losslab.train(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, stop_at=f"{signal_name} {point}")
    assert stopped.returncode == expected_exit(signal_name), stopped.stderr[-3000:]
    finished = signal_name == "SIGTERM" and point in ("step 42", "finish any")
    if signal_name == "SIGTERM":  # a stop inside the loop is recorded; one while finishing lets the run finish
        assert status(run_dir) == ("completed" if finished else "interrupted")
    else:
        assert status(run_dir) is None

    resumed = losslab.train(f"trainer.resume={run_dir}", cwd=tmp_path)
    if finished:
        assert resumed.returncode == 2 and "nothing to resume" in resumed.stderr
    else:
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status(run_dir) == "completed"
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def stacked_reference(tmp_path_factory, losslab) -> Path:
    sweep_dir = tmp_path_factory.mktemp("stacked_reference") / "sweep"
    done = losslab.train(*STACK, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 jobs stacked" in done.stdout
    return sweep_dir


def rows(run_dir: Path) -> list[list[str]]:
    return list(csv.reader((run_dir / "metrics.csv").read_text().splitlines()))


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", POINTS)
def test_a_stacked_sweep_stopped_at_any_point_relaunches_to_the_same_metrics(tmp_path, stacked_reference,
                                                                             signal_name, point, losslab):
    """The members resume as a stack from their last.pt (mid-epoch where they stopped there) and write the
    uninterrupted stack's metrics.csv, byte for byte."""
    sweep_dir = tmp_path / "sweep"
    command = [*STACK, f"hydra.sweep.dir={sweep_dir}"]
    stopped = losslab.train(*command, cwd=tmp_path, stop_at=f"{signal_name} {point}")
    assert stopped.returncode == expected_exit(signal_name), stopped.stderr[-3000:]
    jobs = [d.name for d in job_dirs(sweep_dir)]
    assert jobs == [d.name for d in job_dirs(stacked_reference)] and len(jobs) == 2
    before = {job: rows(sweep_dir / job) for job in jobs}

    relaunched = losslab.train(*command, cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert "2 completed" in relaunched.stdout
    if not (signal_name == "SIGTERM" and point in ("step 42", "finish any")):  # the last step: they finish first
        assert re.search(r"2 jobs stacked on \w+: .*, resuming at step \d+", relaunched.stdout), relaunched.stdout
    for job in jobs:
        if signal_name == "SIGTERM":  # nothing written before the stop is dropped (a kill drops what last.pt lacks)
            assert rows(sweep_dir / job)[:len(before[job])] == before[job]
        assert (sweep_dir / job / "metrics.csv").read_bytes() == (stacked_reference / job / "metrics.csv").read_bytes()
