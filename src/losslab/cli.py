"""Console entry points. A user mistake (UserError) prints one sentence and exits non-zero;
`HYDRA_FULL_ERROR=1` shows the traceback instead."""

from __future__ import annotations

import difflib
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from losslab.config import CONF_DIR, register
from losslab.errors import Interrupted, RunDirBusy, UserError

log = logging.getLogger("losslab")

_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"


def _fail(prog: str, message: str) -> None:
    _log_to_files(f"{prog}: error: {message}")
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _log_to_files(message: str) -> None:
    """An error in the log files only (a run's cli.log, through Hydra's job logging): its dir then says why it
    holds no results, and the screen shows the sentence once."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _one_sentence(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line compose errors as one line (the key, what is wrong, options)."""
    skip = ("full_key:", "object_type=", "reference_type=", "To append to your config", "Set the environment",
            "Config search path", "provider=")
    lines = [line.strip() for e in (error, error.__cause__) if e is not None for line in str(e).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(skip) and not line.endswith("_schema"))
    return (text + _did_you_mean(error.__cause__)
            + " (`losslab-train --cfg job` prints the composed config with every key.)")


def _did_you_mean(cause: BaseException | None) -> str:
    """For a key the config does not have: the closest key of the same node, if one is close."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or cause.parent_node is None:
        return ""
    keys = [str(k) for k in cause.parent_node.keys() if k != "hydra"]
    close = difflib.get_close_matches(str(cause.key), keys, n=1)
    if not close:
        return ""
    parent = str(cause.full_key).rpartition(".")[0]
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from losslab.log import hparams_of
    from losslab.train import fit

    hc = HydraConfig.get()
    run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, hc, run_dir, overrides)
    try:
        if cfg.trainer.resume not in (None, False):
            summary = resume_run(cfg, run_dir, overrides)
        else:
            summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides=overrides)
    except UserError as e:
        if _FULL_ERROR:
            raise
        _fail("losslab-train", str(e))
    from losslab.figures import draw_run_figures

    draw_run_figures(run_dir)
    return objective(summary)


RESUME_CHANGES = ("trainer.epochs", "trainer.max_steps", "trainer.progress")  # what a resume may change


def resume_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Continue the run in `run_dir` as it was configured; `trainer.epochs`/`trainer.max_steps` may grow (it
    trains on to the new length) and `trainer.progress` may change, anything else is refused."""
    from losslab.train import fit

    changes = {key: OmegaConf.select(cfg, key) for key in (_key(o) for o in overrides) if key != "trainer.resume"}
    refused = [key for key in changes if key not in RESUME_CHANGES]
    if refused:
        raise UserError(f"trainer.resume continues {run_dir} with the config it started with; {', '.join(refused)} "
                        f"cannot change on resume (only {', '.join(RESUME_CHANGES)} can): drop "
                        f"{'it' if len(refused) == 1 else 'them'}, or start a fresh run.")
    saved, original = (OmegaConf.load(run_dir / ".hydra" / name) for name in ("config.yaml", "overrides.yaml"))
    if changes:
        if saved.scheduler.get("T_max") is not None and "trainer.epochs" in changes:
            raise UserError("trainer.epochs cannot change on resume with scheduler=cosine (its schedule spans the "
                            "original trainer.epochs); start a fresh run instead.")
        for key, value in changes.items():
            OmegaConf.update(saved, key, value)
        original = [o for o in original if _key(o) not in changes] + [f"{k}={v}" for k, v in changes.items()]
        save_run_config(run_dir, saved, original)
    return fit(saved, run_dir, resume=True, overrides=[str(o) for o in original])


def save_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The run's .hydra/config.yaml and overrides.yaml after a resume changed its length."""
    from losslab.fileio import atomic_write

    for name, node in (("config.yaml", cfg), ("overrides.yaml", OmegaConf.create(overrides))):
        atomic_write(run_dir / ".hydra" / name, lambda tmp, node=node: OmegaConf.save(node, tmp))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def objective(summary: dict) -> float:
    """What a job returns to Hydra's sweepers, which minimise it: the final value of the metric the run monitored
    (summary.json's `monitor`: trainer.monitor), negated when its mode is max; the final val/loss for a summary
    without a monitor; inf when the run has no final value of that metric."""
    monitor = summary.get("monitor") or {"metric": "val/loss", "mode": "min"}
    value = summary["final"].get(monitor["metric"])
    if value is None:
        return math.inf
    return -value if monitor["mode"] == "max" else value


