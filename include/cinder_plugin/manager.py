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
* ``async_migration_inventory`` and ``async_migration_release_held`` (call):
  what the backend holds, for an audit, and the repair of a leftover no
  volume accounts for (``include/backends/inventory.py``);
* ``async_migration_source_migrate`` (call, waited for 2 s at most): blueprint step 1 on the SOURCE
  backend, the driver's own ``migrate_volume`` (a stock driver's move within
  its array: Cinder's RBD driver moves a volume between pools of one cluster),
  given ``TAKEOVER_NEXT`` in its ``host`` when the destination takes volumes
  over (a source driver whose own move keeps the volume unusable may then
  leave it to step 2: ``AsyncRBDDriver`` does).
  Its outcome is recorded in the volume's admin metadata (``SOURCE_STEP_KEY``):
  ``running``, then ``moved`` (the volume is on the destination: host,
  service, zone and the driver's model update are set, the lock stays),
  ``not_moved`` (nothing changed: the caller asks the target next), or
  ``failed: <reason>`` (the driver raised: the source is as the driver left
  it, and the lock stays for the caller to roll back).
* ``async_migration_target_migrate`` (call, waited for 2 s at most): blueprint step 2 on the TARGET
  backend, for a driver that is an ``AsyncMigrationTarget``
  (``include/backends/target_driver.py``): the source's own cinder-volume
  opens a connection for the target's ``takeover_connector()`` (Cinder's
  ``initialize_connection``), then ``migrate_volume_target``. Its outcome
  goes to ``TARGET_STEP_KEY``: ``running``, then ``attachable`` (host,
  service, zone and model update set, ``migrating_attachable``, ``available``;
  the source's location kept in ``SOURCE_LOCATION_KEY``), ``moved`` (the
  same, complete, still locked), ``not_moved`` or ``failed: <reason>`` (the
  takeover aborted and the source's connection terminated: the source is as
  it was);
  A step 2 that this service's stop cut short (``running`` with its request
  recorded, ``TARGET_ARGS_KEY``) is run again when the service starts
  (``init_host_with_rpc``); the driver's takeover is idempotent, and a
  request runs only while it is the one recorded, once at a time;
* ``async_migration_copy`` (call): one look at the target's background copy,
  or pause / resume / speed where the driver offers them; ``MigrationProgress``;
* ``async_migration_target_finish`` (call): the copy is DONE (else
  ``InvalidVolume``, nothing changed): the source's connection is terminated
  and the source volume deleted by the source's own driver;
* ``async_migration_target_abandon`` (call): the target's driver gives the copy
  up (``InvalidVolume`` when it does not qualify, nothing changed), then the
  source's connection is terminated; the volume's record is the caller's;
* ``async_migration_source_release`` (call, on the SOURCE backend): terminate
  a takeover connection of a volume as it was on this backend, and delete it
  there with ``delete``.

