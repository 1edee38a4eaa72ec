"""User mistakes: caught at the entry points and printed as one sentence (no traceback)."""

import errno
import re

NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


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


def unwritable(error: BaseException, fix: str) -> UserError | None:
    """A write the file system refused (no permission, read-only, full) as one sentence: the file or dir, the
    OS's reason and `fix` (where to point the command instead); None for any other error, which stays a bug."""
    if not isinstance(error, OSError) or error.errno not in NOT_WRITABLE:
        return None
    target = re.sub(r"/\.([^/]+)\.\d+\.[0-9a-f]+\.tmp$", r"/\1", str(error.filename or "its output"))  # fileio's temp
    space = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return UserError(f"cannot write {target} ({error.strerror}): {'free space there' if space else 'make it writable'}"
                     f" or {fix}.")