def _sweep_job(cfg: DictConfig, hc, run_dir: Path, overrides: list[str]) -> float | None:
    """One job of a multirun: reuse a finished result, resume a stopped one, and never stop the sweep."""
    from losslab.log import hparams_of
    from losslab.rundir import wait_for_lock
    from losslab.sweep import can_resume, previous_result, print_stopped, record_failure, share_resources
    from losslab.train import fit

    if "slurm" in str(hc.launcher.get("_target_", "")):  # a relaunch while an earlier launch's task trains here
        wait_for_lock(run_dir)
    done = previous_result(run_dir, overrides)
    if done is not None:
        log.info("job %s already %s in %s: skipped", hc.job.num, done["status"], run_dir)
        return objective(done)
    share_resources(cfg, hc.launcher, hc.job.num)
    (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's
    try:
        summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides),
                      resume=can_resume(run_dir, overrides), overrides=overrides)
    except RunDirBusy as e:  # its files belong to the process training there
        log.error("job %s skipped: %s", hc.job.num, e)
        return math.inf
    except Interrupted as e:
        print_stopped(Path(hc.sweep.dir), e.signum)
        raise
    except Exception as e:  # a user mistake or a bug in one job must not cost the other jobs
        record_failure(run_dir, cfg, overrides, e)
        return math.inf
    return objective(summary)


def _overrides(argv: list[str]) -> dict[str, str]:
    return {_key(arg): arg.split("=", 1)[1] for arg in argv if "=" in arg and not arg.startswith("-")}


def check_command(argv: list[str]) -> list[str]:
    """Before Hydra writes anything: refuse a command that would overwrite a run, mix two sweeps or submit to a
    cluster that is not there, and point a resume at its run dir. Returns the arguments a resume adds (run inside
    that dir, keep its .hydra/)."""
    from losslab.rundir import HAS_RESULT, busy, holds_run, locked_by, run_state

    given = _overrides(argv)
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
    if "hydra.sweep.dir" in given:
        check_relaunch(Path(given["hydra.sweep.dir"]), [a for a in argv if "=" in a and not a.startswith("-")
                                                         and not _key(a).startswith(("hydra.", "hydra/"))])
    return []


def check_stacked_executor(launcher: str | None, executor: str | None) -> None:
    """`hydra/launcher=stacked` with a submitit executor needs the `sweep` extra, and with Slurm's a cluster."""
    if launcher != "stacked" or executor not in ("submitit_local", "submitit_slurm"):
        return
    from losslab.slurm import require_submitit

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


def train_command() -> None:
    """The `losslab-train` command: `train`, then the process exits as usual (`sys.exit`): with `train`'s status
    when it raises SystemExit, else 0."""
    train()
    sys.exit(0)


def train() -> None:
    """`losslab-train [overrides]` (Hydra main; `-m` for a multirun)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    global _FULL_ERROR
    register()
    _FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let compose errors reach this function, which prints them as one line
    try:
        sys.argv += check_command(sys.argv[1:])
        _train()
    except Interrupted as e:
        sys.exit(128 + e.signum)
    except UserError as e:  # raised before Hydra starts
        if _FULL_ERROR:
            raise
        _fail("losslab-train", str(e))
    except (HydraException, OmegaConfBaseException) as e:
        if _FULL_ERROR:
            raise
        _fail("losslab-train", _one_sentence(e))


def compose(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """The composed config for `overrides`, as `losslab-train` would see it (for tests and notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def evaluate() -> None:
    """`losslab-eval <run dir or checkpoint> [split=test] [--calibrate]`."""
    from losslab.eval_command import main

    try:
        main(sys.argv[1:])
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _fail("losslab-eval", str(e))
