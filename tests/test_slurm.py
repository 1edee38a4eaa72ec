"""Sweeps on a real Slurm cluster (scripts/slurm/start-test-cluster.sh): cancelled, killed, timed-out, preempted
and relaunched jobs all end as results equal to an uninterrupted sweep's.

The commands are the ones a user types: `losslab-train -m hydra/launcher=slurm ...` with the resources the README
asks for, from a fresh dir, no hydra.sweep.dir; a relaunch is the command the sweep printed. Where a job must be
caught mid-training, LOSSLAB_TEST_STOP_AT (commands.stop_env: the test's hook, which sbatch's environment passes on
to the tasks) stops it at a chosen evaluation (SIGSTOP: the process waits there until Slurm's cancel or signal
arrives) or kills it there (SIGKILL), and `sleep=<s> step any` makes every step take that long, so a run outlasts
a one-minute time limit on any machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.fixtures import unwritable_dir
from helpers.slurm import (
    CONTINUE,
    drained_node,
    finish,
    launch,
    one_continuous_run,
    pending_tasks,
    rows,
    sacct_states,
    task_of,
    tasks_by_array,
    the_sweep_dir,
    wait_until,
)

from losslab.records.job_dirs import job_dirs, job_number

pytestmark = pytest.mark.slurm

SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
RUN = ["dataset=synthetic", "trainer.eval_every=0.5", "trainer.deterministic=true",
       "trainer.progress=log", "trainer.figures=false", "trainer.epochs=3"]  # 14 steps an epoch, evaluated every 7
STARTED = re.compile(r"^losslab sweep (\S+): the jobs' output", re.M)


def sweep_dir_of(output: str, cwd: Path) -> Path:
    return cwd / STARTED.search(output)[1]


def results(sweep_dir: Path) -> dict[int, tuple[str, dict, str]]:
    """Per job: status, final metrics and metrics.csv's text."""
    out = {}
    for d in job_dirs(sweep_dir):
        summary = json.loads((d / "summary.json").read_text())
        out[job_number(d)] = (summary["status"], summary["final"], (d / "metrics.csv").read_text())
    return out


def event_files(sweep_dir: Path) -> dict[int, int]:
    return {job_number(d): len(list(d.glob("events.out.tfevents.*"))) for d in job_dirs(sweep_dir)}


def reference(args: list[str], tmp_path: Path) -> dict:
    """The same sweep, uninterrupted, with Hydra's basic launcher in one process."""
    cwd = tmp_path / "reference"
    cwd.mkdir()
    proc = launch([*args, "hydra.sweep.dir=sweep"], cwd)
    assert finish(proc) and proc.returncode == 0, proc.output
    return results(cwd / "sweep")


def test_cancelled_and_killed_jobs_end_the_sweep_with_a_tally_and_a_relaunch_finishes_them(tmp_path):
    """Job 0 is cancelled with scancel while it waits at step 14's evaluation; job 1 is killed there (SIGKILL);
    jobs 2 and 3 complete."""
    args = [*SLURM, *RUN, "seed=0,1,2,3"]
    first = launch(args, tmp_path, stop_at="SIGSTOP eval 14 job=0;SIGKILL eval 14 job=1")
    wait_until(lambda: rows(the_sweep_dir(tmp_path), 0) >= 2, proc=first)
    sweep_dir = the_sweep_dir(tmp_path)
    subprocess.run(["scancel", task_of("synthetic-linear-ce", 0)], check=True)
    output = finish(first)
    assert first.returncode == 1, output
    assert "Traceback" not in output
    assert re.search(rf"^losslab sweep {re.escape(str(sweep_dir.relative_to(tmp_path)))}: 2 completed, "
                     r"2 interrupted \(1 cancelled\); report: .*report\.md; continue the 2 left with: ", output,
                     re.M), output
    statuses = {job_number(d): json.loads((d / "summary.json").read_text()) for d in job_dirs(sweep_dir)}
    assert statuses[0]["slurm"]["state"] == "CANCELLED" and statuses[0]["status"] == "interrupted"
    assert statuses[1]["slurm"]["state"] in ("FAILED", "CANCELLED") and statuses[1]["status"] == "interrupted"
    assert (job_dirs(sweep_dir)[0] / "checkpoints" / "last.pt").exists()
    report = (sweep_dir / "report.md").read_text()
    relaunch_command = CONTINUE.search(output)[1]
    assert relaunch_command in report and "| interrupted |" in report

    relaunch = launch(relaunch_command.split(), tmp_path)
    output = finish(relaunch)
    assert relaunch.returncode == 0, output
    assert "4 completed" in output
    assert results(sweep_dir) == reference([*RUN, "seed=0,1,2,3"], tmp_path)
    assert not any((d / "error.txt").exists() for d in job_dirs(sweep_dir))
    assert all(one_continuous_run(d) for d in job_dirs(sweep_dir))


