"""Each job of a sweep composed as Hydra composes it, with Hydra's public API only: a job whose overrides differ
from an earlier job's only in the values of plain config keys is that job's composition with the new values set by
OmegaConf, as Hydra sets them after composing the defaults; any other job Hydra composes
(`ConfigLoader.load_sweep_config`, what its basic launcher calls for every job)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class Compositions:
    """`compose(master_config, overrides)` (Hydra's load_sweep_config) for the jobs that need it, a derived
    composition for the others. `validated` holds the compositions that the sweeper's validation pass made
    (losslab.sweeps.hydra_adapter), by (id of the master config, overrides), until the launcher takes them."""

    def __init__(self, compose: Callable[[DictConfig, list[str]], DictConfig]) -> None:
        self.compose, self.parser = compose, OverridesParser.create()
        self.templates: list[tuple[int, list[Override], DictConfig]] = []  # (master config id, overrides, config)
        self.validated: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(list(sweep_overrides))
        for master, before, template in self.templates:
            if master == id(master_config):
                config = derived_composition(master_config, template, before, parsed)
                if config is not None:
                    return config
        config = self.compose(master_config, list(sweep_overrides))
        # a copy: running the job makes the composition's hydra node read-only (HydraConfig.set_config)
        self.templates.append((id(master_config), parsed, copy.deepcopy(config)))
        return config

    def take(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The job's composition: the sweeper's, when it made one, else one made now."""
        config = self.validated.pop((id(master_config), tuple(sweep_overrides)), None)
        return self(master_config, list(sweep_overrides)) if config is None else config


def derived_composition(master_config: DictConfig, template: DictConfig, before: list[Override],
                        after: list[Override]) -> DictConfig | None:
    """What Hydra composes for the parsed overrides `after`, from `template`, its composition of `before`, when the
    two lists name the same keys in the same order and differ only in values of config keys: not config groups
    (those are in the template's hydra.runtime.choices), not hydra.*, not dicts (Hydra merges those into what the
    defaults gave), not a key that another override sets too or one inside or around it. Else None, and Hydra
    composes the job."""
    keys = [o.key_or_group for o in after]
    if [o.key_or_group for o in before] != keys:
        return None
    changed = [o for o, old in zip(after, before) if o.input_line != old.input_line]
    groups = set(template.hydra.runtime.choices)
    values = [k for k in keys if k not in groups]
    for o in changed:
        key = o.key_or_group
        nested = keys.count(key) > 1 or any(k.startswith(key + ".") or key.startswith(k + ".") for k in values)
        if (o.type != OverrideType.CHANGE or o.package is not None or o.is_hydra_override() or nested
                or o.is_sweep_override() or key in groups or isinstance(o.value(), dict)):
            return None
    config = copy.deepcopy(template)
    for o in changed:
        set_value(config, o)
    task = [o for o in after if not o.is_hydra_override()]
    dirname = config.hydra.job.config.override_dirname
    config.hydra.overrides.task = [o.input_line for o in task]
    config.hydra.job.override_dirname = override_dirname(task, list(dirname.exclude_keys), dirname.item_sep,
                                                         dirname.kv_sep)
    OmegaConf.copy_cache(from_config=master_config, to_config=config)  # as load_sweep_config does
    return config


def set_value(config: DictConfig, override: Override) -> None:
    """A `key=value` override set on the composed config, with the errors Hydra gives for it."""
    try:
        try:
            OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
        except (ConfigAttributeError, ConfigKeyError) as e:
            raise ConfigCompositionException(f"Could not override '{override.key_or_group}'.\nTo append to your "
                                             f"config use +{override.input_line}") from e
    except OmegaConfBaseException as e:
        raise ConfigCompositionException(f"Error merging override {override.input_line}").with_traceback(
            sys.exc_info()[2]) from e


def override_dirname(overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """hydra.job.override_dirname of a job's (non-hydra) overrides: their lines but those of `exclude_keys`,
    sorted, joined by `item_sep`, each `=` written as `kv_sep` (hydra.job.config.override_dirname)."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
    return item_sep.join(lines).replace("=", kv_sep)
