"""`trainer.resume=<run dir>`: continue a run with the config it started with."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from losslab.commands.command_checks import override_key
from losslab.errors import UserError

RESUME_CHANGES = ("trainer.epochs", "trainer.max_steps", "trainer.progress")  # what a resume may change


def resume_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Continue the run in `run_dir` as it was configured; `trainer.epochs`/`trainer.max_steps` may grow (it
    trains on to the new length) and `trainer.progress` may change, anything else is refused."""
    from losslab.training.loop import fit

    keys = (override_key(o) for o in overrides)
    changes = {key: OmegaConf.select(cfg, key) for key in keys if key != "trainer.resume"}
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
        original = [o for o in original if override_key(o) not in changes] + [f"{k}={v}" for k, v in changes.items()]
        save_run_config(run_dir, saved, original)
    return fit(saved, run_dir, resume=True, overrides=[str(o) for o in original])


def save_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The run's .hydra/config.yaml and overrides.yaml after a resume changed its length."""
    from losslab.fileio import atomic_write

    for name, node in (("config.yaml", cfg), ("overrides.yaml", OmegaConf.create(overrides))):
        atomic_write(run_dir / ".hydra" / name, lambda tmp, node=node: OmegaConf.save(node, tmp))
