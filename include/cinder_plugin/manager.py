"""cinder-volume's side of the blueprint: each step runs in the volume service that owns the backend concerned.

Name it in cinder.conf (``[DEFAULT]``)::

    volume_manager = include.cinder_plugin.manager.AsyncMigrationManager

``AsyncMigrationManager`` is Cinder's own ``VolumeManager`` (everything it does
stays as it is) with the blueprint's steps added as RPC methods. The API
extension (``extension.py``) reaches them through ``AsyncMigrationAPI``
(``rpcapi.py``), on the backend's own topic (``cinder-volume.<host@backend>``),
so a step runs where the backend's driver and its credentials already are:

* ``async_migration_features`` (call): what the backend's driver offers of the
  blueprint (``Features``);
* ``async_migration_source_migrate`` (cast): blueprint step 1 on the SOURCE
  backend, the driver's own ``migrate_volume`` (a stock driver's move within
  its array: Cinder's RBD driver moves a volume between pools of one cluster).
  Its outcome is recorded in the volume's admin metadata (``SOURCE_STEP_KEY``):
  ``running``, then ``moved`` (the volume is on the destination: host,
  service, zone and the driver's model update are set, the lock stays),
  ``not_moved`` (nothing changed: the caller asks the target next), or
  ``failed: <reason>`` (the driver raised: the source is as the driver left
  it, and the lock stays for the caller to roll back).

Why a volume manager subclass: Cinder has no other supported way to run code
of ours inside cinder-volume next to a driver; ``volume_manager`` is a
documented option, the subclass changes none of Cinder's methods, and
``VolumeAPI``'s per-backend topic is the RPC Cinder itself uses for
``migrate_volume``.
"""

from __future__ import annotations

from typing import Any

from cinder import objects
from cinder.db import api as db
from cinder.volume import manager, volume_utils
from oslo_log import log as logging

from include.backends.features import features_of
from include.cinder_plugin.names import SOURCE_STEP_KEY, SourceStep

LOG = logging.getLogger(__name__)


class AsyncMigrationManager(manager.VolumeManager):
    """Cinder's volume manager plus the blueprint's steps (see the module's docstring)."""

    def async_migration_features(self, context: Any) -> dict[str, Any]:
        """What this backend's driver offers of the blueprint, as ``Features.to_json()``."""
        return features_of(self.driver, backend=self.host).to_json()

    def async_migration_source_migrate(self, context: Any, volume: Any, host: dict[str, Any]) -> None:
        """Blueprint step 1 on this (the SOURCE) backend: ``driver.migrate_volume(context, volume, host)``.

        ``host``: the destination pool as Cinder's scheduler describes it (``host``,
        ``cluster_name``, ``capabilities``). The volume is locked for the move by
        the caller (``starting``) and stays locked whatever the outcome, which is
        recorded in its admin metadata (see the module's docstring).
        """
        self._record(context, volume, SourceStep.RUNNING)
        try:
            volume_utils.require_driver_initialized(self.driver)
            moved, model_update = self.driver.migrate_volume(context, volume, host)
        except Exception as exc:  # whatever the driver raised is the outcome: said, not lost in a log
            LOG.exception("async migration of volume %s: migrate_volume on %s failed", volume.id, self.host)
            self._record(context, volume, f"{SourceStep.FAILED}: {type(exc).__name__}: {exc}")
            return
        if not moved:
            LOG.info("async migration of volume %s: %s cannot move it to %s", volume.id, self.host, host["host"])
            self._record(context, volume, SourceStep.NOT_MOVED)
            return
        service = objects.Service.get_by_args(context.elevated(), volume_utils.extract_host(host["host"]),
                                              "cinder-volume")  # fmt: skip
        updates = {
            "host": host["host"],
            "cluster_name": host.get("cluster_name"),
            "availability_zone": service.availability_zone,
            "service_uuid": service.uuid,
            **(model_update or {}),
        }
        volume.update(updates)
        volume.save()
        LOG.info("async migration of volume %s: moved by %s's driver to %s", volume.id, self.host, host["host"])
        self._record(context, volume, SourceStep.MOVED)

    @staticmethod
    def _record(context: Any, volume: Any, outcome: str) -> None:
        db.volume_admin_metadata_update(context.elevated(), volume.id, {SOURCE_STEP_KEY: outcome[:255]}, False)