def test_a_timed_out_and_a_preempted_job_are_requeued_and_resume_in_the_same_call(tmp_path):
    """A three-minute time limit: the default signal delay becomes 90 s, and Slurm, which checks time limits every
    half minute, sends USR2 between 30 and 90 s into each attempt. Every step sleeps 2.5 s, so a run (105 s of
    steps) outlasts its first attempt; job 1 is also preempted (`scancel --signal=USR2`) at step 7's evaluation,
    where it waits. The default launcher config requeues both."""
    args = [*SLURM, "hydra.launcher.timeout_min=3", *RUN, "seed=0,1"]
    proc = launch(args, tmp_path, stop_at="sleep=2.5 step any;SIGSTOP eval 7 job=1")
    wait_until(lambda: rows(the_sweep_dir(tmp_path), 1) >= 1, proc=proc)
    task = task_of("synthetic-linear-ce", 1)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    subprocess.run(["scancel", "--signal=CONT", task], check=True)
    output = finish(proc, timeout=1200)
    assert proc.returncode == 0, output
    sweep_dir = the_sweep_dir(tmp_path)
    assert "2 completed" in output and "Traceback" not in output
    array = task.split("_")[0]
    states = sacct_states(array)
    for job in (0, 1):
        mine = [line.split("|")[2] for line in states if line.startswith(f"{array}_{job}|")]
        assert "REQUEUED" in mine and mine[-1] == "COMPLETED", states
    assert results(sweep_dir) == reference([*RUN, "seed=0,1"], tmp_path)
    assert all(one_continuous_run(d) for d in job_dirs(sweep_dir))


def test_a_relaunch_while_the_first_launchers_jobs_run_never_trains_a_dir_twice(tmp_path):
    """The launcher is killed while job 1 trains (each of its steps sleeps 0.3 s) and relaunched at once. Each job's
    result is kept, not trained again: by the relaunching launcher, which does not submit a job whose result is
    there, or by the job's new task, which finds the result (job 1's after waiting for the first task to end) -
    which of the two depends on whether job 1 ended before the relaunch looked."""
    args = [*SLURM, *RUN, "seed=0,1"]
    first = launch(args, tmp_path, stop_at="sleep=0.3 step any job=1")
    wait_until(lambda: rows(the_sweep_dir(tmp_path), 1) >= 1, proc=first)
    sweep_dir = the_sweep_dir(tmp_path)
    names = subprocess.run(["squeue", "--noheader", "--format", "%j"], capture_output=True, text=True).stdout
    assert "synthetic-linear-ce/1" in names.split()
    first.send_signal(signal.SIGKILL)
    finish(first)
    relaunch = launch([*args, f"hydra.sweep.dir={sweep_dir}"], tmp_path, stop_at="sleep=0.3 step any job=1")
    output = finish(relaunch)
    assert relaunch.returncode == 0, output
    assert "2 completed" in output
    assert results(sweep_dir) == reference([*RUN, "seed=0,1"], tmp_path)
    assert event_files(sweep_dir) == {0: 1, 1: 1}  # one writer each: the relaunch trained nothing again
    task_logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*.out"))
    for number in (0, 1):  # "job N already completed: not submitted again", or its task's "... in <dir>: skipped"
        assert f"job {number} already completed" in output + task_logs, output + task_logs


