"""Trigger that watches a target array's background copy until it ends (``complete_migration_target``).

It runs in the triggerer, so no worker slot is held while a copy that may
take hours goes on. It polls the target array every ``poll_interval``
seconds, logs progress (percent, rate, ETA) and yields exactly one event:

* ``{"status": "done", "progress": ...}``: the target is complete and has
  released the remote LUN;
* ``{"status": "failed", "progress"|"message": ...}``: the copy cannot go on,
  or the array does not know the LUN;
* ``{"status": "timeout", "progress": ...}``: ``timeout_s`` passed first.

An unreachable array (a restart, say) is not an event: polling goes on
until it answers again or the timeout passes. With ``volume_id``, the
progress also goes to the Cinder volume's metadata at a bounded rate
(``include/migration/cinder_progress.py``), as the migration's ``owner``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from include.backends.base import MigrationState, Volume
from include.backends.errors import ArrayUnavailable, BackendError
from include.migration.cinder_progress import ProgressToCinder
from plugins.hooks.storage_array import StorageArrayHook
from plugins.migration_runtime import progress_cinder


class TargetCopyTrigger(BaseTrigger):
    def __init__(
        self,
        backend: str,
        volume_name: str,
        size: int,
        *,
        poll_interval: float = 10.0,
        timeout_s: float = 24 * 3600,
        started_at: float | None = None,
        volume_id: str | None = None,
        owner: str | None = None,
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.owner = owner
        self.backend = backend
        self.volume_name = volume_name
        self.size = size
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s
        self.started_at = time.time() if started_at is None else started_at  # kept across triggerer restarts

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backend": self.backend,
                "volume_name": self.volume_name,
                "size": self.size,
                "poll_interval": self.poll_interval,
                "timeout_s": self.timeout_s,
                "started_at": self.started_at,
                "volume_id": self.volume_id,
                "owner": self.owner,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        volume = Volume(self.volume_name, self.size)
        adapter = await StorageArrayHook.for_backend(self.backend).aadapter()
        report = await self._progress_to_cinder()
        last = None
        while True:
            try:
                last = await asyncio.to_thread(adapter.complete_migration_target, volume)
            except ArrayUnavailable as exc:
                self.log.warning("array of backend %s unreachable, polling on: %s", self.backend, exc)
            except BackendError as exc:
                yield TriggerEvent({"status": "failed", "message": str(exc)})
                return
            else:
                self.log.info("copy of %s on %s: %s", self.volume_name, self.backend, last.describe())
                if report is not None and report.due(last):
                    await asyncio.to_thread(report, last)
                if last.state.terminal:
                    status = "done" if last.state is MigrationState.DONE else "failed"
                    yield TriggerEvent({"status": status, "progress": last.to_json()})
                    return
            if time.time() - self.started_at > self.timeout_s:
                yield TriggerEvent({"status": "timeout", "progress": last.to_json() if last else None})
                return
            await asyncio.sleep(self.poll_interval)

    async def _progress_to_cinder(self) -> ProgressToCinder | None:
        if not self.volume_id:
            return None
        cinder = progress_cinder()
        await cinder.aconnect()
        return ProgressToCinder(cinder, self.volume_id, self.owner)
