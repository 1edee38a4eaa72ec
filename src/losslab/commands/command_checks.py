"""What `losslab-train` refuses before Hydra writes anything: a command that would overwrite a run, mix two sweeps
or submit to a cluster that is not there; and where a resume runs."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from omegaconf import OmegaConf

from losslab.errors import UserError


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def given_overrides(argv: list[str]) -> dict[str, str]:
    return {override_key(arg): arg.split("=", 1)[1] for arg in argv if "=" in arg and not arg.startswith("-")}


def check_command(argv: list[str]) -> list[str]:
    """Before Hydra writes anything: refuse a command that would overwrite a run, mix two sweeps or submit to a
    cluster that is not there, and point a resume at its run dir. Returns the arguments a resume adds (run inside
    that dir, keep its .hydra/)."""
    from losslab.records.lock import busy, locked_by
    from losslab.records.run_dir import holds_run, run_state
    from losslab.records.summary import HAS_RESULT

    given = given_overrides(argv)
    multirun = bool({"-m", "--multirun"} & set(argv))
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    share_with_group(Path(given.get("hydra.sweep.dir" if multirun else "hydra.run.dir", "outputs")))
    launcher = given.get("hydra/launcher")
    if launcher == "submitit_slurm":
        raise UserError("hydra/launcher=submitit_slurm is Hydra's Slurm launcher without losslab's handling of "
                        "cancelled, timed-out and preempted jobs; use hydra/launcher=slurm, which takes the same "
                        "hydra.launcher keys.")
    check_stacked_executor(launcher, given.get("hydra.launcher.executor"))
    if launcher == "slurm" and shutil.which("srun") is None:
        raise UserError("hydra/launcher=slurm submits to a Slurm cluster, but this machine has no `srun` on its "
                        "PATH; run the command on a cluster's login node, or try the sweep here with "
                        "hydra/launcher=submitit_local.")
    resume = given.get("trainer.resume", "null")
    if resume.lower() not in ("", "null", "false", "none"):
        if resume.lower() == "true":
            run_dir = Path(given.get("hydra.run.dir", "."))
        else:
            run_dir = Path(resume)
        if not holds_run(run_dir):
            raise UserError(f"trainer.resume={resume}: {run_dir.resolve()} is not a losslab run dir (it has no "
                            f".hydra/config.yaml); name the dir of the run to continue.")
        holder = locked_by(run_dir)
        if holder is not None:
            raise busy(run_dir, holder)
        state = run_state(run_dir)
        if state in HAS_RESULT:
            raise UserError(f"{run_dir} has finished (status {state}); there is nothing to resume and its results "
                            f"stay as they are. To train longer, start a fresh run with the longer trainer.epochs.")
        return [f"hydra.run.dir={run_dir.resolve()}", "hydra.output_subdir=null"]
    run_dir = given.get("hydra.run.dir")
    if run_dir and holds_run(Path(run_dir)):
        state = run_state(Path(run_dir))
        raise UserError(f"hydra.run.dir={run_dir} already holds a run (status {state}) and is never overwritten; "
                        f"continue an unfinished run with trainer.resume={run_dir}, or give a fresh hydra.run.dir.")
    if multirun:
        from losslab.sweeps.sweep import check_grid

        check_grid(overrides)
    if "hydra.sweep.dir" in given:
        check_relaunch(Path(given["hydra.sweep.dir"]),
                       [a for a in overrides if not override_key(a).startswith(("hydra.", "hydra/"))])
    return []


def share_with_group(output_dir: Path) -> None:
    """Under a shared output root (its nearest existing dir is group-writable, as a team's `outputs/` is), the
    dirs and files this command creates are group-writable too (umask without group write), so the next user of
    the group can write beside them; elsewhere the user's umask stands."""
    existing = next((d for d in [output_dir.absolute(), *output_dir.absolute().parents] if d.exists()), None)
    if existing is not None and existing.stat().st_mode & stat.S_IWGRP:
        os.umask(os.umask(0) & ~stat.S_IWGRP)


def check_stacked_executor(launcher: str | None, executor: str | None) -> None:
    """`hydra/launcher=stacked` with a submitit executor needs the `sweep` extra, and with Slurm's a cluster."""
    if launcher != "stacked" or executor not in ("submitit_local", "submitit_slurm"):
        return
    from losslab.sweeps.slurm import require_submitit

    require_submitit(executor)
    if executor == "submitit_slurm" and shutil.which("srun") is None:
        raise UserError("hydra.launcher.executor=submitit_slurm submits to a Slurm cluster, but this machine has no "
                        "`srun` on its PATH; run the command on a cluster's login node, or try the sweep here with "
                        "hydra.launcher.executor=submitit_local.")


def check_relaunch(sweep_dir: Path, task_overrides: list[str]) -> None:
    """A sweep dir holds one sweep: relaunching it with other overrides would mix or overwrite its jobs."""
    try:
        before = [str(o) for o in OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task]
    except (OSError, ValueError, AttributeError):
        return
    if before != task_overrides:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds a sweep of other overrides ({' '.join(before)}); relaunch it with "
            f"exactly those to continue it, or give a fresh hydra.sweep.dir for these ({' '.join(task_overrides)})."
        )
