"""Sensor: wait until the destination's background copy of a taken-over volume is complete.

It reads the migration's view in Cinder (the destination's cinder-volume
answers the copy's progress there) and judges it with ``copy_watch.judge_copy``,
as the trigger does. Deferrable by default: it hands the waiting to
``TargetCopyTrigger`` and holds no worker slot meanwhile. ``deferrable=False``
polls from the worker (``poke``), for setups without a triggerer.
"""

from __future__ import annotations

from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseSensorOperator

from include.migration.copy_watch import CopyOutcome, judge_copy
from plugins.migration_runtime import progress_cinder
from plugins.triggers.target_copy import TargetCopyTrigger


class TargetCopySensor(BaseSensorOperator):
    template_fields = ("volume_id", "backend", "copy_timeout_s", "lock_owner")

    def __init__(
        self,
        *,
        volume_id: str,
        backend: str = "",
        poll_interval: float = 10.0,
        copy_timeout_s: float | str = 24 * 3600,
        lock_owner: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        """``volume_id``, ``backend`` (the destination, for the log), ``copy_timeout_s`` and ``lock_owner`` may be
        templates (rendered per run). The deferred wait also reports the copy's progress to the volume's metadata
        as ``lock_owner``, the migration's owner in Cinder."""
        timeout = copy_timeout_s if isinstance(copy_timeout_s, (int, float)) else 24 * 3600
        super().__init__(poke_interval=poll_interval, timeout=timeout, **kwargs)
        self.volume_id = volume_id
        self.backend = backend
        self.poll_interval = poll_interval
        self.copy_timeout_s = copy_timeout_s
        self.lock_owner = lock_owner
        self.deferrable = deferrable

    def pre_execute(self, context: Any) -> None:
        self.timeout = float(self.copy_timeout_s)  # rendered by now; bounds the non-deferrable poke loop

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
                timeout_s=float(self.copy_timeout_s),
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
        raise AirflowException(
            f"copy of volume {self.volume_id} on {self.backend} ended {status}: {detail}".rstrip(": ")
        )
