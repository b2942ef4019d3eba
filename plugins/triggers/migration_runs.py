"""Trigger that wakes a waiting rebalance when one of its migration runs ends, or after a while.

The rebalance's ``migrate`` task defers between its rounds (no worker slot
held while its migrations run) and hands this trigger the runs it is
following. It looks at their states every ``poll_interval`` seconds and
yields exactly one event:

* ``{"status": "ended", "run_id": ..., "state": ...}``: that run ended;
* ``{"status": "look_again"}``: ``wake_after_s`` passed with none ended
  (the next round reads Cinder again: a migration started by someone else
  may have ended and freed a place under the limits), or a look failed
  (``message`` says why: the next round looks for itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from plugins.migration_runs import first_ended


class MigrationRunsTrigger(BaseTrigger):
    def __init__(self, run_ids: list[str], *, poll_interval: float = 5.0, wake_after_s: float = 60.0) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.poll_interval = poll_interval
        self.wake_after_s = wake_after_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"run_ids": self.run_ids, "poll_interval": self.poll_interval, "wake_after_s": self.wake_after_s},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started = time.monotonic()
        while True:
            try:
                ended = await first_ended(self.run_ids) if self.run_ids else None
            except Exception as exc:  # the API server restarting, say: the task's next round looks for itself
                yield TriggerEvent({"status": "look_again", "message": f"{type(exc).__name__}: {exc}"})
                return
            if ended is not None:
                yield TriggerEvent({"status": "ended", "run_id": ended[0], "state": ended[1]})
                return
            if time.monotonic() - started >= self.wake_after_s:
                yield TriggerEvent({"status": "look_again"})
                return
            await asyncio.sleep(self.poll_interval)
