"""Where a sweep dir stands: how many of its jobs are in each state, and the command that continues it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf

from losslab.records.job_dirs import job_dirs
from losslab.records.run_dir import run_state
from losslab.records.summary import STATUSES


def tally(sweep_dir: Path) -> dict[str, int]:
    """How many of the sweep's jobs are in each state (losslab.records.run_dir.run_state)."""
    states = [run_state(d) for d in job_dirs(sweep_dir)]
    return {state: states.count(state) for state in STATUSES if state in states}


def tally_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "no job started"


def continue_command(sweep_dir: Path) -> str:
    """The command that relaunches the sweep into its dir (finished jobs are skipped, stopped ones resume), from
    its multirun.yaml; the command line of this process when there is none yet."""
    try:
        overrides = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides
        arguments = [*overrides.hydra, *overrides.task]
    except (OSError, ValueError, AttributeError):
        arguments = sys.argv[1:]
    pinned = ("hydra.sweep.dir=", "hydra.mode=", "hydra.job.config.override_dirname.exclude_keys=")
    kept = [str(a) for a in arguments if a not in ("-m", "--multirun") and not str(a).startswith(pinned)]
    return shlex.join(["losslab-train", "-m", *kept, f"hydra.sweep.dir={sweep_dir}"])


def print_stopped(sweep_dir: Path, signum: int) -> None:
    """A stop signal in a multirun: print the tally of the jobs started so far and the command that relaunches the
    sweep into its dir."""
    print(f"losslab sweep {sweep_dir} stopped by signal {signum}: {tally_text(tally(sweep_dir))}; run the rest "
          f"with: {continue_command(sweep_dir)}", flush=True)
