"""The lab's own failures: a service, a daemon or a command of the lab that did not start, answer or finish.

An array's refusal is ``include.backends.errors.BackendError`` (the arrays
speak for themselves); ``LabError`` is the test equipment around them.
"""

from __future__ import annotations


class LabError(Exception):
    """A lab service or command failed; the message names it and the log to read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
