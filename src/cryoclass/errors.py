"""Errors that reach the user as one clear line.

Every problem caused by the user's input (files, columns, config values) raises
:class:`InputError` (or a subclass); the CLI prints ``cryoclass: error: <message>``
and exits with status 2, on every rank, without a traceback.
"""


class CryoclassError(Exception):
    """Base class of errors cryoclass reports as one line."""

    exit_code = 1


class InputError(CryoclassError):
    """Bad input: a missing or corrupt file, a missing column, a bad config value."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration key, type or value that cannot be used."""
