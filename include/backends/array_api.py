"""Adapters for arrays that offer the lab's HTTP+JSON management API.

``ArrayApiBackend`` holds the LUN lifecycle shared by every array kind;
``ReferenceArrayBackend`` adds pool moves and takeover; ``PlainArrayBackend``
has no migration features (``moved`` is always False) but can be the source
of a takeover because it exports its LUNs over NBD.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from include.backends.base import (
    BackendDriver,
    Capabilities,
    ConnectionInfo,
    Destination,
    MigrationProgress,
    MigrationState,
    PoolInfo,
    Volume,
)
from include.backends.errors import ArrayUnavailable, BackendError, error_from_json

DEFAULT_TIMEOUT = 30.0


class ArrayApiBackend(BackendDriver):
    """A storage array reached through its management API at ``url``."""

    kind = "array"

    def __init__(self, name: str, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never shows the token
        return f"{type(self).__name__}(name={self.name!r}, url={self.url!r})"

    # ---- transport --------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one API call; returns the decoded JSON or raises a BackendError."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = None
            raise error_from_json(exc.code, payload) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ArrayUnavailable(f"array {self.name} at {self.url} is unreachable: {reason}") from None
        return json.loads(raw) if raw else None

    @staticmethod
    def _lun_path(name: str, suffix: str = "") -> str:
        return f"/v1/luns/{quote(name, safe='')}{suffix}"

    # ---- lifecycle --------------------------------------------------------
    def capabilities(self) -> Capabilities:
        data = self.request("GET", "/v1/capabilities")
        return Capabilities(
            name=data["name"],
            kind=data["kind"],
            takeover=bool(data["takeover"]),
            pool_move=bool(data["pool_move"]),
            pools=tuple(PoolInfo(**p) for p in data["pools"]),
        )

    def create_lun(self, name: str, size: int, pool: str) -> dict[str, Any]:
        return self.request("POST", "/v1/luns", {"name": name, "size": size, "pool": pool})

    def delete_lun(self, name: str) -> None:
        self.request("DELETE", self._lun_path(name))

    def extend_lun(self, name: str, size: int) -> dict[str, Any]:
        return self.request("POST", self._lun_path(name, "/extend"), {"size": size})

    def get_lun(self, name: str) -> dict[str, Any]:
        return self.request("GET", self._lun_path(name))

    def list_luns(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/luns")["luns"]

    def export_lun(self, name: str) -> ConnectionInfo:
        return ConnectionInfo.from_json(self.request("POST", self._lun_path(name, "/export")))

    def unexport_lun(self, name: str) -> None:
        self.request("DELETE", self._lun_path(name, "/export"))

    def export_for_takeover(self, name: str, initiator: str) -> ConnectionInfo:
        info = self.request("POST", self._lun_path(name, "/takeover-export"), {"initiator": initiator})
        return ConnectionInfo.from_json(info)

    def release_takeover(self, name: str) -> None:
        self.request("DELETE", self._lun_path(name, "/takeover-export"))


class PlainArrayBackend(ArrayApiBackend):
    """An array with no migration features (the lab's gamma on nbdkit)."""

    kind = "plain"


class ReferenceArrayBackend(ArrayApiBackend):
    """A takeover-capable array (the lab's alpha and beta on qemu-storage-daemon)."""

    kind = "reference"
    move_poll_interval = 0.5

    def migrate_volume(self, volume: Volume, dest: Destination) -> tuple[bool, dict[str, Any] | None]:
        """Move between pools of this array; other backends answer ``moved=False``.

        Blocks until the move has finished (the array copies online, so an
        attached server keeps working) and returns the new location.
        """
        if dest.backend != self.name:
            return False, None
        lun = self.get_lun(volume.name)
        if lun["pool"] != dest.pool:
            lun = self.request("POST", self._lun_path(volume.name, "/move"), {"pool": dest.pool})
        while lun.get("move"):
            time.sleep(self.move_poll_interval)
            lun = self.get_lun(volume.name)
        if lun["pool"] != dest.pool:
            raise BackendError(f"move of {volume.name} to pool {dest.pool} did not finish: {lun.get('error')}")
        return True, {"pool": lun["pool"], "provider_location": lun["location"]}

    def migrate_volume_target(
        self,
        volume: Volume,
        source: BackendDriver,
        *,
        pool: str,
        speed_bps: int | None = None,
        mode: str | None = None,
    ) -> tuple[bool, bool, dict[str, Any] | None]:
        """Take ``volume`` over from ``source`` (see BackendDriver).

        The source exports the LUN for this array, which attaches it as a
        remote LUN and serves it to servers at once. ``mode`` "stream" (the
        array's default) puts a local overlay over the remote LUN and streams
        the data into it; "mirror" serves the remote LUN through an active
        mirror that keeps the source current until the local copy is in sync.
        """
        return self.take_over(volume, lambda: source.export_for_takeover(volume.name, initiator=self.name).to_json(),
                              source.name, pool=pool, speed_bps=speed_bps, mode=mode)  # fmt: skip

    def take_over(
        self,
        volume: Volume,
        remote: Callable[[], dict[str, Any]],
        source_array: str,
        *,
        pool: str,
        speed_bps: int | None = None,
        mode: str | None = None,
    ) -> tuple[bool, bool, dict[str, Any] | None]:
        """Take ``volume`` over from array ``source_array``, reached through ``remote()`` (called only when the
        takeover is not made yet): an NBD export's ``ConnectionInfo.to_json()``, or an RBD image's
        ``{"type": "rbd", "pool", "image", "hosts", "ports", "user"}``; ``(True, copying, {"pool",
        "provider_location"})``. Idempotent: a LUN this
        array already took over from ``source_array`` gives the same answer; another LUN of that name is refused."""
        try:
            lun = self.get_lun(volume.name)
        except BackendError as exc:
            if exc.code != "not_found":
                raise
            lun = None
        if lun is None:
            body: dict[str, Any] = {
                "name": volume.name,
                "pool": pool,
                "size": volume.size,
                "source": {**remote(), "array": source_array},
            }
            if speed_bps is not None:
                body["speed_bps"] = speed_bps
            if mode is not None:
                body["mode"] = mode
            lun = self.request("POST", "/v1/takeovers", body)
        elif not lun.get("copy") and lun.get("taken_over_from") != source_array:
            # a LUN of that name that this array did not take over from source
            raise BackendError(f"array {self.name} already holds a LUN named {volume.name}")
        return True, bool(lun.get("copy")), {"pool": lun["pool"], "provider_location": lun["location"]}

    def complete_migration_target(self, volume: Volume) -> MigrationProgress:
        data = self.request("GET", self._lun_path(volume.name, "/migration"))
        return MigrationProgress.from_json(data)

    def abort_migration_target(self, volume: Volume) -> None:
        self.request("DELETE", f"/v1/takeovers/{quote(volume.name, safe='')}")

    def abandon_migration_target(self, volume: Volume) -> None:
        self.request("POST", f"/v1/takeovers/{quote(volume.name, safe='')}/abandon")

    def pause_migration(self, volume: Volume) -> MigrationProgress:
        return MigrationProgress.from_json(self.request("POST", self._lun_path(volume.name, "/migration/pause")))

    def resume_migration(self, volume: Volume) -> MigrationProgress:
        return MigrationProgress.from_json(self.request("POST", self._lun_path(volume.name, "/migration/resume")))

    def set_migration_speed(self, volume: Volume, speed_bps: int) -> MigrationProgress:
        data = self.request("POST", self._lun_path(volume.name, "/migration/speed"), {"speed_bps": speed_bps})
        return MigrationProgress.from_json(data)


__all__ = [
    "ArrayApiBackend",
    "MigrationState",
    "PlainArrayBackend",
    "ReferenceArrayBackend",
]
