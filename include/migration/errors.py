"""What can go wrong in a migration, one class per meaning.

* ``InvalidParams``: the run's parameters are wrong; nothing was changed.
* ``MigrationRefused``: the volume, the destination or an array is not fit
  for the move; nothing was changed.
* ``MigrationFailed``: a step could not finish; the message says what state
  it left and what to do.
* ``CopyDeadlinePassed``: the copy's deadline (set once, with the lock)
  passed before it was complete; no retry can help.
* ``InconsistenciesLeft``: the audit found inconsistencies that it did not
  repair; an operator must act (each one's action is in the message).
* ``CinderError``: Cinder answered with an error (``status``: its HTTP
  status) or could not be reached (``status`` None).

An array's own refusals and failures are ``include.backends.errors.BackendError``.
"""

from __future__ import annotations


class InvalidParams(ValueError):
    """The run's parameters are wrong; nothing was changed."""


class MigrationRefused(Exception):
    """The migration cannot start; nothing was changed."""


class MigrationFailed(Exception):
    """A step could not finish; the message says what state it left."""


class CopyDeadlinePassed(MigrationFailed):
    """The copy's deadline passed before it was complete: fails without retry (a retry would meet it again)."""


class InconsistenciesLeft(Exception):
    """The audit found inconsistencies that it did not repair; the message lists them with their actions."""


class CinderError(Exception):
    """Cinder refused a call (4xx), failed past the retry budget, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
