"""Exceptions that carry a one-line, user-facing message (the CLI prints them without a traceback)."""


class DifflabError(Exception):
    """Base class: the message names what is wrong and where (file, field, row)."""


class DataError(DifflabError, ValueError):
    """Unreadable, malformed or out-of-contract input data."""


class ConfigError(DifflabError, ValueError):
    """A bad configuration key, type or value."""


class CheckpointError(DifflabError):
    """A missing, truncated or corrupted checkpoint."""
