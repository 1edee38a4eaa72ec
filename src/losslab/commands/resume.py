"""`trainer.resume=<run dir>`: continue a run with the config it started with."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from losslab.commands.command_checks import override_key
from losslab.errors import UserError

RESUME_CHANGES = ("trainer.epochs", "trainer.max_steps", "trainer.progress")  # what a resume may change


def resume_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Continue the run in `run_dir` as it was configured; `trainer.epochs`/`trainer.max_steps` may grow (it
    trains on to the new length) and `trainer.progress` may change, anything else is refused."""
    from hydra.core.hydra_config import HydraConfig

    from losslab.training.loop import fit

    saved, original = (OmegaConf.load(run_dir / ".hydra" / name) for name in ("config.yaml", "overrides.yaml"))
    now = {"config": cfg, "choices": HydraConfig.get().runtime.choices}
    before = {"config": saved, "choices": OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices}
    keys = (override_key(o) for o in overrides)
    changes = {key: OmegaConf.select(cfg, key) for key in keys
               if key != "trainer.resume" and value_of(now, key) != value_of(before, key)}
    refused = [key for key in changes if key not in RESUME_CHANGES]
    if refused:
        differences = "; ".join(f"{key} was {short(value_of(before, key))}, now {short(value_of(now, key))}"
                                for key in refused)
        raise UserError(f"trainer.resume continues {run_dir} with the config it started with, and this command "
                        f"changes it ({differences}); only {', '.join(RESUME_CHANGES)} can change on resume: drop "
                        f"or restore {'that value' if len(refused) == 1 else 'those values'}, or start a fresh run.")
    if changes:
        if saved.scheduler.get("T_max") is not None and "trainer.epochs" in changes:
            raise UserError("trainer.epochs cannot change on resume with scheduler=cosine (its schedule spans the "
                            "original trainer.epochs); start a fresh run instead.")
        for key, value in changes.items():
            OmegaConf.update(saved, key, value)
        original = [o for o in original if override_key(o) not in changes] + [f"{k}={v}" for k, v in changes.items()]
        save_run_config(run_dir, saved, original)
    return fit(saved, run_dir, resume=True, overrides=[str(o) for o in original])


def value_of(run: dict, key: str):
    """What a run used at `key`, to compare a resume's overrides with: a config group's option name (`model`:
    linear), else the value as plain data, interpolations resolved where they can be. `run` holds the run's
    `config` and its config groups' `choices` (Hydra's hydra.runtime.choices)."""
    if key in run["choices"]:
        return run["choices"][key]
    node = OmegaConf.select(run["config"], key, default=None)
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except (OmegaConfBaseException, ValueError):  # an interpolation this context cannot resolve: compare as written
        return OmegaConf.to_container(node, resolve=False)


def short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def save_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The run's .hydra/config.yaml and overrides.yaml after a resume changed its length."""
    from losslab.fileio import atomic_write

    for name, node in (("config.yaml", cfg), ("overrides.yaml", OmegaConf.create(overrides))):
        atomic_write(run_dir / ".hydra" / name, lambda tmp, node=node: OmegaConf.save(node, tmp))
