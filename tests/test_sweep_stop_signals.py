"""Ctrl-C in a sweep, whichever local launcher runs it: SIGINT to the launcher's process group (what a terminal
sends to the command and every process it started) mid-epoch. The sweep ends with its tally, its report (after a
finished job) and the command that continues it, with no traceback; every stopped job has its last.pt and no lock;
the continue command finishes every job to the metrics of an uninterrupted sweep, byte for byte. (Slurm's launcher:
tests/test_slurm.py.)

The grid: two synthetic runs of 3 epochs (14 steps each), an evaluation every 7 steps. Job 1 sends the signal
when its step 21's evaluation is written (LOSSLAB_TEST_STOP_AT, tests/stop_hook): mid-epoch. Job 0 is wherever
its launcher has it then: finished (basic runs it first), stopped at the same step (stacked: one model), or
anywhere in its run (joblib and submitit_local run both at once).
"""

import re
import shlex
import signal

import pytest
from helpers.commands import summaries

from losslab.records.job_dirs import job_dir

GRID = ["dataset=synthetic", "model=fnn", "trainer.epochs=3", "trainer.eval_every=0.5", "trainer.figures=false",
        "trainer.deterministic=true", "trainer.progress=log", "optimizer.lr=0.1,0.05"]
LAUNCHERS = {"basic": [], "stacked": [], "joblib": ["hydra.launcher.n_jobs=2"], "submitit_local": []}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ctrl_c_in_a_sweep_ends_with_its_tally_and_continues_to_the_uninterrupted_metrics(launcher, tmp_path,
                                                                                         losslab):
    grid = ["-m", f"hydra/launcher={launcher}", *LAUNCHERS[launcher], *GRID]
    reference = losslab.run("losslab-train", *grid, f"hydra.sweep.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    sweep_dir = tmp_path / "s"
    stopped = losslab.start(*grid, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, own_group=True,
                            stop_at="SIGINT@group eval 21 job=1")
    output = stopped.communicate(timeout=600)[0]
    assert stopped.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    ended = summaries(sweep_dir)
    assert ended[1]["status"] == "interrupted" and ended[1]["steps"] == 21, ended[1]
    assert {summary["status"] for summary in ended.values()} <= {"completed", "interrupted"}
    for job, summary in ended.items():
        assert not (job_dir(sweep_dir, job) / ".lock").exists()
        if summary["status"] == "interrupted":
            assert (job_dir(sweep_dir, job) / "checkpoints" / "last.pt").exists()
    finished = sum(summary["status"] == "completed" for summary in ended.values())
    tally = ", ".join(f"{n} {state}" for state, n in (("completed", finished), ("interrupted", 2 - finished)) if n)
    report = f"; report: {sweep_dir / 'report.md'}" if finished else ""
    line = re.search(rf"^losslab sweep {re.escape(str(sweep_dir))} stopped by signal 2: {tally}{re.escape(report)}"
                     r"; run the rest with: (.+)$", output, re.MULTILINE)
    assert line, output
    assert (sweep_dir / "report.md").exists() == bool(finished)

    continued = losslab.run(*shlex.split(line[1]), cwd=tmp_path)
    assert continued.returncode == 0, continued.stdout + continued.stderr
    assert "2 completed" in continued.stdout
    expected = summaries(tmp_path / "reference")
    for job, summary in summaries(sweep_dir).items():
        assert summary["final"] == expected[job]["final"]
        name = job_dir(sweep_dir, job).name
        assert (sweep_dir / name / "metrics.csv").read_bytes() == \
            (tmp_path / "reference" / name / "metrics.csv").read_bytes()
