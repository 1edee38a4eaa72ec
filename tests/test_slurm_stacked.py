"""`hydra/launcher=stacked` with a submitit executor: `submitit_slurm` on a real Slurm cluster
(scripts/slurm/start-test-cluster.sh): each chunk of at most `max_members` jobs trains as one stack in one array
task; a cancelled task and a preempted one end, after the launcher's call (and, for the cancelled one, the relaunch
the sweep prints), as the uninterrupted separate runs of every member.

The commands are the ones a user types, from a fresh dir without hydra.sweep.dir; LOSSLAB_TEST_STOP_AT's `job=<n>`
stops the stack that holds job n (the tests' hook, stop_hook/sitecustomize.py). The separate reference runs train
in this process (losslab.training.loop.fit), each from the config its member's overrides compose. `submitit_local` runs
the tasks on this machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers.commands import metrics_rows
from helpers.slurm import (
    CONTINUE,
    finish,
    launch,
    numbers_of,
    one_continuous_run,
    rows,
    sacct_states,
    task_of,
    the_sweep_dir,
    wait_until,
)
from omegaconf import OmegaConf

from hydra_plugins.losslab_launcher.stacked_launcher import numbers_text
from losslab.commands.cli import compose
from losslab.records.job_dirs import job_dir, job_dirs
from losslab.training.loop import fit

STACKED = ["hydra/launcher=stacked", "hydra.launcher.executor=submitit_slurm", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.mem_gb=1"]
RUN = ["dataset=synthetic", "trainer.eval_every=0.5", "trainer.deterministic=true", "trainer.progress=log",
       "trainer.figures=false", "trainer.epochs=3"]
LINEAR_GRID = ["optimizer.lr=0.3,0.1,0.03,0.01", "trainer.l2=0,0.001,0.01,0.1", "seed=0,1,2,3"]  # 14 steps an epoch
LENET = ["model=lenet", "hydra.launcher.conv_on_cpu=true", "trainer.device=cpu", "dataset.train_n=768"]  # 4 an epoch
LENET_GRID = ["optimizer.lr=0.05,0.01", "optimizer.momentum=0,0.9", "seed=0,1,2,3"]
RESUMED = re.compile(r"(\d+) jobs stacked on \w+: .*, resuming at step (\d+)")


def task_logs(sweep_dir: Path) -> dict[str, str]:
    """Each task's output (submitit's log files), by task id."""
    return {p.parent.name: p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.out")}


def interrupt_two_stacks(args: list[str], cwd: Path, cancel: tuple[int, int], preempt: tuple[int, int],
                         eval_every: int):
    """Launch the sweep; when the stack of job `cancel[0]` waits at step `cancel[1]`'s evaluation
    (LOSSLAB_TEST_STOP_AT's `wait`), scancel it; then, when the stack of job `preempt[0]` waits at step
    `preempt[1]`'s, preempt it (`scancel --signal=USR2`, as slurmctld signals a preempted job). Returns the
    finished launcher process and its sweep dir.

    The preempted stack must be one of the array's last tasks to start: Slurm 22.05 refuses `scancel --signal` to a
    task of an array with a throttle (submitit's `%<array_parallelism>`) while some of its tasks are pending ("Job
    can not be altered now"); the time limit's and a preemption's signals, which slurmctld sends itself, are not
    concerned."""
    proc = launch(args, cwd, stop_at=";".join(f"wait eval {step} job={job}" for job, step in (cancel, preempt)))
    wait_until(lambda: rows(the_sweep_dir(cwd), cancel[0]) >= cancel[1] // eval_every, proc=proc)
    sweep_dir = the_sweep_dir(cwd)
    name = sweep_dir.parent.parent.name
    subprocess.run(["scancel", task_of(name, cancel[0], timeout=60)], check=True)
    wait_until(lambda: rows(sweep_dir, preempt[0]) >= preempt[1] // eval_every, proc=proc)
    subprocess.run(["scancel", "--signal=USR2", task_of(name, preempt[0], timeout=60)], check=True, timeout=60)
    finish(proc, timeout=900)
    return proc, sweep_dir


def array_tasks(task: str) -> dict[str, list[str]]:
    """The states accounting recorded for each task of `task`'s array, by task name, requeues included."""
    def tasks() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in sacct_states(task.split("_")[0]):
            _, name, state = line.split("|")
            found.setdefault(name, []).append(state)
        return found

    wait_until(lambda: tasks() and not any("RUNNING" in states or "PENDING" in states for states in
                                           tasks().values()), timeout=60)  # accounting lags
    return tasks()


def assert_separate_runs(sweep_dir: Path, separate_dir: Path, tol: float, argmax_tol: float = 0.0) -> None:
    """Every member's status, steps, final metrics and metrics.csv rows equal its separate run's (to `tol`,
    absolute or relative; accuracy and ECE to `argmax_tol`, as tests/test_stacked_launcher.py compares them)."""
    def close(key: str, value: float):
        return pytest.approx(value, rel=tol, abs=max(tol, argmax_tol) if key.endswith(("/acc", "/ece")) else tol)

    for run_dir in job_dirs(sweep_dir):
        member = json.loads((run_dir / "summary.json").read_text())
        alone = fit(compose(member["overrides"]), separate_dir / run_dir.name, overrides=member["overrides"])
        assert (member["status"], member["steps"]) == (alone["status"], alone["steps"]), run_dir.name
        assert member["final"].keys() == alone["final"].keys()
        for key, value in alone["final"].items():
            assert member["final"][key] == close(key, value), (run_dir.name, key)
        rows_alone, rows_member = metrics_rows(separate_dir / run_dir.name), metrics_rows(run_dir)
        assert len(rows_alone) == len(rows_member), run_dir.name
        for a, b in zip(rows_alone, rows_member):
            for key in a:
                assert (b[key] == "") if a[key] == "" else float(b[key]) == close(key, float(a[key])), \
                    (run_dir.name, key)


def check_sweep(tmp_path: Path, args: list[str], chunks: list[str], cancel: tuple[int, int],
                preempt: tuple[int, int], eval_every: int) -> tuple[Path, float]:
    """The whole story for one grid: the launch with a cancelled and a preempted stack, the relaunch it prints; the
    array tasks are the `chunks` (their job numbers), each a stack that resumed where it stopped. Returns the sweep
    dir and the time the two launcher calls took."""
    started = time.monotonic()
    first, sweep_dir = interrupt_two_stacks(args, tmp_path, cancel, preempt, eval_every)
    name, members = sweep_dir.parent.parent.name, len(job_dirs(sweep_dir))
    cancelled = numbers_of(next(chunk for chunk in chunks if cancel[0] in numbers_of(chunk)))
    assert first.returncode == 1 and "Traceback" not in first.output, first.output
    assert re.search(rf"^losslab sweep \S+: {members - len(cancelled)} completed, {len(cancelled)} interrupted "
                     rf"\({len(cancelled)} cancelled\); report: .*report\.md; continue the \d+ left with: ",
                     first.output, re.M), first.output
    [task] = {p.name for p in sweep_dir.glob(".submitit/*_0")}
    states = array_tasks(task)
    assert sorted(states) == sorted(f"{name}/{chunk}" for chunk in chunks), states
    preempted = next(f"{name}/{chunk}" for chunk in chunks if preempt[0] in numbers_of(chunk))
    assert "REQUEUED" in states[preempted] and states[preempted][-1] == "COMPLETED", states
    for job in cancelled:
        summary = json.loads((job_dir(sweep_dir, job) / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["slurm"]["state"] == "CANCELLED", summary
    resumed = [m.groups() for log in task_logs(sweep_dir).values() for m in RESUMED.finditer(log)]
    assert (str(len(numbers_of(preempted))), str(preempt[1])) in resumed, task_logs(sweep_dir)

    first_tasks = set(task_logs(sweep_dir))
    relaunch = launch(CONTINUE.search(first.output)[1].split(), tmp_path)
    finish(relaunch, timeout=900)
    took = time.monotonic() - started
    assert relaunch.returncode == 0 and f"{members} completed" in relaunch.output, relaunch.output
    resumed = [(int(n), int(step)) for task, log in task_logs(sweep_dir).items() if task not in first_tasks
               for n, step in RESUMED.findall(log)]
    # Slurm's SIGCONT wakes the stack a moment before its SIGTERM arrives: it may take a step more
    assert len(resumed) == 1 and resumed[0][0] == len(cancelled) and resumed[0][1] >= cancel[1], resumed
    stacks = {tuple(json.loads((d / "summary.json").read_text())["stacked"]["jobs"]) for d in job_dirs(sweep_dir)}
    assert sorted(numbers_text([int(job.split("_")[0]) for job in stack]) for stack in stacks) == sorted(chunks)
    assert f"{members} jobs, {members} aggregated" in (sweep_dir / "report.md").read_text()
    assert all(one_continuous_run(d) for d in job_dirs(sweep_dir))
    return sweep_dir, took


@pytest.mark.slurm
def test_a_64_job_linear_grid_trains_as_4_array_tasks_of_16_through_a_cancel_a_preemption_and_a_relaunch(tmp_path):
    """Stack 0-15 is cancelled at step 14's evaluation and resumes there in the relaunch; stack 48-63, the last to
    start, is preempted at step 7's and, requeued, resumes there within the first call."""
    args = [*STACKED, "hydra.launcher.max_members=16", *RUN, *LINEAR_GRID]
    sweep_dir, took = check_sweep(tmp_path, args, ["0-15", "16-31", "32-47", "48-63"], cancel=(0, 14),
                                  preempt=(48, 7), eval_every=7)
    print(f"the two launcher calls took {took:.0f} s")
    assert_separate_runs(sweep_dir, tmp_path / "separate", tol=1e-5)


@pytest.mark.slurm
def test_a_16_job_lenet_grid_trains_as_2_array_tasks_of_8_through_a_cancel_a_preemption_and_a_relaunch(tmp_path):
    """Convolutional stacks on the CPU (conv_on_cpu), 4 steps an epoch (512 training images, 256 go to validation):
    stack 0-7 is cancelled at step 6's evaluation, stack 8-15 preempted at step 4's."""
    args = [*STACKED, "hydra.launcher.max_members=8", *RUN, *LENET, *LENET_GRID]
    sweep_dir, took = check_sweep(tmp_path, args, ["0-7", "8-15"], cancel=(0, 6), preempt=(8, 4), eval_every=2)
    print(f"the two launcher calls took {took:.0f} s")
    assert_separate_runs(sweep_dir, tmp_path / "separate", tol=1e-4, argmax_tol=0.01)


def test_the_stacked_launcher_takes_every_key_of_the_slurm_launcher_with_its_defaults():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `sweep` extra (hydra/launcher=slurm)")
    from hydra_plugins.losslab_launcher.slurm_launcher import LosslabSlurmConf
    from hydra_plugins.losslab_launcher.stacked_launcher import StackedLauncherConf

    slurm, stacked = (OmegaConf.to_container(OmegaConf.structured(conf), resolve=False)
                      for conf in (LosslabSlurmConf, StackedLauncherConf))
    assert {key: stacked.get(key, "missing") for key in slurm if key != "_target_"} == \
        {key: value for key, value in slurm.items() if key != "_target_"}


def test_a_task_is_named_by_its_job_numbers_as_ranges():
    assert numbers_text([10, 0, 1, 2, 3, 8, 11]) == "0-3,8,10-11"
    assert numbers_of("synthetic-linear-ce/0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11}


def test_the_local_executor_trains_each_chunk_in_its_own_task_to_the_separate_runs(tmp_path, losslab):
    proc = losslab.sweep("hydra/launcher=stacked", "hydra.launcher.executor=submitit_local",
                         "hydra.launcher.max_members=2", *RUN[:-1], "trainer.epochs=1", "optimizer.lr=0.3,0.03",
                         "seed=0,1", cwd=tmp_path)
    assert proc.returncode == 0 and "4 completed" in proc.output, proc.output
    sweep_dir = the_sweep_dir(tmp_path)
    assert len(task_logs(sweep_dir)) == 2
    stacks = {tuple(json.loads((d / "summary.json").read_text())["stacked"]["jobs"]) for d in job_dirs(sweep_dir)}
    assert sorted(numbers_text([int(job.split("_")[0]) for job in stack]) for stack in stacks) == ["0-1", "2-3"]
    assert_separate_runs(sweep_dir, tmp_path / "separate", tol=1e-5)
