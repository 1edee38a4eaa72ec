"""`hydra/launcher=stacked`: the jobs of a multirun that differ only in numbers train as one stacked model.

    losslab-train -m hydra/launcher=stacked optimizer.lr=0.1,0.03,0.01,0.003 trainer.l2=0,0.001,0.01,0.1

Every job is set up as Hydra's basic launcher sets it up (its run dir, .hydra/, the same job numbers), then
the jobs are grouped by their config without `losslab.steppers.STACKABLE_KEYS` and each group of two or
more trains in this process with `losslab.train.fit_group`, at most `max_members` at a time. Relaunching a sweep,
a job with a finished result is skipped and the jobs that resume from their last.pt are grouped the same way,
so an interrupted stack resumes as a stack. A job runs on its own, like the basic launcher runs it, when it is
alone in its group or when its group cannot be stacked (the log says why).
"""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("losslab")


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.losslab_launcher.stacked_launcher.StackedLauncher"
    max_members: int = 64  # the most jobs in one stack; a larger group trains in several stacks
    conv_on_cpu: bool = False  # stack convolutional models on the CPU too (slower there than one by one)


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="losslab")


def describe_job(cfg: DictConfig):
    """The task function of the set-up pass: resolve the job's config while its HydraConfig is current."""
    from losslab.log import hparams_of
    from losslab.train import Job

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    OmegaConf.resolve(cfg)
    return Job(cfg, Path(hc.runtime.output_dir), hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides)


# saves 4.0-4.3 s of 43-47 s (9 %) of a 16-job stacked linear grid on CPU, measured by scripts/bench_speed_hacks.py
def remember_compositions(config_loader) -> dict:
    """Keep what `config_loader.load_sweep_config` returns, by overrides. The sweeper composes every job once to
    validate the batch (Sweeper.validate_batch_is_legal) and throws the result away; the launcher takes it
    instead of composing the job a second time."""
    composed, compose = {}, config_loader.load_sweep_config
    if getattr(compose, "remembers", None) is not None:
        return compose.remembers

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = compose(master_config, sweep_overrides)
        composed[id(master_config), tuple(sweep_overrides)] = config  # a validating sweeper only reads it
        return config

    load_sweep_config.remembers = composed
    config_loader.load_sweep_config = load_sweep_config  # this loader instance only, for this multirun
    return composed


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, conv_on_cpu: bool = False) -> None:
        super().__init__()
        self.max_members, self.conv_on_cpu = max_members, conv_on_cpu
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.composed = remember_compositions(hydra_context.config_loader)

    def run(self, sweep_config: DictConfig, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from losslab.cli import objective
        from losslab.errors import Interrupted
        from losslab.steppers import NotStackable, group_key
        from losslab.sweep import can_resume, previous_result, print_stopped
        from losslab.train import fit_group

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, stacked where they differ only in numbers", len(job_overrides))
        sweep_configs, returns, groups = [], [], {}
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.composed.pop((id(self.config), tuple(overrides)), None)
            if sweep_config is None:
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            ret = self.run(sweep_config, describe_job)  # run dir and .hydra/, as the basic launcher makes them
            sweep_configs.append(sweep_config)
            returns.append(ret)
            job = ret.return_value
            if previous_result(job.run_dir, job.overrides):
                groups[f"own {idx}"] = [len(returns) - 1]  # skipped by the job itself
            else:
                job.resume = can_resume(job.run_dir, job.overrides)
                groups.setdefault((job.resume, group_key(job.cfg)), []).append(len(returns) - 1)

        for members in groups.values():
            for start in range(0, len(members), self.max_members):
                chunk = members[start:start + self.max_members]
                if len(chunk) > 1:
                    try:
                        summaries = fit_group([returns[i].return_value for i in chunk], self.conv_on_cpu)
                    except Interrupted as e:
                        print_stopped(Path(str(self.config.hydra.sweep.dir)), e.signum)
                        raise
                    except NotStackable as e:
                        log.info("jobs %s run one by one: %s", [initial_job_idx + i for i in chunk], e)
                    except Exception as e:  # a job's own run then records what is wrong (failed summary, error.txt)
                        log.warning("jobs %s could not train stacked (%s: %s); running them one by one",
                                    [initial_job_idx + i for i in chunk], type(e).__name__, e)
                    else:
                        for i, summary in zip(chunk, summaries):
                            returns[i].return_value = objective(summary)
                        continue
                for i in chunk:
                    returns[i] = self.run(sweep_configs[i], self.task_function)
        return returns
