"""Trigger that watches a target array's background copy until it ends (``complete_migration_target``).

It runs in the triggerer, so no worker slot is held while a copy that may
take hours goes on. It polls the target array every ``poll_interval``
seconds while the copy's end is near, and less often while it is far, paused
or waiting for its source (``next_poll_s``: a thousand waits in one triggerer
then cost a fraction of a core); it logs progress (percent, rate, ETA) when
the state changes and at least once a minute, and yields exactly one event:

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

from include.backends.base import MigrationProgress, MigrationState, Volume
from include.backends.errors import ArrayUnavailable, BackendError
from include.migration.cinder_progress import ProgressToCinder
from plugins.hooks.storage_array import StorageArrayHook
from plugins.migration_runtime import progress_cinder

LONGEST_POLL_S = 30.0  # a copy far from its end, paused or waiting for its source is looked at this often
LOG_EVERY_S = 60.0  # a progress line at least this often, and at each change of state
IDLE_STATES = frozenset({MigrationState.PAUSED, MigrationState.WAITING_FOR_SOURCE})


def next_poll_s(progress: MigrationProgress | None, base: float, longest: float = LONGEST_POLL_S) -> float:
    """Seconds until the next look at a copy: a quarter of its ETA, between ``base`` and ``longest``.

    So the end is noticed within a quarter of the time that was left, and
    within ``base`` seconds once it is near. A paused copy, one waiting for
    its source, or one without an ETA is looked at every ``longest`` seconds;
    after a failed look (``progress`` None), every ``base`` seconds.
    """
    longest = max(base, longest)
    if progress is None:
        return base
    if progress.state in IDLE_STATES or progress.eta_seconds is None:
        return longest
    return min(max(base, progress.eta_seconds / 4), longest)


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
        longest_poll_s: float = LONGEST_POLL_S,
    ) -> None:
        super().__init__()
        self.longest_poll_s = longest_poll_s
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
                "longest_poll_s": self.longest_poll_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        volume = Volume(self.volume_name, self.size)
        adapter = await StorageArrayHook.for_backend(self.backend).aadapter()
        report = await self._progress_to_cinder()
        last = looked = None
        logged_at, logged_state = 0.0, None
        while True:
            try:
                last = looked = await asyncio.to_thread(adapter.complete_migration_target, volume)
            except ArrayUnavailable as exc:
                looked = None
                self.log.warning("array of backend %s unreachable, polling on: %s", self.backend, exc)
            except BackendError as exc:
                yield TriggerEvent({"status": "failed", "message": str(exc)})
                return
            else:
                if last.state is not logged_state or time.monotonic() - logged_at >= LOG_EVERY_S:
                    self.log.info("copy of %s on %s: %s", self.volume_name, self.backend, last.describe())
                    logged_at, logged_state = time.monotonic(), last.state
                if report is not None and report.due(last):
                    await asyncio.to_thread(report, last)
                if last.state.terminal:
                    status = "done" if last.state is MigrationState.DONE else "failed"
                    yield TriggerEvent({"status": status, "progress": last.to_json()})
                    return
            if time.time() - self.started_at > self.timeout_s:
                yield TriggerEvent({"status": "timeout", "progress": last.to_json() if last else None})
                return
            await asyncio.sleep(next_poll_s(looked, self.poll_interval, self.longest_poll_s))

    async def _progress_to_cinder(self) -> ProgressToCinder | None:
        if not self.volume_id:
            return None
        cinder = progress_cinder()
        await cinder.aconnect()
        return ProgressToCinder(cinder, self.volume_id, self.owner)
