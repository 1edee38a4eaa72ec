"""What `hydra/launcher=slurm` (hydra_plugins.losslab_launcher.slurm_launcher) does with Slurm: every job ends as a
recorded result. `hydra/launcher=stacked` with `hydra.launcher.executor=submitit_slurm`
(hydra_plugins.losslab_launcher.stacked_launcher) does the same with one stack of jobs per task, named
`<sweep name>/<its job numbers>`: what follows holds for each of its jobs.

In each job (a Slurm array task):
- The task renames itself `<sweep name>/<job number>` so that `squeue` and `sacct` say which sweep and job it is.
- submitit's preemption signal (USR2, sent `signal_delay_s` before the time limit or by `scancel --signal=USR2`)
  stops training between two steps like any stop signal: last.pt and an `interrupted` summary are written, and
  only then does submitit's own handler requeue the task (`max_num_timeout` times for time-outs). The requeued
  task resumes from last.pt.
- A job that losslab records as failed exits non-zero, so Slurm says FAILED.

In the launcher (the `losslab-train -m` process):
- It waits for the tasks by asking `squeue` (slurmctld), not `sacct`, so a cancelled or killed task is seen at
  once and a cluster without accounting cannot hang it.
- A task that ends without a result (cancelled, killed, out of memory, timed out too often) is recorded in its run
  dir's summary.json with Slurm's job id and state, the other tasks are waited for, and the sweep ends with its
  tally and report (losslab.sweeps.sweep.SweepCallback); relaunching the same command continues what was left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn

from losslab.errors import UserError

log = logging.getLogger("losslab")
ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED,REQUEUE_FED,REQUEUE_HOLD,RESIZING,SIGNALING," \
         "STAGE_OUT,PREEMPTED"  # squeue --states: a task in one of these has not ended
RESULT_LATE_S = 15  # how long a shared filesystem may take to show a task's result file
UNRECORDED: dict[str, list[str]] = {}  # sweep dir -> the ends its launcher could not write into run dirs


class JobFailed(Exception):
    """Raised in a Slurm task whose job losslab recorded as failed, so that Slurm records it FAILED too."""


def require_submitit(executor: str) -> None:
    """Refuse `hydra.launcher.executor=<executor>` where submitit or Hydra's submitit launcher, which the `sweep`
    extra installs, is missing."""
    try:
        import hydra_plugins.hydra_submitit_launcher.config  # noqa: F401
        import submitit  # noqa: F401
    except ImportError:
        raise UserError(f"hydra.launcher.executor={executor} needs submitit and Hydra's submitit launcher, which "
                        f"the `sweep` extra installs (pip install -e \".[sweep]\"); without them use "
                        f"hydra.launcher.executor=in_process.") from None


def build_executor(params: dict, name: str, cluster: str = "slurm"):
    """submitit's AutoExecutor for `cluster` (slurm, local) with the keys of hydra/launcher=slurm in `params`, as
    Hydra's submitit launcher builds it; the array is named `name`. USR2 comes `signal_delay_s` before the time
    limit, at most half of `timeout_min` (a signal at the start would requeue a task before it trains)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = {**params, "name": name}
    half = 60 * int(params["timeout_min"]) // 2
    if params["signal_delay_s"] > half:
        log.info("signal_delay_s %s is over half of timeout_min; the tasks get USR2 %d s before their time limit",
                 params["signal_delay_s"], half)
        params["signal_delay_s"] = half
    built = submitit.AutoExecutor(cluster=cluster, folder=params.pop("submitit_folder"),
                                  slurm_max_num_timeout=params.pop("max_num_timeout"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    built.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
    return built


def submit(executor, launcher, arguments: list[tuple]) -> list:
    """The jobs as one array; sbatch's refusal (no controller, a partition or account that does not exist, ...) as
    one sentence."""
    from submitit.core.utils import FailedJobError

    try:
        return executor.map_array(launcher, *zip(*arguments))
    except FailedJobError as e:
        reason = " ".join(str(e).split())
        raise UserError(f"Slurm refused the sweep's jobs ({reason}); nothing was submitted. Check the "
                        "hydra.launcher keys (partition, account, resources) and that the cluster answers "
                        "`sinfo`.") from None


def rename_task(name: str) -> None:
    """Name this Slurm task (squeue, sacct); a cluster that refuses leaves the array's name."""
    task = this_task()
    if task:
        subprocess.run(["scontrol", "update", f"JobId={task}", f"JobName={name}"], capture_output=True, timeout=30)


def end_stopped_task(signum: int) -> None:
    """After a stop signal has written last.pt and an `interrupted` summary. Submitit's preemption signal: let
    submitit's handler (restored when training ended) checkpoint this job and requeue it; it exits the process, or
    raises when it does not requeue (timed out more than `max_num_timeout` times). SIGTERM or SIGINT: the task
    cancels itself, so that Slurm records it CANCELLED, as stopped, not FAILED like a job that raised (a task that
    `scancel` stopped is CANCELLED already, and stays so)."""
    from losslab.training.runtime import preemption_signal  # imports torch, which the launcher's process does without

    if signum != preemption_signal():
        task = this_task()
        if task:
            subprocess.run(["scancel", task], capture_output=True, timeout=30)
        return
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


def this_task() -> str | None:
    """This Slurm task's id as scancel and scontrol take it (`<array>_<index>`, or the job id), None outside Slurm."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def ignore_preemption() -> None:
    from losslab.training.runtime import preemption_signal

    signal.signal(preemption_signal(), signal.SIG_IGN)


class LauncherStopped(BaseException):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) reached the launcher while it waited for its tasks."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stops_reported(sweep_dir: Path, jobs: list):
    """While the launcher waits for `jobs`: Ctrl-C, SIGTERM or SIGHUP prints the tally so far, the Slurm arrays
    with the `scancel` that stops them (the tasks go on without the launcher) and the command that re-attaches
    (it waits for the running jobs, keeps the finished ones and submits the rest); then Interrupted is raised,
    and losslab-train exits with 128 + the signal's number."""
    from losslab.errors import Interrupted
    from losslab.records.sweep_state import causes, continue_command, tally, tally_text

    def stop(signum, frame):
        raise LauncherStopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except LauncherStopped as stopped:
        arrays = " ".join(sorted({job.job_id.split("_")[0] for job in jobs}))
        print(f"losslab sweep {sweep_dir}: the launcher was stopped by signal {stopped.signum} "
              f"({tally_text(tally(sweep_dir), causes(sweep_dir))} so far); its Slurm tasks go on without it: stop "
              f"them with: scancel {arrays}; or re-attach (running jobs are waited for, finished ones kept) with: "
              f"{continue_command(sweep_dir)}", flush=True)
        raise Interrupted(stopped.signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_for_tasks(jobs: list, poll_s: float, report_pending_s: float = 60) -> None:
    """Until no task is pending or running: asks slurmctld (`squeue`), which answers without accounting. A task
    must be gone in two answers in a row (a requeued task passes through states between). Every
    `report_pending_s` while tasks are pending, says how many and why (squeue's reason)."""
    array_ids = sorted({job.job_id.split("_")[0] for job in jobs})
    gone_once: set[str] = set()
    next_report = time.monotonic() + report_pending_s
    while True:
        active = active_tasks(array_ids)
        if active is not None:
            ended = {job.job_id for job in jobs if job.job_id not in active}
            if ended == {job.job_id for job in jobs} and ended <= gone_once:
                return
            gone_once = ended
            if time.monotonic() >= next_report:
                report_pending(active)
                next_report = time.monotonic() + report_pending_s
        time.sleep(poll_s)


def report_pending(active: dict[str, tuple[str, str]]) -> None:
    """`3 of the sweep's tasks are pending (2 Resources, 1 ReqNodeNotAvail)`, when any is."""
    reasons = [reason for state, reason in active.values() if state == "PENDING"]
    if reasons:
        counted = ", ".join(f"{reasons.count(reason)} {reason}" for reason in sorted(set(reasons)))
        print(f"{len(reasons)} of the sweep's tasks are pending ({counted}); the launcher waits for them (Ctrl-C "
              "stops it and says how to cancel them)", flush=True)


def active_tasks(array_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """The tasks Slurm has not ended, by id (`<array>_<task>`), with their state and squeue's reason; None when
    slurmctld does not answer."""
    command = ["squeue", "--noheader", "--array", "--states", ACTIVE, "--format", "%i %T %r", "--jobs",
               ",".join(array_ids)]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("squeue did not answer (%s); asking again in a while", e)
        return None
    if listed.returncode != 0:
        if "Invalid job id" in listed.stderr:  # every job has left slurmctld's memory
            return {}
        log.warning("squeue failed (%s); asking again in a while", listed.stderr.strip() or listed.returncode)
        return None
    rows = [line.split(maxsplit=2) for line in listed.stdout.splitlines() if line.strip()]
    return {row[0]: (row[1] if len(row) > 1 else "", row[2] if len(row) > 2 else "") for row in rows}


@dataclass
class TaskEnd:
    """How a task ended: what it returned (a JobReturn, or a stack's list of them; None without a result),
    Slurm's state, the last line of its error, and the cause losslab names (CAUSES) where it can tell."""

    result: Any
    state: str
    error: str | None
    cause: str | None


def task_end(job, slurm: bool = True) -> TaskEnd:
    """Read an ended task's end at once: its result file, else its state (`scontrol`/`sacct` on Slurm, submitit's
    own for a local task). Only a task that Slurm says ended by itself (COMPLETED, FAILED) but whose result file is
    not there yet is waited for (a shared filesystem may show it late); a cancelled or killed one wrote none."""
    state = None
    if not job.paths.result_pickle.exists():
        state = final_state(job.job_id) if slurm else str(job.state)
        if state.split()[0] in ("COMPLETED", "FAILED"):
            deadline = time.monotonic() + RESULT_LATE_S
            while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
    result = read_result(job)
    if result is not None and not isinstance(result, str):
        return TaskEnd(result, "COMPLETED", None, None)
    state = state or (final_state(job.job_id) if slurm else str(job.state))
    return TaskEnd(None, state, result, cause_of(job, state))


def cause_of(job, state: str) -> str | None:
    """Why a task ended without a result, from Slurm's state and its stderr (where slurmstepd says it killed the
    task for memory): a key of CAUSES, or None."""
    try:
        stderr = job.paths.stderr.read_text(errors="replace")[-20000:]
    except OSError:
        stderr = ""
    if state.startswith("OUT_OF_MEMORY") or re.search(r"slurmstepd[^:\n]*: error: .*(exceeded memory limit|oom-kill)",
                                                       stderr):
        return "out_of_memory"
    if state.startswith("CANCELLED"):
        return "cancelled" if job.paths.stdout.exists() else "cancelled_before_start"
    return {"NODE_FAIL": "node_failure", "TIMEOUT": "time_limit", "PREEMPTED": "preempted"}.get(state.split()[0])


def read_result(job) -> JobReturn | list[JobReturn] | str | None:
    """What the task returned (a JobReturn, or a list of them for a stack); the last line of its error when it
    raised; None when it wrote nothing (killed, cancelled). Asks the result file before `job.result()`, whose wait
    would ask accounting about a task that wrote none."""
    from submitit.core.utils import FailedJobError

    if not job.paths.result_pickle.exists():
        return None
    try:
        return job.result()
    except FailedJobError as e:
        return error_line(str(e))


def error_line(message: str) -> str:
    """The last line of the task's traceback in submitit's FailedJobError message (the trace between two lines of
    dashes), else the message's first line."""
    lines = [line.strip() for line in message.strip().splitlines()]
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    trace = lines[rules[0] + 1:rules[1]] if len(rules) >= 2 else []
    return next((line for line in reversed(trace) if line), lines[0] if lines else "error")


def final_state(task: str) -> str:
    """Slurm's state of an ended task: from slurmctld (`scontrol`), else accounting (`sacct`), else unknown."""
    for command in (["scontrol", "--oneliner", "show", "job", task],
                    ["sacct", "--noheader", "--allocations", "--parsable2", "--format", "State", "--jobs", task]):
        try:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0 and answer.stdout.strip():
            text = answer.stdout.strip()
            if command[0] == "scontrol":
                fields = dict(item.split("=", 1) for item in shlex.split(text) if "=" in item)
                return fields.get("JobState", "UNKNOWN")
            return text.splitlines()[0].split()[0]
    return "UNKNOWN"
