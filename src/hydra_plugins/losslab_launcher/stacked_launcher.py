"""`hydra/launcher=stacked`: the jobs of a multirun that differ only in numbers train as one stacked model.

    losslab-train -m hydra/launcher=stacked optimizer.lr=0.1,0.03,0.01,0.003 trainer.l2=0,0.001,0.01,0.1

Every job is set up as Hydra's basic launcher sets it up (its run dir, .hydra/, the same job numbers), then
the jobs are grouped by their config without `losslab.stacking.steppers.STACKABLE_KEYS`, and each group is cut into
chunks of at most `max_members`; a chunk of two or more trains with `losslab.training.loop.fit_group`. Relaunching a
sweep, a job with a finished result is skipped and the jobs that resume from their last.pt are grouped the same way,
so an interrupted stack resumes as a stack. A job runs on its own, like the basic launcher runs it, when it is alone in
its group or when its group cannot be stacked (the log says why).

`executor` says where the chunks train: `in_process` (the default) one after the other in this process;
`submitit_local` or `submitit_slurm` each chunk as one task of one submitit array, with the keys of
hydra/launcher=slurm (losslab.sweeps.slurm). A task renames itself `<sweep name>/<its job numbers>`
(`synthetic-linear-ce/0-15`), sets its members up again and trains them with the very code of the in-process path
(`StackedLauncher.train`), so a requeued task (time limit, preemption) resumes its stack from the members'
last.pt. A task ends FAILED when one of its members failed; one that ends without a result (cancelled, killed) has
each unfinished member recorded in its run dir, and the sweep ends with its tally and the command that continues it.
"""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab.sweeps.hydra_adapter import remember_compositions
from losslab.sweeps.stacks import Member, chunks, describe_job, finished, numbers_text

try:  # the keys of hydra/launcher=slurm: Hydra's submitit queue config (SlurmQueueConf) with losslab's defaults
    from hydra_plugins.losslab_launcher.slurm_launcher import LosslabSlurmConf as SubmititConf
except ImportError:  # the `sweep` extra is not installed: the stacks train in this process only

    @dataclass
    class SubmititConf:
        pass


log = logging.getLogger("losslab")


class Executor(Enum):
    in_process = 0  # the chunks one after the other, in the launcher's process
    submitit_local = 1  # each chunk a submitit task on this machine
    submitit_slurm = 2  # each chunk a Slurm array task


