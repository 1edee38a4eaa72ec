"""The jobs of a stacked sweep, set up and grouped: each job's losslab.training.runs.Job from its set-up pass, and the
stacks they train in (hydra_plugins.losslab_launcher.stacked_launcher)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf


def describe_job(cfg: DictConfig):
    """The task function of the set-up pass: resolve the job's config while its HydraConfig is current."""
    from losslab.training.loop import Job
    from losslab.training.run_logger import hparams_of

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    OmegaConf.resolve(cfg)
    return Job(cfg, Path(hc.runtime.output_dir), hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides,
               number=hc.job.num)


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
    """A job of the sweep, set up: its number, overrides, composed config, run dir, its losslab.training.runs.Job,
    and its JobReturn (the set-up pass's until it has trained)."""

    number: int
    overrides: list
    sweep_config: DictConfig
    ret: JobReturn

    def __post_init__(self):
        self.job = self.ret.return_value
        self.run_dir = self.job.run_dir


def chunks(members: list[Member], max_members: int) -> list[list[Member]]:
    """The stacks to train: members grouped by losslab.stacking.steppers.group_key and whether they resume, in chunks
    of at most `max_members` by job number, each ordered by seed (members of one seed draw one data order, so
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
    return [sorted(group[start:start + max_members], key=lambda member: member.job.cfg.seed)
            for group in groups.values() for start in range(0, len(group), max_members)]


def finished(chunk: list[Member]) -> bool:
    """Whether the chunk is one job with a finished result (losslab.records.summary.previous_result)."""
    from losslab.records.summary import previous_result

    return len(chunk) == 1 and previous_result(chunk[0].run_dir, chunk[0].overrides) is not None
