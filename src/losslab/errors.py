"""User mistakes: caught at the entry points and printed as one sentence (no traceback)."""


class UserError(Exception):
    """A mistake the user can fix; the message says what, where, and how."""


class ConfigError(UserError):
    """A config value that is out of range or does not fit the rest of the config."""


class DataError(UserError):
    """A data file that is missing, truncated, corrupt or does not match the task."""
