"""Sensor: wait until the destination's background copy of a taken-over volume is complete.

It reads the migration's view in Cinder (the destination's cinder-volume
answers the copy's progress there) and judges it with ``copy_watch.judge_copy``,
as the trigger does. Deferrable by default: it hands the waiting to
``TargetCopyTrigger`` and holds no worker slot meanwhile. ``deferrable=False``
polls from the worker (``poke``), for setups without a triggerer. Both wait
until the copy's ``deadline`` (epoch seconds: the migration's, set once with
its lock), so no retry of the wait restarts the clock; a wait that meets it
fails without retry. The copy goes on: abandon it, or clear the wait once
the copy is done (a look that finds it done succeeds, whatever the time).
"""

from __future__ import annotations

import time
from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

from include.migration.copy_watch import CopyOutcome, judge_copy
from include.migration.deadlines import LEGACY_COPY_TIMEOUT_S, deadline_text, seconds_left
from plugins.migration_runtime import progress_cinder
from plugins.triggers.target_copy import TargetCopyTrigger


class TargetCopySensor(BaseSensorOperator):
    template_fields = ("volume_id", "backend", "deadline", "lock_owner")

    def __init__(
        self,
        *,
        volume_id: str,
        backend: str = "",
        poll_interval: float = 10.0,
        deadline: float | str,
        lock_owner: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        """``volume_id``, ``backend`` (the destination, for the log), ``deadline`` (epoch seconds) and ``lock_owner``
        may be templates (rendered per run). The deferred wait also reports the copy's progress to the volume's
        metadata as ``lock_owner``, the migration's owner in Cinder."""
        super().__init__(poke_interval=poll_interval, **kwargs)
        self.volume_id = volume_id
        self.backend = backend
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.lock_owner = lock_owner
        self.deferrable = deferrable

    def _deadline(self) -> float:
        """The rendered deadline; a run locked before deadlines were kept with the lock has none: a day from now."""
        try:
            return float(self.deadline)
        except (TypeError, ValueError):
            self.log.warning(
                "no copy deadline in the plan (%r): waiting up to %d s", self.deadline, LEGACY_COPY_TIMEOUT_S
            )
            self.deadline = time.time() + LEGACY_COPY_TIMEOUT_S
            return self.deadline

    def pre_execute(self, context: Any) -> None:
        self.timeout = seconds_left(self._deadline(), time.time())  # rendered by now; bounds the poke loop

    def poke(self, context: Any) -> bool:
        look = judge_copy(progress_cinder().migration(self.volume_id))
        self.log.info("copy of volume %s on %s: %s", self.volume_id, self.backend,
                      look.progress.describe() if look.progress else look.message)  # fmt: skip
        if look.outcome is CopyOutcome.FAILED:
            raise AirflowException(f"copy of volume {self.volume_id} on {self.backend} failed: {look.message}")
        return look.outcome is CopyOutcome.DONE

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=TargetCopyTrigger(
                self.volume_id,
                backend=self.backend,
                poll_interval=self.poll_interval,
                deadline=self._deadline(),
                owner=self.lock_owner or None,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        """Resume after the trigger's one event: the progress when done, else fail with what Cinder said."""
        status = event.get("status")
        if status == CopyOutcome.DONE.value:
            self.log.info("copy of volume %s on %s is complete", self.volume_id, self.backend)
            return event.get("progress")
        detail = event.get("message") or (event.get("progress") or {}).get("message") or ""
        if status == "timeout":  # a retry would meet the same deadline
            raise AirflowFailException(
                f"copy of volume {self.volume_id} on {self.backend} is not complete at its deadline "
                f"{deadline_text(self._deadline())}; the copy goes on: abandon it, or clear this task once it "
                "is done (a wait that finds the copy done commits it whatever the time)"
            )
        raise AirflowException(
            f"copy of volume {self.volume_id} on {self.backend} ended {status}: {detail}".rstrip(": ")
        )