One of Cinder's own methods is extended: ``_connect_device`` opens an NBD
connection with the project's connector, so that Cinder's own generic copy
works on the lab arrays (everything else goes to Cinder's).

Why a volume manager subclass: Cinder has no other supported way to run code
of ours inside cinder-volume next to a driver; ``volume_manager`` is a
documented option, the subclass changes what none of Cinder's methods do
(the one it extends, ``init_host_with_rpc``, runs Cinder's first), and
``VolumeAPI``'s per-backend topic is the RPC Cinder itself uses for
``migrate_volume``.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from cinder import context as cinder_context
from cinder import exception, objects
from cinder.db import api as db
from cinder.volume import manager, volume_utils
from oslo_db import exception as db_exc
from oslo_log import log as logging

from include.backends.base import GiB, MigrationState
from include.backends.features import TARGET_METHODS, features_of
from include.backends.inventory import Cleanup, HeldVolume, InventoryDriver
from include.backends.target_driver import TAKEOVER_NEXT, AsyncMigrationTarget, TargetResult
from include.cinder_plugin.names import (
    ASYNC_TARGET_CAPABILITY,
    DEST_KEY,
    IN_FLIGHT,
    MANAGER_CAPABILITY,
    MANAGER_VERSION,
    SOURCE_KEY,
    SOURCE_LOCATION_KEY,
    SOURCE_STEP_KEY,
    TARGET_ARGS_KEY,
    TARGET_STEP_KEY,
    SourceStep,
    TargetStep,
)
from include.cinder_plugin.rpcapi import AsyncMigrationAPI
from include.connectors import cinder_attach

LOG = logging.getLogger(__name__)

INVENTORY_LIMIT = 100_000  # volumes listed at most for an audit
RECORD_TRIES, RECORD_PAUSE_S = 20, 3.0  # a step's outcome is recorded through a database outage of up to a minute


class AsyncMigrationManager(manager.VolumeManager):
    """Cinder's volume manager plus the blueprint's steps (see the module's docstring)."""

    def update_service_capabilities(self, capabilities: Any) -> None:
        """Cinder's, with ``MANAGER_CAPABILITY`` in the backend's and each pool's capabilities: the scheduler's
        pools say which services run the blueprint's steps (``validate_and_lock`` refuses the others)."""
        if isinstance(capabilities, dict):
            capabilities = {**capabilities, MANAGER_CAPABILITY: MANAGER_VERSION}
            if isinstance(capabilities.get("pools"), list):
                capabilities["pools"] = [
                    {**pool, MANAGER_CAPABILITY: MANAGER_VERSION} if isinstance(pool, dict) else pool
                    for pool in capabilities["pools"]
                ]
        super().update_service_capabilities(capabilities)

    def async_migration_features(self, context: Any) -> dict[str, Any]:
        """What this backend's driver offers of the blueprint, as ``Features.to_json()``."""
        return features_of(self.driver, backend=self.host).to_json()

    def async_migration_inventory(self, context: Any) -> dict[str, Any]:
        """What this backend holds, for an audit: ``{"volumes": [HeldVolume JSON], "repairable"}``. A driver that
        is an ``InventoryDriver`` lists everything and cleans up (``repairable``); any other is listed through its
        manageable-volumes listing (names and sizes; ``NotImplementedError`` from a driver without one)."""
        if isinstance(self.driver, InventoryDriver):
            return {"volumes": [held.to_json() for held in self.driver.held_volumes()], "repairable": True}
        entries = self.get_manageable_volumes(context, None, INVENTORY_LIMIT, 0, ["reference"], ["asc"])
        held = []
        for entry in entries:
            reference = entry.get("reference") or {}
            name = reference.get("source-name") or reference.get("source-id")
            if name:
                held.append(HeldVolume(str(name), int(entry.get("size") or 0) * GiB).to_json())
        return {"volumes": held, "repairable": False}

    def async_migration_release_held(self, context: Any, name: str, cleanup: str) -> str:
        """An audit's repair of a volume no Cinder volume accounts for (``Cleanup``); ``InvalidInput`` when the
        driver cleans nothing up."""
        if not isinstance(self.driver, InventoryDriver):
            raise exception.InvalidInput(reason=f"the driver of {self.host} cleans nothing up: left to an operator")
        done = self.driver.release_held(name, Cleanup(cleanup))
        LOG.warning("audit repair on %s: %s", self.host, done)
        return done

    def async_migration_source_migrate(self, context: Any, volume: Any, host: dict[str, Any]) -> None:
        """Blueprint step 1 on this (the SOURCE) backend: ``driver.migrate_volume(context, volume, host)``.

        ``host``: the destination pool as Cinder's scheduler describes it (``host``,
        ``cluster_name``, ``capabilities``), given to the driver with ``TAKEOVER_NEXT`` (the destination takes the
        volume over next if this driver does not move it). The volume is locked for the move by
        the caller (``starting``) and stays locked whatever the outcome, which is
        recorded in its admin metadata (see the module's docstring). Never raises (the API may wait for it): what
        went wrong beyond the driver is logged, and the step says ``running`` until it is asked again.
        """
        try:
            self._source_migrate(context, volume, host)
        except Exception:
            LOG.exception("async migration of volume %s: step 1 on %s stopped", volume.id, self.host)

    def _source_migrate(self, context: Any, volume: Any, host: dict[str, Any]) -> None:
        self._record(context, volume, SourceStep.RUNNING)
        asked = {**host, TAKEOVER_NEXT: bool((host.get("capabilities") or {}).get(ASYNC_TARGET_CAPABILITY))}
        try:
            volume_utils.require_driver_initialized(self.driver)
            moved, model_update = self.driver.migrate_volume(context, volume, asked)
        except Exception as exc:  # whatever the driver raised is the outcome: said, not lost in a log
            LOG.exception("async migration of volume %s: migrate_volume on %s failed", volume.id, self.host)
            self._record(context, volume, f"{SourceStep.FAILED}: {type(exc).__name__}: {exc}")
            return
        if not moved:
            LOG.info("async migration of volume %s: %s cannot move it to %s", volume.id, self.host, host["host"])
            self._record(context, volume, SourceStep.NOT_MOVED)
            return
        volume.update({**self._placed_on(context, host), **(model_update or {})})
        volume.save()
        LOG.info("async migration of volume %s: moved by %s's driver to %s", volume.id, self.host, host["host"])
        self._record(context, volume, SourceStep.MOVED)

    # ---- step 2, on the target -------------------------------------------------------
    @functools.cached_property
    def _async_rpc(self) -> AsyncMigrationAPI:
        return AsyncMigrationAPI()

    def init_host_with_rpc(self) -> None:
        """Cinder's, then (in the background: it asks the sources' services, which may be starting too) step 2
        run again for every volume whose takeover by this backend a stop of this service interrupted."""
        super().init_host_with_rpc()
        self._add_to_threadpool(self._resume_target_steps, cinder_context.get_admin_context())

    # ---- Cinder's own copy ------------------------------------------------------------
    def _connect_device(self, conn: dict[str, Any]) -> dict[str, Any]:
        """Cinder's, but an NBD connection (the lab arrays') is opened by the project's connector
        (``include.connectors``; os-brick has none), in user space, as a file object: so Cinder's own generic
        copy (``cinder migrate``, ``--force-host-copy``) reads and writes the lab arrays as it does Ceph's RBD
        handles. Cinder's ``_detach_volume`` disconnects it through the
        ``connector`` returned. (A private method of Cinder's ``VolumeManager``: the integration test
        ``test_cinder_private_api.py`` fails when its contract moves.)"""
        attach = cinder_attach(conn)
        return super()._connect_device(conn) if attach is None else attach

    def _resume_target_steps(self, context: Any) -> None:
        in_flight = {"migration_status": list(IN_FLIGHT)}
        for volume in objects.VolumeList.get_all(context, None, None, filters=in_flight):
            meta = volume.admin_metadata or {}
            dest = meta.get(DEST_KEY)
            if meta.get(TARGET_STEP_KEY) != TargetStep.RUNNING or volume_utils.extract_host(dest) != self.host:
                continue
            LOG.warning("async migration of volume %s: step 2 toward %s was interrupted; asked again", volume.id, dest)
            request = json.loads(meta.get(TARGET_ARGS_KEY) or "{}")
            self.async_migration_target_migrate(context, volume, {"host": dest, "capabilities": {}}, request)

    def async_migration_target_migrate(self, context: Any, volume: Any, host: dict[str, Any],
                                       request: dict[str, Any]) -> None:  # fmt: skip
        """Blueprint step 2 on this (the TARGET) backend; ``volume`` is locked (``starting``) on its source.

        ``host``: the destination pool as the scheduler describes it; ``request``: ``speed_bps``, ``mode`` and
        ``token``, as the API recorded them with ``running``. The outcome goes to the volume's admin metadata
        (``TARGET_STEP_KEY``, see the module's docstring); the lock stays whatever it is. A request runs only while
        it is the one recorded and ``running``, and once at a time in this service: a duplicate (a request delivered
        after this service ran the request again at its start, or one sent again) changes nothing.
        """
        if volume.id in self._steps_running:  # this service runs the step already: a duplicate does nothing
            LOG.info("async migration of volume %s: step 2 runs already in %s", volume.id, self.host)
            return
        self._steps_running.add(volume.id)
        try:
            self._target_migrate(context, volume, host, request)
        except Exception:  # never raised to the caller (the API may wait for it): the step stays running, asked again
            LOG.exception("async migration of volume %s: step 2 on %s stopped", volume.id, self.host)
        finally:
            self._steps_running.discard(volume.id)

    @functools.cached_property
    def _steps_running(self) -> set[str]:
        """The volumes whose step 2 runs in this service now (one backend, one process)."""
        return set()

    def _target_migrate(self, context: Any, volume: Any, host: dict[str, Any], request: dict[str, Any]) -> None:
        volume.refresh()
        meta = db.volume_admin_metadata_get(context.elevated(), volume.id)
        recorded = json.loads(meta.get(TARGET_ARGS_KEY) or "{}").get("token")
        step = functools.partial(self._record, context, volume, key=TARGET_STEP_KEY)
        if (meta.get(TARGET_STEP_KEY), recorded) == (TargetStep.RUNNING, request.get("token")) and (
            volume.migration_status == "migrating_attachable" and volume_utils.extract_host(volume.host) == self.host
        ):  # taken over, and this service stopped before it said so
            step(TargetStep.ATTACHABLE)
            return
        if (volume.migration_status, meta.get(TARGET_STEP_KEY), recorded) != (
            "starting", TargetStep.RUNNING, request.get("token")):  # fmt: skip
            LOG.info("async migration of volume %s: %s, step 2 %s: request %s has nothing to do", volume.id,
                     volume.migration_status, meta.get(TARGET_STEP_KEY), request.get("token"))  # fmt: skip
            return
        speed_bps, mode = request.get("speed_bps"), request.get("mode")
        if not isinstance(self.driver, AsyncMigrationTarget):
            LOG.info("async migration of volume %s: the driver of %s takes no volume over", volume.id, self.host)
            step(TargetStep.NOT_MOVED)
            return
        source = {"host": volume.host, "provider_location": volume.provider_location}
        connector = None
        try:
            volume_utils.require_driver_initialized(self.driver)
            connector = self.driver.takeover_connector()
            connection = self._async_rpc.initialize_connection(context, volume, connector)  # the source's service
            result = TargetResult(*self.driver.migrate_volume_target(context, volume, connection, host,
                                                                     speed_bps=speed_bps, mode=mode))  # fmt: skip
            if not result.moved:
                self._release(context, volume, source, connector)
                LOG.info("async migration of volume %s: %s cannot take it over", volume.id, self.host)
                step(TargetStep.NOT_MOVED)
                return
            kept = {SOURCE_LOCATION_KEY: (source["provider_location"] or "")[:255]}
            db.volume_admin_metadata_update(context.elevated(), volume.id, kept, False)
            updates = {**self._placed_on(context, host), **(result.model_update or {})}
            if result.migration_async:
                updates.update(migration_status="migrating_attachable", status="available")
            if not volume.conditional_update(updates, {"migration_status": "starting", "host": source["host"]}):
                raise exception.InvalidVolume(reason=f"volume {volume.id} is no longer locked on {source['host']}")
        except Exception as exc:  # whatever happened is the outcome: undone, and said
            LOG.exception("async migration of volume %s: migrate_volume_target on %s failed", volume.id, self.host)
            self._undo_takeover(context, volume, source, connector)
            step(f"{TargetStep.FAILED}: {type(exc).__name__}: {exc}")
            return
        outcome = TargetStep.ATTACHABLE if result.migration_async else TargetStep.MOVED
        LOG.info("async migration of volume %s: taken over by %s (%s)", volume.id, host["host"], outcome)
        step(outcome)

    def _undo_takeover(self, context: Any, volume: Any, source: dict[str, Any], connector: Any) -> None:
        """After a failed step 2: abort what the target's driver made, then terminate the source's connection."""
        if connector is None:
            return
        try:
            if callable(getattr(self.driver, TARGET_METHODS["abort"], None)):
                self.driver.abort_migration_target(context, volume)
            self._release(context, volume, source, connector)
        except Exception:
            LOG.exception("async migration of volume %s: the failed takeover could not be undone", volume.id)

    def _release(self, context: Any, volume: Any, source: dict[str, Any], connector: Any, delete: bool = False) -> None:
        self._async_rpc.source_release(context, volume, source, connector, delete)

    def _source_of(self, context: Any, volume: Any) -> dict[str, Any]:
        """Where a volume taken over by this backend came from: its source host and location there."""
        meta = db.volume_admin_metadata_get(context.elevated(), volume.id)
        if not meta.get(SOURCE_KEY):
            raise exception.InvalidVolume(reason=f"volume {volume.id} has no migration in flight")
        return {"host": meta[SOURCE_KEY], "provider_location": meta.get(SOURCE_LOCATION_KEY) or None}

    def async_migration_copy(self, context: Any, volume: Any, control: str | None = None,
                             speed_bps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """One look at the background copy (``control`` None), or ``pause`` / ``resume`` / ``speed`` it;
        ``MigrationProgress.to_json()``. InvalidInput when the driver offers no such control."""
        field = "complete_migration_target" if control is None else control
        method = getattr(self.driver, TARGET_METHODS.get(field, ""), None)
        if not callable(method):
            raise exception.InvalidInput(reason=f"the driver of {self.host} offers no {field}")
        volume_utils.require_driver_initialized(self.driver)
        progress = method(context, volume, speed_bps) if control == "speed" else method(context, volume)
        return progress.to_json()

    def async_migration_target_finish(self, context: Any, volume: Any, copied: bool = True) -> None:
        """The volume is complete on this backend: the source's connection goes and the source volume is deleted
        by its own driver. ``copied``: it was taken over async, so its copy must be DONE first (else
        InvalidVolume, nothing changed). Idempotent: a source already gone is what a retry expects."""
        volume_utils.require_driver_initialized(self.driver)
        if copied:
            progress = self.driver.complete_migration_target(context, volume)
            if progress.state is not MigrationState.DONE:
                raise exception.InvalidVolume(reason=f"the copy on {self.host} is {progress.describe()}; the "
                                                     "source is kept")  # fmt: skip
        self._release(context, volume, self._source_of(context, volume), self.driver.takeover_connector(), True)
        LOG.info("async migration of volume %s: complete on %s, its source is deleted", volume.id, self.host)

    def async_migration_target_abandon(self, context: Any, volume: Any) -> dict[str, Any]:
        """Give an attachable takeover up (the driver checks the source has every write, else InvalidVolume and
        nothing changed), then terminate the source's connection; returns the source (host, provider_location)."""
        volume_utils.require_driver_initialized(self.driver)
        if not callable(getattr(self.driver, TARGET_METHODS["abandon"], None)):
            raise exception.InvalidInput(reason=f"the driver of {self.host} offers no abandon")
        source = self._source_of(context, volume)
        self.driver.abandon_migration_target(context, volume)
        self._release(context, volume, source, self.driver.takeover_connector())
        LOG.warning("async migration of volume %s: takeover by %s abandoned", volume.id, self.host)
        return source

    # ---- on the source ---------------------------------------------------------------
    def async_migration_source_release(self, context: Any, volume: Any, source: dict[str, Any], connector: Any,
                                       delete: bool = False) -> None:  # fmt: skip
        """On this (the SOURCE) backend: terminate the takeover connection ``connector`` of ``volume`` as it was
        here (``source``: its host and provider_location here), and with ``delete`` delete it here."""
        volume_utils.require_driver_initialized(self.driver)
        here = volume.obj_clone()
        here.host, here.provider_location = source["host"], source.get("provider_location")
        self.driver.terminate_connection(here, connector, force=True)
        if delete:
            self.driver.delete_volume(here)
            LOG.info("async migration of volume %s: deleted from its source %s", volume.id, self.host)

    # ---- helpers -----------------------------------------------------------------------
    @staticmethod
    def _placed_on(context: Any, host: dict[str, Any]) -> dict[str, Any]:
        """The updates that put a volume on the scheduler's pool ``host``: host, cluster, zone and service."""
        service = objects.Service.get_by_args(context.elevated(), volume_utils.extract_host(host["host"]),
                                              "cinder-volume")  # fmt: skip
        return {
            "host": host["host"],
            "cluster_name": service.cluster_name,
            "availability_zone": service.availability_zone,
            "service_uuid": service.uuid,
        }

    @staticmethod
    def _record(context: Any, volume: Any, outcome: str, key: str = SOURCE_STEP_KEY) -> None:
        """A step's outcome into the volume's admin metadata; through a database outage of up to a minute (an
        outcome that is not recorded leaves the step ``running`` until this service starts again)."""
        for attempt in range(RECORD_TRIES):
            try:
                db.volume_admin_metadata_update(context.elevated(), volume.id, {key: outcome[:255]}, False)
                return
            except db_exc.DBConnectionError:
                if attempt == RECORD_TRIES - 1:
                    raise
                LOG.warning("async migration of volume %s: database unreachable, %s not recorded yet", volume.id, key)
                time.sleep(RECORD_PAUSE_S)
