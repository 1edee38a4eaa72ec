"""Config schemas and value checks: the registry that components register their schemas in, the schemas of the
optimizer, scheduler and trainer groups, and the range checks. Every YAML file under ``conf/<group>/`` starts from a
schema (``defaults: [<option>_schema]``), so an unknown key or a wrong type fails at compose time with Hydra's own
message naming the key.

May import: losslab.records, losslab.errors, losslab.fileio."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from losslab.config import schemas
from losslab.config.checks import check
from losslab.config.registry import SCHEMAS, discover
from losslab.records.job_dirs import job_dir_name

REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = REPO_ROOT / "conf"
__all__ = ["CONF_DIR", "REPO_ROOT", "check", "data_root", "group_options", "register"]


def data_root(root: str | None) -> Path:
    """`dataset.root`, else $LOSSLAB_DATA_DIR, else the repo's `data/` (where MNIST ships)."""
    return Path(root or os.environ.get("LOSSLAB_DATA_DIR") or REPO_ROOT / "data").expanduser()


def group_options() -> str:
    """`group: option, ...` per line for the config groups of conf/ (`losslab-train --help`)."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra")
    return "\n".join(f"{d.name}: {', '.join(sorted(f.stem for f in d.glob('*.yaml')))}" for d in groups)


def register() -> None:
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)
    if not OmegaConf.has_resolver("losslab_options"):
        OmegaConf.register_new_resolver("losslab_options", group_options)
    if not OmegaConf.has_resolver("losslab.job_dir"):
        OmegaConf.register_new_resolver("losslab.job_dir", job_dir_name)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=schemas.TrainConf)
    discover()
    for (group, option), node in SCHEMAS.items():
        store.store(group=group, name=f"{option}_schema", node=node)


