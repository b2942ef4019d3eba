"""A small authenticated HTTP+JSON server for the lab arrays' management API.

Routes are ``(method, regex) -> handler(match, body) -> (status, json)``.
Handlers raise ``include.backends.errors.BackendError`` subclasses to refuse;
the server turns them into JSON error bodies with the matching status.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from include.backends.errors import BackendError, InvalidRequest, NotFound, Unauthorized

log = logging.getLogger(__name__)

Handler = Callable[[re.Match[str], dict[str, Any]], Any]
MAX_BODY = 1 << 20


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def dispatch(self, method: str, path: str, body: dict[str, Any]) -> Any:
        known_path = False
        for route_method, regex, handler in self.routes:
            match = regex.match(path)
            if match:
                known_path = True
                if route_method == method:
                    return handler(match, body)
        if known_path:
            raise InvalidRequest(f"method {method} is not allowed on {path}")
        raise NotFound(f"no such API path: {path}")


def serve(router: Router, host: str, port: int, token: str) -> ThreadingHTTPServer:
    """Start serving ``router`` on a thread; returns the server (call shutdown())."""

    expected = f"Bearer {token}".encode()

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lab-array/1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

        def _reply(self, status: int, payload: Any) -> None:
            raw = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            try:
                given = (self.headers.get("Authorization") or "").encode()
                if not hmac.compare_digest(given, expected):
                    raise Unauthorized("missing or wrong API token")
                body = self._read_body()
                path = unquote(self.path.split("?", 1)[0])
                result = router.dispatch(self.command, path, body)
                self._reply(200, result)
            except BackendError as exc:
                if exc.http_status >= 500:
                    log.error("%s %s failed: %s", self.command, self.path, exc)
                self._reply(exc.http_status, exc.to_json())
            except Exception as exc:  # a bug or an unexpected QEMU answer: say so, keep serving
                log.exception("%s %s crashed", self.command, self.path)
                self._reply(500, {"error": "backend_error", "message": f"internal error: {exc}"})

        def _read_body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise InvalidRequest("request body too large")
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise InvalidRequest("request body must be a JSON object")
            return body

        do_GET = do_POST = do_DELETE = do_PUT = _handle

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server


# ---- request validation helpers shared by the array daemons ----------------
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def require_name(body: dict[str, Any], key: str = "name") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidRequest(f"'{key}' must be 1-128 characters of letters, digits, '_', '.', '-'")
    return value


def require_size(body: dict[str, Any], key: str = "size", *, granularity: int = 512) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"'{key}' must be a positive whole number of bytes")
    if value % granularity:
        raise InvalidRequest(f"'{key}' must be a multiple of {granularity} bytes")
    return value


def optional_int(body: dict[str, Any], key: str, *, minimum: int = 0) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"'{key}' must be a whole number >= {minimum}")
    return value
