"""The RPC client of the blueprint's steps in cinder-volume (``manager.AsyncMigrationManager``).

Cinder's own ``VolumeAPI`` with our methods: each goes to the volume service
of one backend, on that backend's topic (``cinder-volume.<host@backend>``), as
Cinder's own ``migrate_volume`` does.
"""

from __future__ import annotations

from typing import Any

import oslo_messaging
from cinder.volume import rpcapi


class AsyncMigrationAPI(rpcapi.VolumeAPI):
    def features(self, ctxt: Any, backend: str) -> dict[str, Any]:
        """What the driver of ``backend`` (``host@backend``) offers (``Features.to_json()``); waits for it."""
        return self._get_cctxt(backend).call(ctxt, "async_migration_features")

    def inventory(self, ctxt: Any, backend: str) -> dict[str, Any]:
        """What ``backend`` (``host@backend``) holds, as its driver lists it; waits for it."""
        return self._get_cctxt(backend).call(ctxt, "async_migration_inventory")

    def release_held(self, ctxt: Any, backend: str, name: str, cleanup: str) -> str:
        """An audit's repair of ``name`` on ``backend``; what was done."""
        return self._get_cctxt(backend).call(ctxt, "async_migration_release_held", name=name, cleanup=cleanup)

    def source_migrate(self, ctxt: Any, volume: Any, dest: dict[str, Any], wait_s: float) -> None:
        """Blueprint step 1 in the volume's own (source) service; ``dest``: ``host``, ``cluster_name``,
        ``capabilities`` of the destination pool. Waits for it to end at most ``wait_s``: after that it goes on
        there, and its outcome lands in the volume's admin metadata (``names.SOURCE_STEP_KEY``) all the same."""
        self._ask(self._get_cctxt(volume.service_topic_queue, timeout=wait_s), ctxt, "async_migration_source_migrate",
                  volume=volume, host=dest)  # fmt: skip

    # ---- step 2: on the target backend (the volume's host once it took the volume over) -------------------
    def target_migrate(self, ctxt: Any, volume: Any, dest: dict[str, Any], request: dict[str, Any],
                       wait_s: float) -> None:  # fmt: skip
        """Blueprint step 2 in the service of ``dest["host"]``; ``request``: ``speed_bps``, ``mode`` and the
        ``token`` recorded with it. Waits for it at most ``wait_s``, like ``source_migrate`` (the outcome lands in
        ``names.TARGET_STEP_KEY``)."""
        self._ask(self._get_cctxt(dest["host"], timeout=wait_s), ctxt, "async_migration_target_migrate",
                  volume=volume, host=dest, request=request)  # fmt: skip

    @staticmethod
    def _ask(cctxt: Any, ctxt: Any, method: str, **kwargs: Any) -> None:
        """Send a step's request and wait for its end until the client's timeout; a step still running then goes
        on in its service (the steps never raise there: what they did is recorded). Anything else raised here is
        a request that was not sent."""
        try:
            cctxt.call(ctxt, method, **kwargs)
        except oslo_messaging.MessagingTimeout:
            pass

    def copy(self, ctxt: Any, volume: Any, control: str | None = None, speed_bps: int | None = None,
             timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        """One look at the copy on the volume's (target) service, or a control of it; ``MigrationProgress``'s JSON."""
        cctxt = self._get_cctxt(volume.service_topic_queue, **({"timeout": timeout} if timeout else {}))
        return cctxt.call(ctxt, "async_migration_copy", volume=volume, control=control, speed_bps=speed_bps)

    def target_finish(self, ctxt: Any, volume: Any, copied: bool) -> None:
        self._get_cctxt(volume.service_topic_queue).call(ctxt, "async_migration_target_finish", volume=volume,
                                                         copied=copied)  # fmt: skip

    def target_abandon(self, ctxt: Any, volume: Any) -> dict[str, Any]:
        return self._get_cctxt(volume.service_topic_queue).call(ctxt, "async_migration_target_abandon", volume=volume)

    # ---- on the source backend, named explicitly (the volume's host may be its target already) -------------
    def source_release(self, ctxt: Any, volume: Any, source: dict[str, Any], connector: Any, delete: bool) -> None:
        self._get_cctxt(source["host"]).call(ctxt, "async_migration_source_release", volume=volume, source=source,
                                             connector=connector, delete=delete)  # fmt: skip
