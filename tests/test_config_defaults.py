"""Every default has one source: the configs users get do not change.

tests/data/composed_configs.json holds, for the defaults alone and for every option of every group
(conf/<group>/*.yaml, each chosen alone on top of the defaults, experiment presets included), the config
`losslab.cli.compose` returns, resolved. It changes only on purpose, when a default users get is meant to change:
regenerate it with `python tests/test_config_defaults.py` (PYTHONPATH=src) and review its diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from losslab.cli import compose
from losslab.config import CONF_DIR

SNAPSHOT = Path(__file__).parent / "data" / "composed_configs.json"
ABOUT = ("The config losslab.cli.compose returns (resolved) for the defaults and for each option of each group alone. "
         "It changes only on purpose: regenerate with `python tests/test_config_defaults.py` and review the diff.")


def cases() -> list[str]:
    """'' (the defaults) and `group=option` for every YAML of every group under conf/ (not hydra/)."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra")
    return [""] + [f"{d.name}={f.stem}" for d in groups for f in sorted(d.glob("*.yaml"))]


def composed(case: str) -> dict:
    """The resolved config, without the hydra node (its run and sweep dirs hold the time and the pid)."""
    cfg = OmegaConf.to_container(compose([case] if case else []), resolve=True)
    cfg.pop("hydra", None)
    return cfg


def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())["configs"]


def test_the_snapshot_covers_every_option():
    assert sorted(snapshot()) == sorted(cases()), (
        "an option was added or removed: regenerate tests/data/composed_configs.json (see this module's docstring)"
    )


@pytest.mark.parametrize("case", cases(), ids=lambda case: case or "defaults")
def test_users_get_the_configs_of_the_snapshot(case):
    expected = snapshot()[case]
    actual = composed(case)
    assert actual == expected
    assert json.dumps(actual) == json.dumps(expected)  # the key order too (`--cfg job`, `--help` print it)


if __name__ == "__main__":
    configs = {case: composed(case) for case in cases()}
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps({"about": ABOUT, "configs": configs}, indent=1, ensure_ascii=False) + "\n")
    print(f"{SNAPSHOT}: {len(configs)} configs", file=sys.stderr)
