"""`hydra/launcher=stacked`: the jobs of a multirun that differ only in numbers train as one stacked model.

    losslab-train -m hydra/launcher=stacked optimizer.lr=0.1,0.03,0.01,0.003 trainer.l2=0,0.001,0.01,0.1

Every job is set up as Hydra's basic launcher sets it up (its run dir, .hydra/, the same job numbers), then
the jobs are grouped by their config without `losslab.stacking.steppers.STACKABLE_KEYS`, and each group is cut into
chunks
of at most `max_members`; a chunk of two or more trains with `losslab.training.loop.fit_group`. Relaunching a sweep, a
job
with a finished result is skipped and the jobs that resume from their last.pt are grouped the same way, so an
interrupted stack resumes as a stack. A job runs on its own, like the basic launcher runs it, when it is alone in
its group or when its group cannot be stacked (the log says why).

`executor` says where the chunks train: `in_process` (the default) one after the other in this process;
`submitit_local` or `submitit_slurm` each chunk as one task of one submitit array, with the keys of
hydra/launcher=slurm (losslab.sweeps.slurm). A task renames itself `<sweep name>/<its job numbers>`
(`synthetic-linear-ce/
0-15`), sets its members up again and trains them with the very code of the in-process path (`StackedLauncher.
train`), so a requeued task (time limit, preemption) resumes its stack from the members' last.pt. A task ends
FAILED when one of its members failed; one that ends without a result (cancelled, killed) has each unfinished member
recorded in its run dir, and the sweep ends with its tally and the command that continues it.
"""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations
import copy
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("losslab")


class Executor(Enum):
    in_process = 0  # the chunks one after the other, in the launcher's process
    submitit_local = 1  # each chunk a submitit task on this machine
    submitit_slurm = 2  # each chunk a Slurm array task


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.losslab_launcher.stacked_launcher.StackedLauncher"
    max_members: int = 64  # the most jobs in one stack; a larger group trains in several stacks
    conv_on_cpu: bool = False  # stack convolutional models on the CPU too (slower there than one by one)
    executor: Executor = Executor.in_process  # where the stacks train
    # with a submitit executor: the keys of hydra/launcher=slurm (slurm_launcher.LosslabSlurmConf), each task being
    # one stack of at most max_members jobs
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int = 1
    mem_gb: int | None = None
    nodes: int = 1
    name: str = "losslab"  # the launcher names the array after the sweep, each task <sweep>/<its job numbers>
    stderr_to_stdout: bool = False
    partition: str | None = None
    qos: str | None = None
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    gpus_per_task: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    account: str | None = None
    signal_delay_s: int = 120  # USR2 this long before the time limit: the stack writes last.pt and is requeued
    max_num_timeout: int = 10  # requeues after time-outs; each resumes from last.pt
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = 256
    setup: list[str] | None = None
    poll_s: float = 5.0  # how often the launcher asks Slurm about its tasks


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="losslab")


def describe_job(cfg: DictConfig):
    """The task function of the set-up pass: resolve the job's config while its HydraConfig is current."""
    from losslab.training.loop import Job
    from losslab.training.run_logger import hparams_of

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    OmegaConf.resolve(cfg)
    return Job(cfg, Path(hc.runtime.output_dir), hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides,
               number=hc.job.num)


def remember_compositions(config_loader) -> dict:
    """Keep what `config_loader.load_sweep_config` returns, by overrides. The sweeper composes every job once to
    validate the batch (Sweeper.validate_batch_is_legal) and throws the result away; the launcher takes it
    instead of composing the job a second time. A job whose overrides differ from an earlier job's only in the
    values of plain config keys is that job's composition with Hydra's own override step applied
    (`derived_composition`): composing costs ~0.12 s a job, the copy ~6 ms."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    composed, compose, parser = {}, config_loader.load_sweep_config, OverridesParser.create()
    if getattr(compose, "remembers", None) is not None:
        return compose.remembers
    templates: list[tuple[int, list, DictConfig]] = []  # (master config id, parsed overrides, composition)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        candidates = [(before, template) for master, before, template in templates if master == id(master_config)]
        parsed = parser.parse_overrides(list(sweep_overrides))
        config = next((derived for before, template in candidates
                       if (derived := derived_composition(config_loader, master_config, template, before,
                                                          parsed)) is not None), None)
        if config is None:
            config = compose(master_config, sweep_overrides)
            # a copy: running the job makes the composition's hydra node read-only (HydraConfig.set_config)
            templates.append((id(master_config), parsed, copy.deepcopy(config)))
        composed[id(master_config), tuple(sweep_overrides)] = config  # a validating sweeper only reads it
        return config

    load_sweep_config.remembers = composed
    config_loader.load_sweep_config = load_sweep_config  # this loader instance only, for this multirun
    return composed


def derived_composition(config_loader, master_config: DictConfig, template: DictConfig, before: list,
                        after: list) -> DictConfig | None:
    """What Hydra composes for the parsed overrides `after`, from `template`, its composition of `before`, when the
    two lists name the same keys in the same order and differ only in values of keys that are not config groups
    (Hydra applies those to the composed config, after the defaults: ConfigLoaderImpl._load_configuration_impl);
    else None, and Hydra composes the job itself."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    if [o.key_or_group for o in before] != [o.key_or_group for o in after]:
        return None
    changed = [o for o, old in zip(after, before) if o.input_line != old.input_line]
    if any(o.type.name != "CHANGE" or o.package is not None or o.is_hydra_override()
           or config_loader.repository.group_exists(o.key_or_group) for o in changed):
        return None
    config = copy.deepcopy(template)
    ConfigLoaderImpl._apply_overrides_to_config(changed, config)
    dirname = config.hydra.job.config.override_dirname
    config.hydra.overrides.task = [o.input_line for o in after]
    config.hydra.job.override_dirname = get_overrides_dirname(after, list(dirname.exclude_keys), dirname.item_sep,
                                                              dirname.kv_sep)
    OmegaConf.copy_cache(from_config=master_config, to_config=config)
    return config


