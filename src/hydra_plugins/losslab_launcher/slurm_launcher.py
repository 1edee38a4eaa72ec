"""`hydra/launcher=slurm`: Hydra's `submitit_slurm` with losslab's launcher and defaults, under which every job ends
as a recorded result: a timed-out or preempted task writes last.pt, is requeued and resumes; a cancelled or killed
one is recorded and the sweep ends with its tally and report. What it does with Slurm: losslab.sweeps.slurm."""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher
except ImportError:  # the `sweep` extra is not installed: no Slurm launcher
    SlurmQueueConf = HydraSlurmLauncher = None

log = logging.getLogger("losslab")

if SlurmQueueConf is not None:

    @dataclass
    class LosslabSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.losslab_launcher.slurm_launcher.SlurmLauncher"
        name: str = "losslab"  # the launcher names the array after the sweep, each task <sweep>/<job number>
        # USR2 this many seconds before the time limit (at most half of it): training stops at its next step,
        # writes last.pt, and the task is requeued (Slurm may send it up to 60 s earlier than asked)
        signal_delay_s: int = 120
        max_num_timeout: int = 10  # requeues after time-outs; each resumes from last.pt
        poll_s: float = 5.0  # how often the launcher asks Slurm about its tasks
        report_pending_s: float = 60.0  # how often it says how many tasks are pending, and why

    ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=LosslabSlurmConf, provider="losslab")


class SlurmLauncher(HydraSlurmLauncher or object):
    """Hydra's SlurmLauncher with the additions of the module docstring. Its extra key: `poll_s`, how often the
    launcher asks Slurm about its tasks. It submits and waits for its tasks itself (`launch`, Hydra's Launcher
    interface) and each task runs its job with Hydra's public `run_job`, as the plugin's tasks do; it relies on
    nothing of the plugin but its config, `setup` and `checkpoint`."""

    def __init__(self, poll_s: float = 5.0, report_pending_s: float = 60.0, **params) -> None:
        super().__init__(**params)
        self.poll_s, self.report_pending_s = float(poll_s), float(report_pending_s)

    def __call__(self, overrides: list[str], number: int, singleton_state: dict) -> JobReturn:
        """One job, in its Slurm task."""
        from losslab.errors import Interrupted
        from losslab.records.run_dir import run_state
        from losslab.sweeps.slurm import JobFailed, end_stopped_task, ignore_preemption, rename_task

        rename_task(f"{self.params['name']}/{number}")
        try:
            result = self.run(overrides, number, singleton_state)
        except Interrupted as stop:
            end_stopped_task(stop.signum)
            raise
        run_dir = Path(result.hydra_cfg.hydra.runtime.output_dir)
        if result.status == JobStatus.FAILED or run_state(run_dir) == "failed":
            where = run_dir / "error.txt" if (run_dir / "error.txt").exists() else "this task's log (stderr)"
            raise JobFailed(f"job {number} failed; its error is in {where}")
        ignore_preemption()  # the job is done: a time limit's signal now has nothing to save or requeue
        return result

    def run(self, overrides: list[str], number: int, singleton_state: dict) -> JobReturn:
        """The job as Hydra's submitit launcher runs it in its task, through Hydra's public API: its sweep config
        (hydra.job.id is the Slurm task's, hydra.job.num its number) given to Hydra's `run_job`."""
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = number
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs that still need training as one array (a job with a finished result in its run dir is
        not submitted again) and wait for them; a stop signal meanwhile says how to cancel or re-attach."""
        from losslab.records.summary import objective, previous_result
        from losslab.sweeps.slurm import stops_reported, submit, wait_for_tasks
        from losslab.sweeps.sweep import sweep_name

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self.executor(name=sweep_name(self.config))
        log.info("Slurm sweep of %d jobs into %s", len(job_overrides), sweep_dir)
        arguments, returns = [], {}  # what each task's __call__ is given; each job's JobReturn
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            done = previous_result(self.run_dir(overrides, number), list(overrides))
            if done is None:
                arguments.append((list(overrides), number, Singleton.get_state()))
            else:
                log.info("job %d already %s: not submitted again", number, done["status"])
                returns[number] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                            _return_value=objective(done))
        if arguments:
            jobs = submit(executor, self, arguments)
            with stops_reported(sweep_dir, jobs):
                wait_for_tasks(jobs, self.poll_s, self.report_pending_s)
            for job, (overrides, number, _) in zip(jobs, arguments):
                returns[number] = self.outcome(job, number, overrides)
        return [returns[number] for number in sorted(returns)]

    def executor(self, name: str):
        """submitit's AutoExecutor for Slurm with this launcher's keys (losslab.sweeps.slurm.build_executor)."""
        from losslab.sweeps.slurm import build_executor

        self.params["name"] = name
        return build_executor(self.params, name)

    def outcome(self, job, number: int, overrides: list[str]) -> JobReturn:
        """The task's JobReturn; a task that ended without a result is recorded in its run dir (or, where that
        cannot be written, in losslab.sweeps.slurm.UNRECORDED for the sweep's tally) and returns inf."""
        from losslab.records.summary import record_slurm_end
        from losslab.sweeps.slurm import UNRECORDED, task_end

        end = task_end(job)
        if isinstance(end.result, JobReturn):
            return end.result
        unrecorded = record_slurm_end(self.run_dir(overrides, number), overrides, job.job_id, end.state, end.error,
                                      end.cause)
        if unrecorded:
            UNRECORDED.setdefault(str(self.config.hydra.sweep.dir), []).append(unrecorded)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=math.inf)

    def run_dir(self, overrides: list[str], number: int) -> Path:
        """A job's run dir, as Hydra names it in the task."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
