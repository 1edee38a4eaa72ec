"""Sweeps on the Slurm test cluster as test_slurm.py and test_slurm_stacked.py drive them: a launcher process
started as a user starts it, waits on what its jobs write, and the cluster's own view of its tasks (squeue, sacct)."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import time
from pathlib import Path

from helpers.commands import stop_env
from helpers.tb_events import read_events
from losslab.records.job_dirs import job_dirs, job_number

CONTINUE = re.compile(r"; continue the \d+ left(?: \([^)]*\))? with: (.+)$", re.M)


def launch(args: list[str], cwd: Path, stop_at: str = "") -> subprocess.Popen:
    env = stop_env({k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, stop_at)
    command = args if args[0] == "losslab-train" else ["losslab-train", "-m", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    proc.output = proc.communicate(timeout=timeout)[0]
    return proc.output


def wait_until(condition, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.5)


def the_sweep_dir(cwd: Path) -> Path | None:
    found = sorted(cwd.glob("outputs/*/multirun/*"))
    return found[0] if found else None


def rows(sweep_dir: Path | None, job: int) -> int:
    """Rows in job `job`'s metrics.csv (0 until it has one)."""
    for d in job_dirs(sweep_dir) if sweep_dir and sweep_dir.is_dir() else []:
        if job_number(d) == job and (d / "metrics.csv").exists():
            return len((d / "metrics.csv").read_text().splitlines()) - 1
    return 0


def task_names(sweep_name: str) -> dict[str, str]:
    """The sweep's Slurm tasks in squeue, by name (`<sweep name>/<job numbers>`): their task id
    (`<array>_<index>`, which scancel takes; given an array's own id it signals all its tasks)."""
    listed = subprocess.run(["squeue", "--noheader", "--format", "%i %j"], capture_output=True, text=True).stdout
    return {name: task for task, name in (line.split() for line in listed.splitlines())
            if name.startswith(f"{sweep_name}/")}


def numbers_of(name: str) -> set[int]:
    """The job numbers a task's name lists: `synthetic-linear-ce/0-3,8` -> {0, 1, 2, 3, 8} (a stacked launcher's
    task trains several), `synthetic-linear-ce/1` -> {1}."""
    numbers = set()
    for part in name.rpartition("/")[2].split(","):
        first, _, last = part.partition("-")
        numbers |= set(range(int(first), int(last or first) + 1))
    return numbers


def task_of(sweep_name: str, job: int, timeout: float = 30) -> str:
    """The Slurm task id of the task that trains job `job` of the sweep, by the name the task gives itself."""
    def holding() -> list[str]:
        return [task for name, task in task_names(sweep_name).items() if job in numbers_of(name)]

    wait_until(lambda: len(holding()) == 1, timeout=timeout)
    return holding()[0]


def one_continuous_run(run_dir: Path) -> bool:
    """Whether TensorBoard shows every evaluation of metrics.csv once, in order, across all the run's event files
    (a resumed run's file purges what the stopped one wrote after its checkpoint)."""
    with open(run_dir / "metrics.csv") as f:  # the final row repeats the last evaluation's step
        evaluated = sorted({int(row["step"]) for row in csv.DictReader(f) if row["val/acc"]})
    return [event.step for event in read_events(run_dir).Scalars("val/acc")] == evaluated


def sacct_states(task_prefix: str) -> list[str]:
    """Every state accounting recorded for the tasks of an array, requeues included (`--duplicates`)."""
    listed = subprocess.run(["sacct", "--noheader", "--parsable2", "--duplicates", "--allocations", "--format",
                             "JobID,JobName,State", "--jobs", task_prefix], capture_output=True, text=True)
    return listed.stdout.splitlines()


@contextlib.contextmanager
def drained_node():
    """The test cluster's node drained (it takes no new job: tasks stay PENDING, as on a down node), then back."""
    node = subprocess.run(["sinfo", "--noheader", "--format", "%N"], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=losslab test"], check=True)
    try:
        yield node
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=True)


def pending_tasks() -> list[str]:
    listed = subprocess.run(["squeue", "--noheader", "--array", "--states", "PENDING", "--format", "%i"],
                            capture_output=True, text=True)
    return listed.stdout.split()


def tasks_by_array(sweep_dir: Path) -> dict[str, int]:
    """How many tasks each submission of the sweep had, from the folders submitit made: `<array>_<task>` for each
    task of an array, `<job id>` alone for a submission of one job (submitit submits that as a plain job)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name)]
    ids = {name.split("_")[0] for name in names}
    return {i: sum(name.startswith(f"{i}_") for name in names) or 1 for i in sorted(ids)}
