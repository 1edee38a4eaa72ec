"""Every preset composes to what it sets, every sweep preset's grid composes job by job, and every experiment
trains one batch with `losslab-train experiment=<name> trainer=debug` from a fresh dir.

The presets are the files in conf/experiment/ and conf/sweep/ when the tests are collected: a new preset is tested
without a change here. A sweep preset is composed with the command its header comment shows (e.g. `losslab-train
experiment=emnist_vgg5_min_ent sweep=entropy_ablation`: its keys exist only with that experiment's loss), or alone
where it shows none. The repo ships only MNIST: experiments on CIFAR-10 or EMNIST letters train on the tiny copies
in their real on-disk formats that conftest's `fixture_root` writes, passed with `dataset.root`.
"""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
from helpers.commands import summary
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from losslab.commands.cli import compose
from losslab.config import CONF_DIR
from losslab.data import TASKS
from losslab.data.sources import read_source

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
FIXTURE_SOURCES = ("cifar10", "emnist_letters")  # written by conftest's fixture_data; MNIST ships in data/
ABSENT = object()


def preset(group: str, name: str) -> dict:
    """conf/<group>/<name>.yaml as written (interpolations unresolved), read by the parser Hydra uses."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml")) or {}


def what_it_sets(name: str) -> tuple[dict[str, str], dict]:
    """(config group -> choice, values) that experiment `name` sets, over what the experiments it extends set:
    its own group overrides and values are applied last, as Hydra applies them."""
    own = preset("experiment", name)
    choices, values, overrides = {}, {}, {}
    for entry in own.pop("defaults", []):
        if entry == "_self_":
            continue
        if isinstance(entry, str):  # another experiment, extended
            parent_choices, parent_values = what_it_sets(entry)
            choices.update(parent_choices)
            values = OmegaConf.to_container(OmegaConf.merge(values, parent_values))
        else:
            ((group, choice),) = entry.items()  # `override /dataset: cifar10`
            overrides[group.removeprefix("override").strip().lstrip("/")] = choice
    values = OmegaConf.to_container(OmegaConf.merge(values, own))
    return {**choices, **overrides}, values


def leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of every value in a nested dict (a list is one value)."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def at(tree: dict, key: str):
    """The value at a dotted key of a nested dict, or ABSENT."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return ABSENT
        tree = tree[part]
    return tree


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_composes_to_the_groups_and_values_it_sets(name):
    choices, values = what_it_sets(name)
    cfg = compose([f"experiment={name}"])
    composed = OmegaConf.to_container(cfg)
    hydra = OmegaConf.to_container(HydraConfig.get(), enum_to_str=True)
    chosen = HydraConfig.get().runtime.choices
    assert chosen["experiment"] == name
    assert choices, f"experiment={name} chooses no config group"
    assert {group: chosen.get(group) for group in choices} == choices
    for key, value in leaves(values):
        found = at(hydra, key.removeprefix("hydra.")) if key.startswith("hydra.") else at(composed, key)
        assert found == value, f"experiment={name} sets {key}={value!r}, the composed config holds {found!r}"


def documented_command(name: str) -> list[str]:
    """The overrides of the `losslab-train ...` command in sweep preset `name`'s header comment, or `sweep=<name>`."""
    for line in (CONF_DIR / "sweep" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        if found := re.match(r"#\s*losslab-train\s+(.+)$", line):
            return [word for word in shlex.split(found[1]) if word not in ("-m", "--multirun")]
    return [f"sweep={name}"]


def expand(params: dict[str, str]) -> list[list[tuple[str, str, object]]]:
    """Per swept key, (key, value as an override writes it, value as the config holds it) for each of its values,
    as Hydra's basic sweeper expands them."""
    expanded = []
    for override in OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()]):
        if override.is_sweep_override():
            values = list(zip(override.sweep_string_iterator(), override.sweep_iterator()))
        else:
            values = [(override.get_value_element_as_str(), override.value())]
        expanded.append([(override.key_or_group, text, value) for text, value in values])
    return expanded


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_preset_is_a_multirun_whose_every_job_composes(name):
    command = documented_command(name)
    assert any(word.startswith("sweep=") and re.search(rf"\b{name}\b", word) for word in command), \
        f"the header of sweep={name} shows a command without it: {command}"
    cfg = compose(command)
    assert HydraConfig.get().mode == RunMode.MULTIRUN  # `losslab-train sweep=<name>` sweeps without -m
    params = dict(HydraConfig.get().sweeper.params or {})
    assert params, f"sweep={name} sets no hydra.sweeper.params"
    # the jobs as the multirun composes them: Hydra composes each choice of the swept config groups (a group's
    # choice decides the keys there are), then every value of the other swept keys is set on each job's config,
    # checked against the schema as Hydra sets an override
    chosen = HydraConfig.get().runtime.choices
    groups = [values for values in expand(params) if values[0][0] in chosen]
    others = [value for values in expand(params) if values[0][0] not in chosen for value in values]
    for choice in itertools.product(*groups):
        job_cfg = compose([*command, *(f"{group}={text}" for group, text, _ in choice)]) if choice else cfg
        assert {group: HydraConfig.get().runtime.choices[group] for group, _, _ in choice} == \
            {group: text for group, text, _ in choice}
        missing = [key for key in params if OmegaConf.select(job_cfg, key, default=ABSENT) is ABSENT]
        assert not missing, f"not in the composed config of job {choice} of sweep={name}"
        for key, text, value in others:
            OmegaConf.update(job_cfg, key, value)
            assert OmegaConf.select(job_cfg, key) == value, f"{key}={text} in job {choice}"


def fixture_sizes(data) -> list[str]:
    """Splits that fit the fixture's 500 (CIFAR-10) or 520 (EMNIST) training and 100 or 130 test images."""
    sizes = ["dataset.val_size=50"]
    if data.val_offset:
        sizes.append("dataset.val_offset=50")
    if data.train_size is not None:
        sizes.append("dataset.train_size=100")
    return sizes


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_trains_one_batch_from_a_fresh_dir(name, fixture_root, tmp_path, losslab):
    # an experiment's own budget (mnist_lenet_500_steps: trainer.max_steps=500) composes after trainer=debug
    overrides = [f"experiment={name}", "trainer=debug", "trainer.max_steps=1"]
    data = compose(overrides).dataset
    source = TASKS[data.name][0]
    if source in FIXTURE_SOURCES:
        # `fixture_root` points torchvision's CIFAR10 checksums at the fixture files in this process only: the source
        # is read here once, into the cache under the root (keyed by its files), which losslab-train then reads
        read_source(source, fixture_root, download=False)
        overrides += [f"dataset.root={fixture_root}", "dataset.download=false", *fixture_sizes(data)]
    done = losslab.train(*overrides, cwd=tmp_path)
    assert done.returncode == 0, f"losslab-train {shlex.join(overrides)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    result = summary(run_dir)
    assert (result["status"], result["steps"]) == ("completed", 1), result
