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

import logging
import os
import shlex
import signal
import subprocess
import time

from hydra.core.utils import JobReturn

from losslab.errors import UserError

log = logging.getLogger("losslab")
ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED,REQUEUE_FED,REQUEUE_HOLD,RESIZING,SIGNALING," \
         "STAGE_OUT,PREEMPTED"  # squeue --states: a task in one of these has not ended


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
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    task = f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")
    if task:
        subprocess.run(["scontrol", "update", f"JobId={task}", f"JobName={name}"], capture_output=True, timeout=30)


def requeue_on_preemption(signum: int) -> None:
    """After a stop by submitit's preemption signal has written last.pt: let submitit's handler (restored when
    training ended) checkpoint this job and requeue it; it exits the process, or raises when it does not requeue
    (timed out more than `max_num_timeout` times)."""
    from losslab.training.runtime import preemption_signal  # imports torch, which the launcher's process does without

    if signum != preemption_signal():
        return
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


def ignore_preemption() -> None:
    from losslab.training.runtime import preemption_signal

    signal.signal(preemption_signal(), signal.SIG_IGN)


def wait_for_tasks(jobs: list, poll_s: float) -> None:
    """Until no task is pending or running: asks slurmctld (`squeue`), which answers without accounting. A task
    must be gone in two answers in a row (a requeued task passes through states between)."""
    array_ids = sorted({job.job_id.split("_")[0] for job in jobs})
    gone_once: set[str] = set()
    while True:
        active = active_tasks(array_ids)
        if active is not None:
            ended = {job.job_id for job in jobs if job.job_id not in active}
            if ended == {job.job_id for job in jobs} and ended <= gone_once:
                return
            gone_once = ended
        time.sleep(poll_s)


def active_tasks(array_ids: list[str]) -> set[str] | None:
    """The ids (`<array>_<task>`) of the tasks Slurm has not ended; None when slurmctld does not answer."""
    command = ["squeue", "--noheader", "--array", "--states", ACTIVE, "--format", "%i", "--jobs", ",".join(array_ids)]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("squeue did not answer (%s); asking again in a while", e)
        return None
    if listed.returncode != 0:
        if "Invalid job id" in listed.stderr:  # every job has left slurmctld's memory
            return set()
        log.warning("squeue failed (%s); asking again in a while", listed.stderr.strip() or listed.returncode)
        return None
    return set(listed.stdout.split())


def read_result(job) -> JobReturn | list[JobReturn] | str | None:
    """What the task returned (a JobReturn, or a list of them for a stack); the last line of its error when it
    raised; None when it wrote nothing (killed, cancelled). Asks the result file before `job.result()`, whose wait
    would ask accounting about a task that wrote none."""
    from submitit.core.utils import FailedJobError

    deadline = time.monotonic() + 15  # a shared filesystem may show the file late
    while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(1)
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
