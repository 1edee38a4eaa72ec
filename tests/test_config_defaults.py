"""Every default has one source: the configs users get do not change, a group YAML holds only what differs from its
schema, and the models' and losses' constructor defaults agree with their schemas.

tests/data/composed_configs.json holds, for the defaults alone and for every option of every group
(conf/<group>/*.yaml, each chosen alone on top of the defaults, experiment presets included), the config
`losslab.commands.cli.compose` returns, resolved. It changes only on purpose, when a default users get is meant to
change:
regenerate it with `python tests/test_config_defaults.py` (PYTHONPATH=src) and review its diff.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import OmegaConf

from losslab.commands.cli import compose
from losslab.config import CONF_DIR, register

SNAPSHOT = Path(__file__).parent / "data" / "composed_configs.json"
ABOUT = ("The config losslab.commands.cli.compose returns (resolved) for the defaults and for each option of each "
         "group alone. It changes only on purpose: regenerate with `python tests/test_config_defaults.py` and review "
         "the diff.")
SCHEMA_GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "trainer")  # each file starts from a schema


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


def test_every_option_of_the_snapshot_is_still_there():
    """A removed option fails here; an added one (a new loss, model or dataset is its file, its YAML and its test)
    joins the snapshot when it is next regenerated, and test_presets and test_losses compose and run it meanwhile."""
    removed = sorted(set(snapshot()) - set(cases()))
    assert not removed, (
        f"options removed: {removed}; regenerate tests/data/composed_configs.json (see this module's docstring)"
    )


@pytest.mark.parametrize("case", [case for case in cases() if case in snapshot()], ids=lambda case: case or "defaults")
def test_users_get_the_configs_of_the_snapshot(case):
    expected = snapshot()[case]
    actual = composed(case)
    assert actual == expected
    assert json.dumps(actual) == json.dumps(expected)  # the key order too (`--cfg job`, `--help` print it)


def schema_defaults(group: str, defaults: list) -> dict:
    """What a group file starts from, unresolved: its `<x>_schema` node, or another option of the group as that
    option composes (its own starting point plus its keys)."""
    (parent,) = [d for d in defaults if d != "_self_"]
    if parent.endswith("_schema"):
        register()
        node = ConfigStore.instance().load(f"{group}/{parent}.yaml").node
        return OmegaConf.to_container(node, resolve=False, throw_on_missing=False)
    own = yaml.safe_load((CONF_DIR / group / f"{parent}.yaml").read_text()) or {}
    return {**schema_defaults(group, own.pop("defaults")), **own}


def same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@pytest.mark.parametrize("path", [CONF_DIR / "train.yaml"] + sorted(
    f for group in SCHEMA_GROUPS for f in (CONF_DIR / group).glob("*.yaml")), ids=lambda p: p.stem)
def test_no_config_file_repeats_a_default_of_its_schema(path):
    """The schema in losslab.config holds each default; a file holds only what differs (its option's own values)."""
    own = yaml.safe_load(path.read_text()) or {}
    if path.parent == CONF_DIR:  # train.yaml: the primary config, on train_schema
        register()
        base = OmegaConf.to_container(ConfigStore.instance().load("train_schema.yaml").node, resolve=False,
                                      throw_on_missing=False)
        own.pop("defaults")
        own.pop("hydra", None)
    else:
        base = schema_defaults(path.parent.name, own.pop("defaults"))
    assert set(own) <= set(base), f"{path.name}: keys its schema does not have: {sorted(set(own) - set(base))}"
    repeated = {key: value for key, value in own.items() if same(value, base[key])}
    assert not repeated, f"{path.relative_to(CONF_DIR)} repeats its schema's defaults {repeated}: drop them"



@pytest.mark.parametrize("group", ["model", "loss"])
def test_constructor_defaults_agree_with_the_schemas(group):
    """losslab's models and losses keep defaults of their own (usable from Python without a config); where a schema
    has the same key, both give the same value."""
    register()
    disagree = {}
    for name in ConfigStore.instance().list(group):
        schema = OmegaConf.to_container(ConfigStore.instance().load(f"{group}/{name}").node, resolve=False)
        signature = inspect.signature(get_class(schema["_target_"]))
        for key, param in signature.parameters.items():
            if key in schema and param.default is not inspect.Parameter.empty:
                default = list(param.default) if isinstance(param.default, tuple) else param.default
                if not same(default, schema[key]):
                    disagree[f"{schema['_target_']}({key})"] = (default, schema[key])
    assert not disagree, f"constructor default vs schema default: {disagree}"


if __name__ == "__main__":
    configs = {case: composed(case) for case in cases()}
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps({"about": ABOUT, "configs": configs}, indent=1, ensure_ascii=False) + "\n")
    print(f"{SNAPSHOT}: {len(configs)} configs", file=sys.stderr)
