"""HTTP for the lab's calls to its own services on 127.0.0.1: JSON bodies, never through a proxy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # http_proxy must not catch 127.0.0.1


def http_call(
    method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """Send one request; returns (status, headers, raw body).

    An HTTP error status is an answer, returned like any other; a server
    that cannot be reached raises OSError (urllib's URLError is one).
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
