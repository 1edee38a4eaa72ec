"""User mistakes: caught at the entry points and printed as one sentence (no traceback)."""


class UserError(Exception):
    """A mistake the user can fix; the message says what, where, and how."""


class ConfigError(UserError):
    """A config value that is out of range or does not fit the rest of the config."""


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


class RunDirBusy(UserError):
    """Another process is training in this run dir."""


class DataError(UserError):
    """A data file that is missing, truncated, corrupt or does not match the task."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped a run after it wrote last.pt and summary.json (status interrupted).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
