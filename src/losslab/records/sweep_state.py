"""Where a sweep dir stands: how many of its jobs are in each state, and the command that continues it."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf

from losslab.records.job_dirs import job_dirs
from losslab.records.run_dir import run_state
from losslab.records.summary import CAUSES, LEFT, STATUSES, read_summary


def tally(sweep_dir: Path) -> dict[str, int]:
    """How many of the sweep's jobs are in each state (losslab.records.run_dir.run_state)."""
    states = [run_state(d) for d in job_dirs(sweep_dir)]
    return {state: states.count(state) for state in STATUSES if state in states}


def causes(sweep_dir: Path) -> dict[str, int]:
    """How many of the jobs left (LEFT) ended for each cause a Slurm launcher recorded (summary.json's `cause`)."""
    found = [(read_summary(d) or {}).get("cause") for d in job_dirs(sweep_dir) if run_state(d) in LEFT]
    return {cause: found.count(cause) for cause in CAUSES if cause in found}


def tally_text(counts: dict[str, int], ended: dict[str, int] | None = None) -> str:
    """`2 completed, 2 interrupted`, with the causes of the ends where known: `(1 out of memory, 1 cancelled)`."""
    text = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no job started"
    return text + (f" ({', '.join(f'{n} {CAUSES[cause]}' for cause, n in ended.items())})" if ended else "")


def more_memory(sweep_dir: Path) -> str | None:
    """For a sweep with jobs killed for memory: the override that asks for twice the memory each task had
    (`hydra.launcher.mem_gb`); None when none was, or when the sweep did not set mem_gb (the partition's default:
    losslab cannot tell how much that was)."""
    if "out_of_memory" not in causes(sweep_dir):
        return None
    try:
        memory = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.launcher.get("mem_gb")
    except (OSError, ValueError, AttributeError):
        return None
    return None if memory is None else f"hydra.launcher.mem_gb={2 * int(memory)}"


def continue_command(sweep_dir: Path) -> str:
    """The command that relaunches the sweep into its dir (finished jobs are skipped, stopped ones resume), from
    its multirun.yaml (the command line of this process when there is none yet), with twice the memory where jobs
    were killed for memory (more_memory). The sweep dir is absolute, so the command runs from any dir."""
    try:
        overrides = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides
        arguments = [*overrides.hydra, *overrides.task]
    except (OSError, ValueError, AttributeError):
        arguments = sys.argv[1:]
    pinned = ("hydra.sweep.dir=", "hydra.mode=", "hydra.job.config.override_dirname.exclude_keys=")
    memory = more_memory(sweep_dir)
    if memory:
        pinned += ("hydra.launcher.mem_gb=",)
    kept = [str(a) for a in arguments if a not in ("-m", "--multirun") and not str(a).startswith(pinned)]
    return shlex.join(["losslab-train", "-m", *kept, *filter(None, [memory]),
                       f"hydra.sweep.dir={os.path.abspath(sweep_dir)}"])
