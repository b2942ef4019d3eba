"""A client of a Cinder volume for the fault matrix (``lab/faults.py``): attached through Cinder, verifying.

It waits until the volume is ``migrating_attachable`` (or another of the
migration states it is given), attaches it through
Cinder's attachments API, and reads and writes at random (``lab/verify.py``)
until stopped, flushing every 20 operations.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from include.cinder_plugin.names import MIGRATING_ATTACHABLE
from include.migration.errors import CinderError
from lab import verify
from lab.procutil import wait_until

CONNECTOR = {"host": "faults", "ip": "127.0.0.1", "initiator": "iqn.faults", "multipath": False, "platform": "x86_64"}


class AttachedClient(threading.Thread):
    """Reads and writes the volume through a Cinder attachment from the moment it is attachable until stopped.

    On a broken connection it reconnects (bounded) and checks the whole volume: every sector must hold its data
    as of the last flush or a write since (``DataModel.crash_violations``); then that content is the model."""

    def __init__(self, cinder: Any, volume_id: str, model: verify.DataModel, rng: random.Random,
                 timeout: float, usable: tuple[str | None, ...] = (MIGRATING_ATTACHABLE,)) -> None:  # fmt: skip
        """``timeout``: how long an attach or a reconnect is tried again, and how long ``detach`` waits;
        ``usable``: the volume's ``migration_status`` values in which the client attaches."""
        super().__init__(daemon=True)
        self.cinder, self.volume_id, self.model, self.rng = cinder, volume_id, model, rng
        self.timeout, self.usable = timeout, usable
        self.attached_at: float | None = None  # time.monotonic() once attached
        self.io_started: float | None = None  # time.monotonic() once its first I/O began
        self.stop = threading.Event()
        self.ops = self.disruptions = self.lost = self.bad_reads = 0
        self.attachment: str | None = None
        self.connection: dict[str, Any] = {}  # the attachment's connection_info
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            if self._wait_attachable():
                self._attach()
                self._io()
        except Exception as exc:  # recorded: the trial reports it
            self.errors.append(f"client: {type(exc).__name__}: {exc}")

    def _wait_attachable(self) -> bool:
        def attachable() -> bool:
            try:
                return self.cinder.get_volume(self.volume_id).get("migration_status") in self.usable
            except CinderError:
                return False

        while not self.stop.is_set():
            if attachable():
                return True
            self.stop.wait(0.5)
        return False

    def _attach(self) -> None:
        """Attach through Cinder, again until it answers (a fault may have hit Cinder, Keystone or RabbitMQ)."""
        body = {"attachment": {"volume_uuid": self.volume_id, "connector": CONNECTOR}}
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                att = self.cinder.request("POST", "/attachments", body)["attachment"]
                break
            except CinderError:
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                time.sleep(2.0)
        self.attachment, self.connection = att["id"], att["connection_info"]
        self.attached_at = time.monotonic()

    def _io(self) -> None:
        handle = verify.open_connection(self.connection)
        self.io_started = time.monotonic()
        while not self.stop.is_set():
            stats = verify.random_io(handle, self.model, 20, self.rng, max_size=128 * 1024)
            self.ops += stats.reads + stats.writes
            self.bad_reads += len(stats.mismatches)
            if stats.errors:
                self.disruptions += 1
                handle = self._reconnect()
                if handle is None:
                    return
                continue
            try:
                handle.flush()
                self.model.flushed()
            except Exception:  # a flush that failed promises nothing: the pending writes stay pending
                self.disruptions += 1
                handle = self._reconnect()
                if handle is None:
                    return
        try:
            handle.flush()
            self.model.flushed()
            handle.shutdown()
        except Exception as exc:
            self.errors.append(f"last flush: {exc}")

    def _reconnect(self) -> Any:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                handle = verify.open_connection(self.connection)
                content = verify.read_all(handle, self.model.size)
            except Exception:
                time.sleep(1.0)
                continue
            self.lost += len(self.model.crash_violations(content))
            self.model.adopt(content)
            return handle
        return None

    def wait_attached(self, timeout: float) -> bool:
        """Until its I/O began (True), or it gave up or ``timeout`` passed (False)."""
        return wait_until(lambda: self.io_started is not None or not self.is_alive(), timeout, 0.2) and (
            self.io_started is not None
        )

    def detach(self) -> None:
        """Stop, then delete every attachment of the volume, as an operator cleans up after a client: an attach
        that failed while a fault lasted can leave one (and the volume ``reserved``) that Cinder could not undo."""
        self.stop.set()
        self.join(self.timeout)

        def detached() -> bool:
            try:
                found = self.cinder.request("GET", f"/attachments?volume_id={self.volume_id}")["attachments"]
                for att in found:
                    self.cinder.request("DELETE", f"/attachments/{att['id']}")
                return not found and self.cinder.get_volume(self.volume_id)["status"] == "available"
            except CinderError:
                return False

        if not wait_until(detached, 120, 2.0):
            self.errors.append("attachments left after 120 s")
