"""Trigger that watches a takeover's background copy until it ends, through Cinder.

It reads the migration's view (``GET /os-async-migration/{volume_id}``: the
destination's cinder-volume answers its driver's ``complete_migration_target``
there) and judges it with ``copy_watch.judge_copy``, as the sensor's poke does.
It runs in the triggerer, so no worker slot is held while a copy that may
take hours goes on. It looks every ``poll_interval``
seconds while the copy's end is near, and less often while it is far, paused
or waiting for its source (``next_poll_s``: a thousand waits in one triggerer
then cost a fraction of a core); it logs progress (percent, rate, ETA) when
the state changes and at least once a minute, and yields exactly one event:

* ``{"status": "done", "progress": ...}``: the target is complete and has
  released the remote LUN;
* ``{"status": "failed", "progress"|"message": ...}``: the copy cannot go on,
  or the volume is no longer attachable on its destination (or gone);
* ``{"status": "timeout", "progress": ...}``: the copy's ``deadline`` (epoch
  seconds, the migration's, set once with its lock) passed first. A trigger
  made again (a triggerer restart, a retry of the wait) keeps the same one.

A look that fails (Cinder or the destination's cinder-volume restarting, say)
is not an event: polling goes on until it answers again or the deadline
passes. The progress also goes to the volume's metadata at a bounded rate
(``include/migration/cinder_progress.py``), as the migration's ``owner``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from include.backends.base import MigrationProgress, MigrationState
from include.migration.cinder_progress import ProgressToCinder
from include.migration.copy_watch import CopyLook, judge_copy
from include.migration.errors import CinderError
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
        volume_id: str,
        *,
        backend: str = "",
        poll_interval: float = 10.0,
        deadline: float,
        owner: str | None = None,
        longest_poll_s: float = LONGEST_POLL_S,
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.backend = backend  # the destination, for the log
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.owner = owner
        self.longest_poll_s = longest_poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "volume_id": self.volume_id,
                "backend": self.backend,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "owner": self.owner,
                "longest_poll_s": self.longest_poll_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        cinder = progress_cinder()
        await cinder.aconnect()
        report = ProgressToCinder(cinder, self.volume_id, self.owner)
        last: MigrationProgress | None = None
        logged_at, logged_state = 0.0, None
        while True:
            try:
                look = judge_copy(await asyncio.to_thread(cinder.migration, self.volume_id))
            except CinderError as exc:
                if exc.status == 404:
                    yield TriggerEvent({"status": "failed", "message": str(exc)})
                    return
                look = CopyLook(None, None, str(exc))
            if look.progress is None:
                self.log.warning("copy of volume %s on %s: no progress now, polling on: %s", self.volume_id,
                                 self.backend, look.message)  # fmt: skip
            else:
                last = look.progress
                if last.state is not logged_state or time.monotonic() - logged_at >= LOG_EVERY_S:
                    self.log.info("copy of volume %s on %s: %s", self.volume_id, self.backend, last.describe())
                    logged_at, logged_state = time.monotonic(), last.state
                if report.due(last):
                    await asyncio.to_thread(report, last)
            if look.outcome is not None:
                event = {"status": look.outcome.value, "message": look.message}
                yield TriggerEvent({**event, "progress": last.to_json() if last else None})
                return
            if time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "progress": last.to_json() if last else None})
                return
            await asyncio.sleep(next_poll_s(look.progress, self.poll_interval, self.longest_poll_s))
