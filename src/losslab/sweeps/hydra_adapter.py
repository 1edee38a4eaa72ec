"""The one place where losslab relies on how Hydra works inside rather than on what it documents.

Hydra's sweepers compose every job of a batch to check it before launching it (`Sweeper.validate_batch_is_legal`,
through `hydra_context.config_loader.load_sweep_config`) and throw the compositions away; the launcher then composes
each job again. Hydra has no public way to hand the launcher what the sweeper composed, so `remember_compositions`
routes that loader's `load_sweep_config`, on this one instance, through the launcher's `Compositions`, which derives
most jobs' configs instead of composing them and keeps each for the launcher.

The fallback is the public path: where the attribute cannot be set, or a sweeper does not compose through it, the
launcher composes each job itself (`Compositions.take`). tests/test_stacked_launcher.py checks that Hydra's basic
sweeper still goes through the layer, and that the launcher composes every job as Hydra does without it.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from losslab.sweeps.compositions import Compositions

log = logging.getLogger("losslab")


def remember_compositions(config_loader) -> Compositions:
    """The Compositions that `config_loader.load_sweep_config` goes through from now on, each config it returns
    kept in `validated`; the same one when the loader already has it (a second multirun of one process)."""
    hydras = config_loader.load_sweep_config
    if isinstance(getattr(hydras, "compositions", None), Compositions):
        return hydras.compositions
    compositions = Compositions(hydras)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = compositions(master_config, sweep_overrides)
        compositions.validated[id(master_config), tuple(sweep_overrides)] = config  # a validating sweeper only reads it
        return config

    load_sweep_config.compositions = compositions
    try:
        config_loader.load_sweep_config = load_sweep_config  # this loader instance only, for this multirun
    except (AttributeError, TypeError) as e:
        log.debug("the launcher composes every job itself: %s", e)
    return compositions
