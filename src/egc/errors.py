"""The one exception type that user-facing code raises for bad input.

The CLI catches :class:`EgcError` and prints its message as a single line (no traceback), so the
message must name the problem: the file, the shape, the class id or the flag.
"""


class EgcError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class DataError(EgcError):
    """A data set is missing, corrupt or malformed."""


class CheckpointError(EgcError):
    """A checkpoint is missing, unreadable, foreign or incompatible."""


class ConfigError(EgcError):
    """A config value or command-line flag is invalid."""
