"""Errors shared by the array daemons and the adapters that call them.

Each error carries the HTTP status and the short code that the management API
sends, so a refusal raised inside an array daemon reaches the caller as the
same exception class with the same message.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class: something an array refused or could not do."""

    http_status = 500
    code = "backend_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class InvalidRequest(BackendError):
    """The request is malformed or names a value out of range."""

    http_status = 400
    code = "invalid_request"


class Unauthorized(BackendError):
    """Missing or wrong credential."""

    http_status = 401
    code = "unauthorized"


class NotFound(BackendError):
    """Unknown LUN, pool, export or route."""

    http_status = 404
    code = "not_found"


class Conflict(BackendError):
    """The object exists or is busy (under takeover, being copied or moved)."""

    http_status = 409
    code = "conflict"


class PoolFull(BackendError):
    """The pool has not enough free space for the request."""

    http_status = 507
    code = "pool_full"


class ArrayUnavailable(BackendError):
    """The array's management API cannot be reached or failed internally."""

    http_status = 503
    code = "unavailable"


ERRORS_BY_CODE: dict[str, type[BackendError]] = {
    cls.code: cls
    for cls in (
        BackendError,
        InvalidRequest,
        Unauthorized,
        NotFound,
        Conflict,
        PoolFull,
        ArrayUnavailable,
    )
}


def error_from_json(status: int, body: dict[str, object] | None) -> BackendError:
    """Rebuild the exception an array daemon sent as a JSON error body."""
    body = body or {}
    cls = ERRORS_BY_CODE.get(str(body.get("error", "")), BackendError)
    message = str(body.get("message") or f"array answered HTTP {status}")
    return cls(message)
