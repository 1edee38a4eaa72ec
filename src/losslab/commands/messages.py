"""A command's errors as one sentence on the screen (and in the run's log files), exit status 2."""

from __future__ import annotations

import difflib
import logging
import sys

log = logging.getLogger("losslab")


def fail(prog: str, message: str) -> None:
    log_to_files(f"{prog}: error: {message}")
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def log_to_files(message: str) -> None:
    """An error in the log files only (a run's cli.log, through Hydra's job logging): its dir then says why it
    holds no results, and the screen shows the sentence once."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def one_sentence(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line compose errors as one line (the key, what is wrong, options)."""
    skip = ("full_key:", "object_type=", "reference_type=", "To append to your config", "Set the environment",
            "Config search path", "provider=")
    lines = [line.strip() for e in (error, error.__cause__) if e is not None for line in str(e).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(skip) and not line.endswith("_schema"))
    return (text + did_you_mean(error.__cause__)
            + " (`losslab-train --cfg job` prints the composed config with every key.)")


def did_you_mean(cause: BaseException | None) -> str:
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