def numbers_text(numbers: list[int]) -> str:
    """Job numbers as ranges: [0, 1, 2, 3, 8, 10, 11] -> `0-3,8,10-11`."""
    ranges: list[list[int]] = []
    for number in sorted(numbers):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclass
class Member:
    """A job of the sweep, set up: its number, overrides, composed config, run dir, its losslab.training.loop.Job, and
    its
    JobReturn (the set-up pass's until it has trained)."""

    number: int
    overrides: list
    sweep_config: DictConfig
    ret: JobReturn

    def __post_init__(self):
        self.job = self.ret.return_value
        self.run_dir = self.job.run_dir


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, conv_on_cpu: bool = False, executor: Any = "in_process",
                 poll_s: float = 5.0, **params: Any) -> None:
        super().__init__()
        self.max_members, self.conv_on_cpu, self.poll_s = max_members, conv_on_cpu, float(poll_s)
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
        self.composed = remember_compositions(hydra_context.config_loader)

    def run(self, sweep_config: DictConfig, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def prepare(self, config: DictConfig) -> JobReturn:
        """`run(config, describe_job)` with fewer copies: what Hydra's run_job does before and after its task
        function, in its order (HydraConfig current, the run dir, the job's log file, .hydra/ with the same bytes,
        the callbacks told of the job's start and end, env_set around it). run_job copies the job's hydra node four
        times (HydraConfig's masked copy twice, once as the output dir is set; the whole config; HydraConfig's copy
        again); here HydraConfig is set once, its copy's output dir set in place, that copy is the JobReturn's, and
        the job's config is copied without its hydra node. ~37 ms a job here, against run_job's ~51."""
        hydra_config, callbacks = HydraConfig.instance(), self.hydra_context.callbacks
        previous = hydra_config.cfg
        hydra_config.set_config(config)
        try:
            output_dir = os.path.abspath(os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                                      str(OmegaConf.select(config, "hydra.sweep.subdir"))))
            for node in (config, hydra_config.cfg):  # the job's config, and HydraConfig's masked copy of it
                with read_write(node.hydra.runtime):
                    node.hydra.runtime.output_dir = output_dir
            task_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
            OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))  # the root's one flag; its nodes keep theirs
            job = hydra_config.cfg.hydra.job
            ret = JobReturn(overrides=OmegaConf.to_container(config.hydra.overrides.task), cfg=task_cfg,
                            hydra_cfg=hydra_config.cfg, working_dir=output_dir if job.chdir else os.getcwd())
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            configure_log(config.hydra.job_logging, config.hydra.verbose)
            if config.hydra.output_subdir is not None:
                hydra_dir = Path(output_dir, config.hydra.output_subdir)
                hydra_dir.mkdir(parents=True, exist_ok=True)
                for name, node in (("config.yaml", task_cfg), ("hydra.yaml", hydra_config.cfg),
                                   ("overrides.yaml", config.hydra.overrides.task)):
                    (hydra_dir / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
            with env_override(job.env_set):
                callbacks.on_job_start(config=config, task_function=describe_job)
                try:
                    ret.return_value, ret.status = describe_job(task_cfg), JobStatus.COMPLETED
                except Exception as e:
                    ret.return_value, ret.status = e, JobStatus.FAILED
            ret.task_name = JobRuntime.instance().get("name")
            callbacks.on_job_end(config=config, job_return=ret)
        finally:
            hydra_config.cfg = previous
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from losslab.errors import Interrupted
        from losslab.records.sweep_state import print_stopped

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
            print_stopped(sweep_dir, e.signum)
            raise

    def set_up(self, number: int, overrides: list[str], job_id: str | None = None) -> Member:
        """A job's run dir and .hydra/, as the basic launcher makes them, and its resolved config."""
        sweep_config = self.composed.pop((id(self.config), tuple(overrides)), None)
        if sweep_config is None:
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = number
            sweep_config.hydra.job.id = job_id or number
        return Member(number, overrides, sweep_config, self.prepare(sweep_config))

    def chunks(self, members: list[Member]) -> list[list[Member]]:
        """The stacks to train: members grouped by losslab.stacking.steppers.group_key and whether they resume, in
        chunks of
        at most `max_members` by job number, each ordered by seed (members of one seed draw one data order, so
        consecutive ones share their batches); a member with a finished result alone (its own run skips it)."""
        from losslab.records.summary import can_resume, previous_result
        from losslab.stacking.steppers import group_key

        groups: dict[Any, list[Member]] = {}
        for member in members:
            job = member.job
            if previous_result(job.run_dir, job.overrides):
                groups[f"own {member.number}"] = [member]
            else:
                job.resume = can_resume(job.run_dir, job.overrides)
                groups.setdefault((job.resume, group_key(job.cfg)), []).append(member)
        return [sorted(group[start:start + self.max_members], key=lambda member: member.job.cfg.seed)
                for group in groups.values() for start in range(0, len(group), self.max_members)]

    def train(self, jobs: list[tuple[int, list[str]]], task_id: str | None = None) -> list[Member]:
        """Set up, group and train `jobs` (number, overrides) in this process: the whole sweep with the in-process
        executor, one chunk in submitit's task `task_id`, which first waits for any process that still trains in a
        member's run dir (an earlier launch's task, when the sweep is relaunched while it runs). Every member holds
        its JobReturn."""
        from losslab.records.lock import wait_for_lock

        members = [self.set_up(number, overrides, task_id) for number, overrides in jobs]
        for member in members if task_id else []:
            wait_for_lock(member.run_dir)
        for chunk in self.chunks(members):
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
        from losslab.sweeps.slurm import build_executor, submit, wait_for_tasks
        from losslab.sweeps.sweep import sweep_name

        members, chunks = [self.set_up(number, overrides) for number, overrides in jobs], []
        for chunk in self.chunks(members):
            if self.finished(chunk):
                self.run_chunk(chunk)  # its own run says it is skipped
            else:
                chunks.append(chunk)
        if chunks:
            self.params["name"] = sweep_name(self.config)
            executor = build_executor(self.params, self.params["name"], self.executor.removeprefix("submitit_"))
            arguments = [([(m.number, m.overrides) for m in chunk], Singleton.get_state()) for chunk in chunks]
            log.info("%d jobs in %d tasks of at most %d: %s", sum(map(len, chunks)), len(chunks), self.max_members,
                     "; ".join(numbers_text([m.number for m in chunk]) for chunk in chunks))
            tasks = submit(executor, self, arguments)
            if self.executor == "submitit_slurm":
                wait_for_tasks(tasks, self.poll_s)
            for task, chunk in zip(tasks, chunks):
                if self.executor == "submitit_local":
                    task.wait()
                for member, ret in zip(chunk, self.outcome(task, chunk)):
                    member.ret = ret
        return [member.ret for member in members]

    @staticmethod
    def finished(chunk: list[Member]) -> bool:
        """Whether the chunk is one job with a finished result (losslab.records.summary.previous_result)."""
        from losslab.records.summary import previous_result

        return len(chunk) == 1 and previous_result(chunk[0].run_dir, chunk[0].overrides) is not None

    def __call__(self, jobs: list[tuple[int, list[str]]], singleton_state: dict) -> list[JobReturn]:
        """One chunk, in its submitit task: its members set up again and trained as in-process (`train`)."""
        import submitit

        from losslab.errors import Interrupted
        from losslab.records.run_dir import run_state
        from losslab.sweeps.slurm import JobFailed, ignore_preemption, rename_task, requeue_on_preemption

        numbers = numbers_text([number for number, _ in jobs])
        rename_task(f"{self.params['name']}/{numbers}")
        Singleton.set_state(singleton_state)
        setup_globals()
        try:
            members = self.train(jobs, task_id=submitit.JobEnvironment().job_id)
        except Interrupted as stop:
            requeue_on_preemption(stop.signum)
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
        each unfinished member recorded there (losslab.records.summary.record_slurm_end) with inf."""
        from losslab.records.summary import objective, previous_result, record_slurm_end
        from losslab.sweeps.slurm import final_state, read_result

        result = read_result(task)
        if isinstance(result, list):
            return result
        state = final_state(task.job_id) if self.executor == "submitit_slurm" else task.state
        returns = []
        for member in chunk:
            done = previous_result(member.run_dir, member.overrides)
            if done is None:
                record_slurm_end(member.run_dir, member.overrides, task.job_id, state, result)
            returns.append(JobReturn(overrides=member.overrides, status=JobStatus.COMPLETED,
                                     _return_value=math.inf if done is None else objective(done)))
        return returns

