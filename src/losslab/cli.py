"""Console entry points. A user mistake (UserError) prints one sentence and exits non-zero;
`HYDRA_FULL_ERROR=1` shows the traceback instead."""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from losslab.config import CONF_DIR, register
from losslab.errors import Interrupted, UserError

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
            run_dir = resume_dir(cfg.trainer.resume)
            original = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
            summary = fit(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), run_dir, resume=True, overrides=original)
        else:
            summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides=overrides)
    except UserError as e:
        if _FULL_ERROR:
            raise
        _fail("losslab-train", str(e))
    return objective(summary)


def objective(summary: dict) -> float:
    """What a job returns to Hydra's sweepers (Optuna minimises it): the final val loss, inf without one."""
    return summary["final"].get("val/loss", math.inf)


def _sweep_job(cfg: DictConfig, hc, run_dir: Path, overrides: list[str]) -> float | None:
    """One job of a multirun: reuse a finished result, resume a stopped one, and never stop the sweep."""
    from losslab.log import hparams_of
    from losslab.sweep import can_resume, interrupted, previous_result, record_failure, share_resources
    from losslab.train import fit

    done = previous_result(run_dir, overrides)
    if done is not None:
        log.info("job %s already %s in %s: skipped", hc.job.num, done["status"], run_dir)
        return objective(done)
    share_resources(cfg, hc.launcher, hc.job.num)
    try:
        summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides),
                      resume=can_resume(run_dir, overrides), overrides=overrides)
    except Interrupted as e:
        interrupted(Path(hc.sweep.dir), e.signum)
        raise
    except Exception as e:  # a user mistake or a bug in one job must not cost the other jobs
        record_failure(run_dir, cfg, overrides, e)
        return math.inf
    return objective(summary)


def resume_dir(resume) -> Path:
    """The run dir that `trainer.resume` names: `true` means the current directory."""
    run_dir = Path.cwd() if resume is True or str(resume).lower() == "true" else Path(str(resume))
    if not (run_dir / ".hydra" / "config.yaml").exists():
        raise UserError(f"trainer.resume={resume}: {run_dir} is not a losslab run dir (it has no .hydra/config.yaml).")
    return run_dir


def _resume_arguments(argv: list[str]) -> list[str]:
    """With trainer.resume=<dir>, Hydra runs inside that dir and keeps its .hydra/ (the original config)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "trainer.resume" and value.lower() not in ("", "null", "false", "none"):
            run_dir = Path.cwd() if value.lower() == "true" else Path(value).resolve()
            return [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    return []


def train() -> None:
    """`losslab-train [overrides]` (Hydra main; `-m` for a multirun)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    global _FULL_ERROR
    register()
    _FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let compose errors reach this function, which prints them as one line
    sys.argv += _resume_arguments(sys.argv[1:])
    try:
        _train()
    except Interrupted as e:
        sys.exit(128 + e.signum)
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
    """`losslab-eval <run dir or checkpoint> [split=test]`."""
    from losslab.evaluate import main

    try:
        main(sys.argv[1:])
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _fail("losslab-eval", str(e))
