"""The Slurm cluster works as the tests marked `slurm` need it (scripts/slurm/start-test-cluster.sh): array tasks
that ask for a little memory run side by side, `sacct` reports how jobs ended, `scancel` ends a job within KillWait,
and without slurmdbd `sacct` fails while the scheduler still answers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def slurm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check:
        assert done.returncode == 0, f"`{' '.join(argv)}` exited with {done.returncode}: {done.stderr.strip()}"
    return done


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails after `seconds`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"{what} did not happen within {seconds} s"
        time.sleep(0.2)
    return time.monotonic() - start


def sbatch(tmp_path: Path, *options: str, wrap: str) -> str:
    return slurm("sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={tmp_path}/%j.out", "--time=2",
                 *options, f"--wrap={wrap}").stdout.strip()


def squeue_state(job: str) -> str:
    """The job's state as slurmctld knows it (RUNNING, COMPLETING, CANCELLED, ...)."""
    return slurm("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").stdout.strip()


def sacct_states(job: str) -> dict[str, str]:
    """{job or array task id: state} as accounting reports it (a cancel reads `CANCELLED by <uid>`)."""
    out = slurm("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State", check=False).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def node_free() -> bool:
    return not slurm("squeue", "-h", "-t", "PD,R,CG").stdout.strip()


@pytest.fixture
def free_node(slurm_cluster) -> None:
    """The node without other jobs (a shared test machine may still run another session's)."""
    wait_until(node_free, 120, "the node's other jobs ending (squeue -t PD,R,CG)")


def test_array_tasks_asking_for_memory_run_side_by_side(free_node, tmp_path):
    job = sbatch(tmp_path, "--array=0-1", "--mem=100M", "--cpus-per-task=1",
                 wrap="date +%s.%N > start_$SLURM_ARRAY_TASK_ID; sleep 4; date +%s.%N > end_$SLURM_ARRAY_TASK_ID")
    done = {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}
    wait_until(lambda: sacct_states(job) == done, 60, f"sacct reporting {done}")
    starts = [float((tmp_path / f"start_{task}").read_text()) for task in (0, 1)]
    ends = [float((tmp_path / f"end_{task}").read_text()) for task in (0, 1)]
    assert max(starts) < min(ends), f"the tasks ran one after the other: starts {starts}, ends {ends}"


def test_scancel_ends_a_running_job_within_kill_wait(free_node, tmp_path):
    config = slurm("scontrol", "show", "config").stdout
    kill_wait = int(next(line.split("=")[1].split()[0] for line in config.splitlines() if line.startswith("KillWait")))
    job = sbatch(tmp_path, wrap="trap '' TERM; touch started; sleep 300")  # SIGTERM ignored: SIGKILL ends it
    wait_until(lambda: squeue_state(job) == "RUNNING" and (tmp_path / "started").exists(), 30, f"job {job} running")
    slurm("scancel", job)
    took = wait_until(lambda: squeue_state(job) == "CANCELLED", kill_wait + 8, f"job {job} ending after scancel")
    wait_until(lambda: sacct_states(job).get(job, "").startswith("CANCELLED"), 30, f"sacct reporting {job} CANCELLED")
    print(f"cancelled job {job} ended {took:.1f} s after scancel (KillWait={kill_wait})")


def test_without_accounting_sacct_fails_and_the_scheduler_answers(no_accounting):
    failed = slurm("sacct", "-n", "-X", check=False)
    assert failed.returncode != 0, f"sacct worked without slurmdbd: {failed.stdout}"
    slurm("squeue")
    slurm("sinfo")
