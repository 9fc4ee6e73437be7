"""Errors that reach the user as one clear line.

Every problem caused by the user's input (files, columns, config values) raises
:class:`InputError` (or a subclass); an output that cannot be written raises
:class:`OutputError`. The CLI prints ``cryoclass: error: <message>`` once and exits
with status 2 (input) or 74 (output) on every rank, without a traceback.
"""


class CryoclassError(Exception):
    """Base class of errors cryoclass reports as one line."""

    exit_code = 1


class InputError(CryoclassError):
    """Bad input: a missing or corrupt file, a missing column, a bad config value."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration key, type or value that cannot be used."""


class OutputError(CryoclassError):
    """An output cannot be written: a file in the way, no permission, the disk full.

    The CLI prints one line and exits with status 74 (``EX_IOERR``); the file being
    written is removed, never left half-written.
    """

    exit_code = 74