def test_without_accounting_a_cancelled_job_still_ends_the_sweep(tmp_path, no_accounting):
    args = [*SLURM, *RUN, "seed=0,1"]
    proc = launch(args, tmp_path, stop_at="SIGSTOP eval 14 job=0")
    wait_until(lambda: rows(the_sweep_dir(tmp_path), 0) >= 2, proc=proc)
    subprocess.run(["scancel", task_of("synthetic-linear-ce", 0)], check=True)
    output = finish(proc, timeout=180)  # bounded: the launcher asks squeue, not sacct
    assert proc.returncode == 1 and "1 completed, 1 interrupted" in output, output
    summary = json.loads((job_dirs(the_sweep_dir(tmp_path))[0] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["slurm"]["state"] == "CANCELLED"


def test_jobs_are_named_by_sweep_and_number_and_a_failed_job_is_failed_in_slurm(tmp_path):
    proc = launch([*SLURM, *RUN[:-1], "trainer.epochs=1", "dataset.train_size=1000,100000"], tmp_path)
    output = finish(proc)
    assert proc.returncode == 1 and "1 completed, 1 failed" in output, output
    tasks = [p.name for p in the_sweep_dir(tmp_path).glob(".submitit/*") if re.fullmatch(r"\d+_\d+", p.name)]
    [array] = {task.split("_")[0] for task in tasks}

    def states() -> dict:
        return {line.split("|")[1]: line.split("|")[2] for line in sacct_states(array)}

    wait_until(lambda: len(states()) == 2 and "RUNNING" not in states().values(), timeout=60)  # accounting lags
    assert states() == {"synthetic-linear-ce/0": "COMPLETED", "synthetic-linear-ce/1": "FAILED"}


def test_a_submission_slurm_refuses_is_one_sentence(tmp_path):
    proc = launch([*SLURM, "hydra.launcher.partition=nosuchpartition", *RUN, "seed=0,1"], tmp_path)
    output = finish(proc)
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert re.search(r"^losslab-train: error: Slurm refused the sweep's jobs \(.*Invalid partition name specified\); "
                     r"nothing was submitted\.", output, re.M), output


def test_an_unwritable_run_dir_and_a_full_disk_end_with_a_tally_a_report_and_a_relaunch_of_only_those(tmp_path):
    """Job 1's run dir is read-only, job 2's a full disk (a 24 kB tmpfs): both tasks fail, their ends cannot be
    recorded, and the launcher says so, records job 0's result, writes the report and prints the continue command;
    once the dirs are writable that command submits the two jobs left, not job 0."""
    sweep_dir = tmp_path / "sweep"
    args = [*SLURM, *RUN, "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"]
    with unwritable_dir(sweep_dir / "1_seed=1"), unwritable_dir(sweep_dir / "2_seed=2", size="24k"):
        first = launch(args, tmp_path)
        output = finish(first)
    assert first.returncode == 1 and "Traceback" not in output, output
    assert re.search(r"^losslab sweep \S+: 1 completed, 2 unfinished; report: .*; continue the 2 left with: ",
                     output, re.M), output
    for job, reason in ((1, "Read-only file system"), (2, "No space left on device")):
        assert f"its end cannot be recorded in {sweep_dir / f'{job}_seed={job}'} ({reason})" in output, output
    relaunch_command = CONTINUE.search(output)[1]
    report = (sweep_dir / "report.md").read_text()
    assert "could not be written" in report and relaunch_command in report
    task_logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert "Read-only file system" in task_logs and "No space left on device" in task_logs

    relaunch = launch(relaunch_command.split(), tmp_path)
    output = finish(relaunch)
    assert relaunch.returncode == 0 and "3 completed" in output, output
    assert sorted(tasks_by_array(sweep_dir).values()) == [2, 3]


def test_a_job_killed_for_memory_is_named_and_continued_with_twice_the_memory_to_the_same_result(tmp_path):
    """The cluster kills a task over its --mem (slurm.conf's OverMemoryKill): job 1 takes 1.5 GB more at step 7's
    evaluation, over mem_gb=1. The continue command asks for 2 GB and submits job 1 alone, which resumes."""
    args = [*SLURM, *RUN, "seed=0,1"]
    first = launch(args, tmp_path, stop_at="sleep=0.3 step any job=1;hold_mb=1500 eval 7 job=1")
    output = finish(first)
    assert first.returncode == 1 and "Traceback" not in output, output
    assert re.search(r": 1 completed, 1 interrupted \(1 out of memory\); report: .*; continue the 1 left \(asking for "
                     r"twice the memory\) with: ", output), output
    sweep_dir = the_sweep_dir(tmp_path)
    summary = json.loads((job_dirs(sweep_dir)[1] / "summary.json").read_text())
    assert summary["cause"] == "out_of_memory" and "out of memory" in summary["ended"]
    relaunch_command = CONTINUE.search(output)[1]
    assert "hydra.launcher.mem_gb=2" in relaunch_command.split() and "hydra.launcher.mem_gb=1" not in relaunch_command

    relaunch = launch(relaunch_command.split(), tmp_path)
    output = finish(relaunch)
    assert relaunch.returncode == 0 and "2 completed" in output, output
    assert sorted(tasks_by_array(sweep_dir).values()) == [1, 2]
    assert results(sweep_dir) == reference([*RUN, "seed=0,1"], tmp_path)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stopped_launcher_prints_the_tally_the_scancel_line_and_the_command_that_continues(tmp_path, signal_name):
    """The node is drained, so the tasks wait (as on a down node) and the launcher says why every second; then
    the launcher gets Ctrl-C (SIGINT), SIGTERM or SIGHUP. The scancel it prints cancels its tasks, and the
    command it prints, run once the node is back, trains the sweep."""
    args = [*SLURM, "hydra.launcher.poll_s=0.5", "hydra.launcher.report_pending_s=1", *RUN, "seed=0,1"]
    with drained_node():
        launcher = launch(args, tmp_path)
        wait_until(lambda: len(pending_tasks()) == 2, timeout=60, proc=launcher)
        time.sleep(2)  # a pending report or two
        launcher.send_signal(getattr(signal, signal_name))
        output = finish(launcher, timeout=60)
        assert launcher.returncode == 128 + getattr(signal, signal_name), output
        assert "Traceback" not in output and re.search(r"^2 of the sweep's tasks are pending \(2 \S", output, re.M)
        stopped = re.search(r"the launcher was stopped by signal \d+ \(no job started so far\); its Slurm tasks go "
                            r"on without it: stop them with: (scancel \d+); or re-attach .* with: (losslab-train .+)$",
                            output, re.M)
        assert stopped, output
        subprocess.run(stopped[1].split(), check=True)
        wait_until(lambda: not pending_tasks(), timeout=30)
    if signal_name == "SIGINT":
        relaunch = launch(stopped[2].split(), tmp_path)
        output = finish(relaunch)
        assert relaunch.returncode == 0 and "2 completed" in output, output


def test_ten_tasks_cancelled_before_they_start_are_tallied_at_once(tmp_path):
    with drained_node():
        launcher = launch([*SLURM, "hydra.launcher.poll_s=1", *RUN, "seed=range(10)"], tmp_path)
        wait_until(lambda: len(pending_tasks()) == 10, timeout=60, proc=launcher)
        [array] = {task.split("_")[0] for task in pending_tasks()}
        subprocess.run(["scancel", array], check=True)
        cancelled = time.monotonic()
        output = finish(launcher, timeout=120)
        tallied_after_s = time.monotonic() - cancelled
    assert launcher.returncode == 1 and "10 interrupted (10 cancelled before it started)" in output, output
    assert tallied_after_s < 30, f"{tallied_after_s:.0f} s from the cancel to the tally"


def test_a_task_stopped_by_sigterm_records_interrupted_and_ends_cancelled_not_failed(tmp_path):
    """SIGTERM to job 1's task (not a cancel: `scancel --signal=TERM`) while it waits at step 7's evaluation: it
    writes last.pt and `interrupted`, then cancels itself, so sacct says CANCELLED, not FAILED."""
    proc = launch([*SLURM, *RUN, "seed=0,1"], tmp_path, stop_at="wait eval 7 job=1")
    wait_until(lambda: rows(the_sweep_dir(tmp_path), 1) >= 1, proc=proc)
    task = task_of("synthetic-linear-ce", 1)
    subprocess.run(["scancel", "--signal=TERM", task], check=True)
    output = finish(proc)
    assert proc.returncode == 1 and "1 completed, 1 interrupted" in output, output
    summary = json.loads((job_dirs(the_sweep_dir(tmp_path))[1] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["slurm"]["state"].startswith("CANCELLED")
    assert (job_dirs(the_sweep_dir(tmp_path))[1] / "checkpoints" / "last.pt").exists()

    def state() -> str:
        return next((line.split("|")[2] for line in sacct_states(task.split("_")[0]) if line.startswith(task)), "")

    wait_until(lambda: state() not in ("", "RUNNING"), timeout=60)  # accounting lags
    assert state().startswith("CANCELLED"), sacct_states(task.split("_")[0])
