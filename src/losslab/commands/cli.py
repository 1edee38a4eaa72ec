"""Console entry points. A user mistake (UserError) prints one sentence and exits non-zero;
`HYDRA_FULL_ERROR=1` shows the traceback instead."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from losslab.commands.command_checks import check_command
from losslab.commands.messages import fail, one_sentence
from losslab.commands.resume import resume_run
from losslab.commands.sweep_job import run_sweep_job
from losslab.config import CONF_DIR, register
from losslab.errors import Interrupted, UserError, unwritable
from losslab.records.run_dir import remove_unstarted_run
from losslab.records.summary import objective

_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from losslab.training.loop import fit
    from losslab.training.run_logger import hparams_of

    hc = HydraConfig.get()
    run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, hc, run_dir, overrides)
    try:
        if cfg.trainer.resume not in (None, False):
            summary = resume_run(cfg, run_dir, overrides)
        else:
            summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides), overrides=overrides)
    except UserError as e:
        if _FULL_ERROR:
            raise
        if cfg.trainer.resume in (None, False):  # nothing trained: the refusal is on the screen, no dir left
            remove_unstarted_run(run_dir)
        fail("losslab-train", str(e))
    from losslab.reporting.run_figures import draw_run_figures

    draw_run_figures(run_dir)
    return objective(summary)


def train_command() -> None:
    """The `losslab-train` command: `train`, then the process exits as usual (`sys.exit`): with `train`'s status
    when it raises SystemExit, else 0. Everything a run writes is closed by then, so the objects alive are frozen
    (`gc.freeze`) and the garbage collector's passes at the interpreter's exit skip torch's many objects; exit
    handlers and log flushes run as usual."""
    try:
        train()
    finally:
        gc.freeze()
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
        fail("losslab-train", str(e))
    except (HydraException, OmegaConfBaseException) as e:
        if _FULL_ERROR:
            raise
        fail("losslab-train", one_sentence(e))
    except OSError as e:
        refused = unwritable(e, "give a dir you can write with hydra.run.dir= (hydra.sweep.dir= for -m)")
        if refused is None or _FULL_ERROR:
            raise
        fail("losslab-train", str(refused))


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
    from losslab.commands.evaluate import main

    try:
        main(sys.argv[1:])
    except (UserError, OSError) as e:
        refused = e if isinstance(e, UserError) else unwritable(
            e, "copy the run dir to a place you can write and evaluate the copy")
        if refused is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail("losslab-eval", str(refused))
