"""Sensor: wait until the target array's background copy of a taken-over volume is complete.

Deferrable by default: it hands the waiting to ``TargetCopyTrigger`` and
holds no worker slot meanwhile. ``deferrable=False`` polls from the worker
(``poke``), for setups without a triggerer.
"""

from __future__ import annotations

from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseSensorOperator

from include.backends.base import MigrationState, Volume
from plugins.hooks.storage_array import StorageArrayHook
from plugins.triggers.target_copy import TargetCopyTrigger


class TargetCopySensor(BaseSensorOperator):
    template_fields = ("backend", "volume_name", "size", "copy_timeout_s", "volume_id", "lock_owner")

    def __init__(
        self,
        *,
        backend: str,
        volume_name: str,
        size: int | str,
        poll_interval: float = 10.0,
        copy_timeout_s: float | str = 24 * 3600,
        volume_id: str | None = None,
        lock_owner: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        """``backend``, ``volume_name``, ``size``, ``copy_timeout_s``, ``volume_id`` and ``lock_owner`` may be templates
        (rendered per run). With ``volume_id`` the deferred wait also reports the copy's progress to Cinder (the
        volume's metadata) as ``lock_owner``, the migration's owner in Cinder."""
        timeout = copy_timeout_s if isinstance(copy_timeout_s, (int, float)) else 24 * 3600
        super().__init__(poke_interval=poll_interval, timeout=timeout, **kwargs)
        self.backend = backend
        self.volume_name = volume_name
        self.size = size
        self.poll_interval = poll_interval
        self.copy_timeout_s = copy_timeout_s
        self.volume_id = volume_id
        self.lock_owner = lock_owner
        self.deferrable = deferrable

    def _volume(self) -> Volume:
        return Volume(self.volume_name, int(self.size))

    def pre_execute(self, context: Any) -> None:
        self.timeout = float(self.copy_timeout_s)  # rendered by now; bounds the non-deferrable poke loop

    def poke(self, context: Any) -> bool:
        progress = StorageArrayHook.for_backend(self.backend).adapter.complete_migration_target(self._volume())
        self.log.info("copy of %s on %s: %s", self.volume_name, self.backend, progress.describe())
        if progress.state is MigrationState.FAILED:
            raise AirflowException(f"copy of {self.volume_name} on {self.backend} failed: {progress.message}")
        return progress.state is MigrationState.DONE

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=TargetCopyTrigger(
                self.backend,
                self.volume_name,
                int(self.size),
                poll_interval=self.poll_interval,
                timeout_s=float(self.copy_timeout_s),
                volume_id=self.volume_id or None,
                owner=self.lock_owner or None,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger's one event: the progress when done, else fail with what the array said."""
        status = event.get("status")
        if status == "done":
            self.log.info("copy of %s on %s is complete", self.volume_name, self.backend)
            return event["progress"]
        detail = event.get("message") or (event.get("progress") or {}).get("message") or ""
        raise AirflowException(f"copy of {self.volume_name} on {self.backend} ended {status}: {detail}".rstrip(": "))