@dataclass
class StackedLauncherConf(SubmititConf):
    """With a submitit executor, the keys of hydra/launcher=slurm configure its tasks, each task being one stack of
    at most max_members jobs; the launcher names the array after the sweep, each task <sweep>/<its job numbers>."""

    _target_: str = "hydra_plugins.losslab_launcher.stacked_launcher.StackedLauncher"
    max_members: int = 64  # the most jobs in one stack; a larger group trains in several stacks
    conv_on_cpu: bool = False  # stack convolutional models on the CPU too (slower there than one by one)
    executor: Executor = Executor.in_process  # where the stacks train


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="losslab")


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, conv_on_cpu: bool = False, executor: Any = "in_process",
                 poll_s: float = 5.0, report_pending_s: float = 60.0, **params: Any) -> None:
        super().__init__()
        self.max_members, self.conv_on_cpu, self.poll_s = max_members, conv_on_cpu, float(poll_s)
        self.report_pending_s = float(report_pending_s)
        self.executor = getattr(executor, "name", str(executor))  # an Executor of the scanned module, or its name
        self.params = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                       for key, value in params.items()}  # the submitit keys
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from losslab.sweeps.slurm import require_submitit

        if self.executor != "in_process":
            require_submitit(self.executor)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.compositions = remember_compositions(hydra_context.config_loader)

    def run(self, sweep_config: DictConfig, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from losslab.errors import Interrupted
        from losslab.sweeps.sweep import report_stopped

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        where = "in this process" if self.executor == "in_process" else f"as {self.executor} tasks"
        log.info("Launching %d jobs, stacked where they differ only in numbers, %s", len(job_overrides), where)
        jobs = [(number, list(overrides)) for number, overrides in enumerate(job_overrides, initial_job_idx)]
        for number, overrides in jobs:
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        if self.executor != "in_process":
            return self.submit(jobs)
        try:
            return [member.ret for member in self.train(jobs)]
        except Interrupted as e:
            report_stopped(sweep_dir, e.signum)
            raise

    def set_up(self, number: int, overrides: list[str], job_id: str | None = None) -> Member:
        """A job's run dir and .hydra/, as the basic launcher makes them (Hydra's run_job, with describe_job as the
        task function), and its resolved config."""
        sweep_config = self.compositions.take(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = number
            sweep_config.hydra.job.id = job_id or number
        return Member(number, overrides, sweep_config, self.run(sweep_config, describe_job))

    def train(self, jobs: list[tuple[int, list[str]]], task_id: str | None = None) -> list[Member]:
        """Set up, group and train `jobs` (number, overrides) in this process: the whole sweep with the in-process
        executor, one chunk in submitit's task `task_id`, which first waits for any process that still trains in a
        member's run dir (an earlier launch's task, when the sweep is relaunched while it runs). Every member holds
        its JobReturn."""
        from losslab.records.lock import wait_for_lock

        members = [self.set_up(number, overrides, task_id) for number, overrides in jobs]
        for member in members if task_id else []:
            wait_for_lock(member.run_dir)
        for chunk in chunks(members, self.max_members):
            self.run_chunk(chunk)
        return members

    def run_chunk(self, chunk: list[Member]) -> None:
        """Train a chunk as one stack (each member's JobReturn then holds its objective); one by one, as the basic
        launcher runs them, when it is a single job or cannot be stacked."""
        from losslab.records.summary import objective
        from losslab.stacking.steppers import NotStackable
        from losslab.training.loop import fit_group

        numbers = [member.number for member in chunk]
        if len(chunk) > 1:
            try:
                summaries = fit_group([member.job for member in chunk], self.conv_on_cpu)
            except NotStackable as e:
                log.info("jobs %s run one by one: %s", numbers, e)
            except Exception as e:  # a job's own run then records what is wrong (failed summary, error.txt)
                log.warning("jobs %s could not train stacked (%s: %s); running them one by one", numbers,
                            type(e).__name__, e)
            else:
                for member, summary in zip(chunk, summaries):
                    member.ret.return_value = objective(summary)
                return
        for member in chunk:
            member.ret = self.run(member.sweep_config, self.task_function)

    def submit(self, jobs: list[tuple[int, list[str]]]) -> list[JobReturn]:
        """Every chunk of the sweep as one task of one submitit array; a job with a finished result is skipped here.
        Returns when every task has ended."""
        from losslab.sweeps.slurm import build_executor, stops_reported, submit, wait_for_tasks
        from losslab.sweeps.sweep import sweep_name

        members, to_submit = [self.set_up(number, overrides) for number, overrides in jobs], []
        for chunk in chunks(members, self.max_members):
            if finished(chunk):
                self.run_chunk(chunk)  # its own run says it is skipped
            else:
                to_submit.append(chunk)
        if to_submit:
            self.params["name"] = sweep_name(self.config)
            executor = build_executor(self.params, self.params["name"], self.executor.removeprefix("submitit_"))
            arguments = [([(m.number, m.overrides) for m in chunk], Singleton.get_state()) for chunk in to_submit]
            log.info("%d jobs in %d tasks of at most %d: %s", sum(map(len, to_submit)), len(to_submit),
                     self.max_members, "; ".join(numbers_text([m.number for m in chunk]) for chunk in to_submit))
            tasks = submit(executor, self, arguments)
            if self.executor == "submitit_slurm":
                with stops_reported(Path(str(self.config.hydra.sweep.dir)), tasks):
                    wait_for_tasks(tasks, self.poll_s, self.report_pending_s)
            for task, chunk in zip(tasks, to_submit):
                if self.executor == "submitit_local":
                    task.wait()
                for member, ret in zip(chunk, self.outcome(task, chunk)):
                    member.ret = ret
        return [member.ret for member in members]

    def __call__(self, jobs: list[tuple[int, list[str]]], singleton_state: dict) -> list[JobReturn]:
        """One chunk, in its submitit task: its members set up again and trained as in-process (`train`)."""
        import submitit

        from losslab.errors import Interrupted
        from losslab.records.run_dir import run_state
        from losslab.sweeps.slurm import JobFailed, end_stopped_task, ignore_preemption, rename_task

        numbers = numbers_text([number for number, _ in jobs])
        rename_task(f"{self.params['name']}/{numbers}")
        Singleton.set_state(singleton_state)
        setup_globals()
        try:
            members = self.train(jobs, task_id=submitit.JobEnvironment().job_id)
        except Interrupted as stop:
            end_stopped_task(stop.signum)
            raise
        failed = [member.number for member in members if run_state(member.run_dir) == "failed"]
        if failed:
            raise JobFailed(f"jobs {numbers_text(failed)} failed; their errors are in their run dirs' error.txt")
        ignore_preemption()  # the jobs are done: a time limit's signal now has nothing to save or requeue
        return [member.ret for member in members]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues: the same chunk, which resumes from its members' last.pt."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def outcome(self, task, chunk: list[Member]) -> list[JobReturn]:
        """The task's JobReturns; when it ended without them, each member's finished result from its run dir, and
        each unfinished member recorded there (losslab.records.summary.record_slurm_end; where it cannot be,
        in losslab.sweeps.slurm.UNRECORDED) with inf."""
        from losslab.records.summary import objective, previous_result, record_slurm_end
        from losslab.sweeps.slurm import UNRECORDED, task_end

        end = task_end(task, slurm=self.executor == "submitit_slurm")
        if isinstance(end.result, list):
            return end.result
        returns = []
        for member in chunk:
            done = previous_result(member.run_dir, member.overrides)
            unrecorded = None if done else record_slurm_end(member.run_dir, member.overrides, task.job_id,
                                                            end.state, end.error, end.cause)
            if unrecorded:
                UNRECORDED.setdefault(str(self.config.hydra.sweep.dir), []).append(unrecorded)
            returns.append(JobReturn(overrides=member.overrides, status=JobStatus.COMPLETED,
                                     _return_value=math.inf if done is None else objective(done)))
        return returns

