"""Exceptions that separate a user's mistake from a bug.

The CLI prints a :class:`UserError` as one line and exits with code 2, never with a traceback;
any other exception is a runtime failure (exit 1, traceback only with ``--debug``).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad config, bad data, missing plugin. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """The run configuration is invalid."""


class DataError(UserError):
    """The input data (id_prop file, structure files, targets) is invalid."""


class PluginError(UserError):
    """A plugin is missing, misconfigured, or two plugins claim the same name."""


class ModelError(UserError):
    """A trained model cannot be used: missing files, unreadable checkpoint, unsupported kind."""
