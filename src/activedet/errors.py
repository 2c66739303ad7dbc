"""Errors users can act on.

Every error a user can fix by changing an input (a file, a table, a config value, a CLI flag) is an
:class:`ActivedetError`. The CLI prints its message as one line on stderr and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ActivedetError(Exception):
    """Base class for input and usage errors: the message says what is wrong and where."""


class SchemaError(ActivedetError):
    """A table does not satisfy the data contract (see :mod:`activedet.schema`)."""


class ConfigError(ActivedetError):
    """An experiment or stage config is invalid."""


class StoreError(ActivedetError):
    """An artifact-store operation failed (missing object, no access, bad URI)."""


class IncompleteOutputError(StoreError):
    """A stage output has no commit manifest: the writer died or is still running."""


class ConcurrentUpdateError(ActivedetError):
    """Another run changed shared state first (optimistic version check lost)."""
