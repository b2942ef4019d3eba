"""The RPC client of the blueprint's steps in cinder-volume (``manager.AsyncMigrationManager``).

Cinder's own ``VolumeAPI`` with our methods: each goes to the volume service
of one backend, on that backend's topic (``cinder-volume.<host@backend>``), as
Cinder's own ``migrate_volume`` does.
"""

from __future__ import annotations

from typing import Any

from cinder.volume import rpcapi


class AsyncMigrationAPI(rpcapi.VolumeAPI):
    def features(self, ctxt: Any, backend: str) -> dict[str, Any]:
        """What the driver of ``backend`` (``host@backend``) offers (``Features.to_json()``); waits for it."""
        return self._get_cctxt(backend).call(ctxt, "async_migration_features")

    def source_migrate(self, ctxt: Any, volume: Any, dest: dict[str, Any]) -> None:
        """Blueprint step 1 in the volume's own (source) service; ``dest``: ``host``, ``cluster_name``,
        ``capabilities`` of the destination pool. Returns at once: the outcome lands in the volume's admin
        metadata (``names.SOURCE_STEP_KEY``)."""
        self._get_cctxt(volume.service_topic_queue).cast(ctxt, "async_migration_source_migrate", volume=volume,
                                                         host=dest)  # fmt: skip
