"""The extension's actions for the generic host copy, made the way Cinder's own generic migration makes it.

Cinder's ``_migrate_volume_generic`` creates a volume on the destination over
RPC (``migration_status`` ``target:<id>``), opens both volumes with Cinder's
``initialize_connection`` RPC, copies, closes them (``terminate_connection``,
``remove_export``) and ends with ``migrate_volume_completion``, which lets the
destination driver's ``update_migrated_volume`` set its own metadata, swaps
the two volumes' records (the volume keeps its id) and deletes the source
through the source's own driver. Here the copy runs on the host that asks
(an Airflow worker, with Cinder's credentials only) and each step is an
action, admin-only by default (``POST /v3/{project_id}/volumes/{id}/action``,
policy rules ``volume_extension:async_migration:<action>``), for a volume
locked (``starting``) for a migration that no driver step moved:

* ``os-async_migration_copy_target`` ``{"owner"?, "volume_type_id"?}``: the
  destination volume, made once on the lock's destination pool (a new type
  when a retype asks for one). Answers ``{"copy_target": {"volume_id",
  "status", "host"}}``; the caller waits until it is ``available``. One
  recorded in ``error`` is deleted and made again.
* ``os-async_migration_copy_connect`` ``{"owner"?, "volume": "source" |
  "target", "connector"}``: a connection to either volume for the copying
  host's os-brick ``connector``, opened by the cinder-volume that owns the
  volume (Cinder's attachment API refuses a volume in ``maintenance``, as the
  lock leaves it, so this is Cinder's own RPC, as its generic migration uses).
  Answers ``{"connection_info": ...}``. The connector is recorded, so a
  failed or finished migration closes what a dead worker left open.
* ``os-async_migration_copy_disconnect`` ``{"owner"?, "copied"?}``: both
  connections closed; ``"copied": true`` first records that the destination
  holds the whole copy (flushed), which ``finish`` requires.

``finish`` (``extension.py``) then runs Cinder's ``migrate_volume_completion``
through ``finish_host_copy``; ``fail`` deletes the destination volume through
``drop_host_copy``. The source is deleted only by the completion, after the
copy was recorded complete.
"""

from __future__ import annotations

import json
from typing import Any

import webob
from cinder import exception, objects
from cinder.api.openstack import wsgi
from cinder.db import api as db
from cinder.objects import fields
from oslo_log import log as logging

from include.cinder_plugin.common import (
    ADMIN_KEYS,
    LOCKED,
    Controller,
    action_args,
    backend_service,
    check_holder,
    refusal,
    volume_type_or_400,
)
from include.cinder_plugin.names import (
    COPIED_KEY,
    COPY_CONNECTOR_KEY,
    COPY_TARGET_KEY,
    DEST_KEY,
    ERROR_KEY,
    PROGRESS_KEY,
    SOURCE_STEP_KEY,
    TARGET_STEP_KEY,
    SourceStep,
    TargetStep,
)

LOG = logging.getLogger(__name__)

# what the destination volume does not take from the source (Cinder's generic migration skips the same, and the
# provider's fields, which the destination driver sets)
NOT_COPIED = {
    "id", "_name_id", "name_id", "name", "status", "attach_status", "migration_status", "volume_type",
    "consistencygroup", "volume_attachment", "group", "snapshots", "use_quota", "host", "cluster_name",
    "availability_zone", "service_uuid", "snapshot_id", "source_volid", "provider_location", "provider_auth",
    "provider_id", "provider_geometry", "replication_status", "replication_driver_data",
    "replication_extended_status", "created_at", "updated_at", "deleted_at", "deleted", "launched_at",
    "terminated_at", "scheduled_at", "previous_status", "shared_targets", "volume_type_id", "metadata",
    "admin_metadata", "glance_metadata",
}  # fmt: skip
WHICH = ("source", "target")


def copy_target(context: Any, volume: Any) -> Any:
    """The destination volume a host copy of ``volume`` recorded, or None (none recorded, or gone)."""
    target_id = (volume.admin_metadata or {}).get(COPY_TARGET_KEY)
    if not target_id:
        return None
    try:
        return objects.Volume.get_by_id(context.elevated(), target_id)
    except exception.VolumeNotFound:
        return None


def _target_view(target: Any) -> dict[str, Any]:
    return {"copy_target": {"volume_id": target.id, "status": target.status, "host": target.host}}


def _locked_for_copy(volume: Any, action: str) -> None:
    """409 unless the volume is locked (``starting``) and no driver step moved it or runs."""
    meta = volume.admin_metadata or {}
    if (volume.migration_status, volume.status) != (LOCKED["migration_status"], LOCKED["status"]) or not meta.get(
        DEST_KEY
    ):
        raise webob.exc.HTTPConflict(explanation=refusal(volume, action) + " (lock it first)")
    steps = {"source": meta.get(SOURCE_STEP_KEY), "target": meta.get(TARGET_STEP_KEY)}
    busy = {k: v for k, v in steps.items() if v in (SourceStep.RUNNING, SourceStep.MOVED, TargetStep.ATTACHABLE)}
    if busy:
        raise webob.exc.HTTPConflict(
            explanation=f"volume {volume.id}: no host copy while a driver step is {', '.join(busy.values())} "
            f"({', '.join(busy)} driver)"
        )


def _connector(args: dict[str, Any]) -> dict[str, Any]:
    connector = args.get("connector")
    if not isinstance(connector, dict) or not connector.get("host"):
        raise webob.exc.HTTPBadRequest(explanation="'connector' must be an os-brick connector with a 'host'")
    if len(json.dumps(connector, sort_keys=True)) > 255:
        raise webob.exc.HTTPBadRequest(explanation="'connector' must hold at most 255 characters as JSON")
    return connector


def _disconnect(rpc: Any, context: Any, volume: Any, connector: dict[str, Any]) -> None:
    """Close the copying host's connection to ``volume`` in its own cinder-volume (as Cinder's generic migration
    detaches: terminate, then remove the export); a connection already closed is no error to the drivers."""
    rpc.terminate_connection(context, volume, connector, force=True)
    rpc.remove_export(context, volume, sync=True)


def _disconnect_all(rpc: Any, context: Any, volume: Any, target: Any, *, strict: bool) -> list[str]:
    """Close what the recorded connector has open on the source ``volume`` and its destination volume ``target``
    (``copy_target``'s, None when there is none); returns what could not be closed (``strict``: raises it as a 409
    instead)."""
    raw = (volume.admin_metadata or {}).get(COPY_CONNECTOR_KEY)
    if not raw:
        return []
    connector, failed = json.loads(raw), []
    for vol in (volume, target):
        if vol is None:
            continue
        try:
            _disconnect(rpc, context, vol, connector)
        except Exception as exc:  # said to the caller (strict) or logged: the audit finds a stale export
            failed.append(f"volume {vol.id} on {vol.host}: {type(exc).__name__}: {exc}")
    if failed and strict:
        raise webob.exc.HTTPConflict(explanation="could not close the copy's connections: " + "; ".join(failed))
    for line in failed:
        LOG.warning("host copy of volume %s: connection not closed: %s", volume.id, line)
    return failed


def finish_host_copy(rpc: Any, context: Any, volume: Any) -> None:
    """Cinder's ``migrate_volume_completion`` for a host copy recorded complete: the destination driver updates
    its volume, the records swap (the volume keeps its id) and the source is deleted by its own driver. 409,
    nothing changed, unless the copy was recorded complete into the recorded destination volume."""
    target = copy_target(context, volume)
    copied = (volume.admin_metadata or {}).get(COPIED_KEY)
    if target is None or copied != target.id or target.status != "available":
        raise webob.exc.HTTPConflict(
            explanation=f"volume {volume.id}: the host copy into {getattr(target, 'id', 'no destination volume')} "
            "is not recorded complete; the source is kept"
        )
    _disconnect_all(rpc, context, volume, target, strict=False)
    rpc.migrate_volume_completion(context, volume, target, False)
    LOG.info("host copy of volume %s completed through volume %s on %s", volume.id, target.id, target.host)


def drop_host_copy(rpc: Any, context: Any, volume: Any) -> None:
    """A host copy given up (the migration fails): its connections closed and its destination volume deleted by
    the destination's driver. The source is untouched. A destination volume still being created is left (the
    audit names it) rather than deleted under its own creation."""
    target = copy_target(context, volume)
    _disconnect_all(rpc, context, volume, target, strict=False)
    if target is None:
        return
    if target.conditional_update({"status": "deleting"}, {"status": ("available", "error", "error_deleting")}):
        rpc.delete_volume(context, target)
        LOG.info("host copy of volume %s given up: destination volume %s deleted", volume.id, target.id)
    else:
        LOG.warning("host copy of volume %s given up: destination volume %s is %s, not deleted", volume.id,
                    target.id, target.status)  # fmt: skip


class HostCopyController(Controller):
    @wsgi.action("os-async_migration_copy_target")
    def _copy_target(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "copy_target")
        check_holder(volume, args)
        _locked_for_copy(volume, "copy_target")
        target = copy_target(context, volume)
        if target is not None and target.status == "error":
            LOG.warning("host copy of volume %s: destination volume %s is in error; made again", id, target.id)
            drop_host_copy(self.rpc, context, volume)
            target = None
        if target is None:
            target = self._make_target(context, volume, args.get("volume_type_id"))
        return webob.Response(status_int=202, json_body=_target_view(target))

    def _make_target(self, context: Any, volume: Any, type_id: Any) -> Any:
        dest = volume.admin_metadata[DEST_KEY]
        service = backend_service(context, dest)
        values = {k: volume[k] for k in set(volume.keys()) - NOT_COPIED}
        values["volume_type_id"] = volume.volume_type_id if type_id is None else volume_type_or_400(context, type_id).id
        target = objects.Volume(
            context=context.elevated(),
            host=dest,
            cluster_name=service.cluster_name,
            availability_zone=service.availability_zone,
            service_uuid=service.uuid,
            status="creating",
            attach_status=fields.VolumeAttachStatus.DETACHED,
            migration_status=f"target:{volume.id}",
            use_quota=False,  # a temporary volume, as Cinder's own migration makes it
            metadata={k: v for k, v in (volume.metadata or {}).items() if k not in (PROGRESS_KEY, ERROR_KEY)},
            admin_metadata={k: v for k, v in (volume.admin_metadata or {}).items() if k not in ADMIN_KEYS},
            **values,
        )
        target.create()
        db.volume_admin_metadata_update(context.elevated(), volume.id, {COPY_TARGET_KEY: target.id}, False)
        db.volume_admin_metadata_delete(context.elevated(), volume.id, COPIED_KEY)
        try:
            self.rpc.create_volume(context, target, None, None, allow_reschedule=False)
        except Exception:  # not sent: no service makes it, so no record may say one will
            db.volume_admin_metadata_delete(context.elevated(), volume.id, COPY_TARGET_KEY)
            target.destroy()
            raise
        LOG.info("host copy of volume %s: destination volume %s asked of %s", volume.id, target.id, dest)
        return target

    @wsgi.action("os-async_migration_copy_connect")
    def _copy_connect(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "copy_connect")
        check_holder(volume, args)
        _locked_for_copy(volume, "copy_connect")
        which, connector = args.get("volume"), _connector(args)
        if which not in WHICH:
            raise webob.exc.HTTPBadRequest(explanation=f"'volume' must be one of {', '.join(WHICH)}")
        target = copy_target(context, volume)
        if target is None or target.status != "available":
            state = "none" if target is None else f"{target.id} is {target.status}"
            raise webob.exc.HTTPConflict(explanation=f"volume {id}: no destination volume is available ({state})")
        recorded = (volume.admin_metadata or {}).get(COPY_CONNECTOR_KEY)
        wanted = json.dumps(connector, sort_keys=True)
        if recorded and recorded != wanted:  # another host copies now (a retry elsewhere): close what it opened
            _disconnect_all(self.rpc, context, volume, target, strict=False)
        if recorded != wanted:
            db.volume_admin_metadata_update(context.elevated(), volume.id, {COPY_CONNECTOR_KEY: wanted}, False)
        vol = volume if which == "source" else target
        try:
            info = self.rpc.initialize_connection(context, vol, connector)
        except Exception as exc:
            raise webob.exc.HTTPConflict(
                explanation=f"the cinder-volume of {vol.host} did not open volume {vol.id} for {connector['host']}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        LOG.info("host copy of volume %s: %s volume %s opened for %s (%s)", id, which, vol.id, connector["host"],
                 info.get("driver_volume_type"))  # fmt: skip
        return webob.Response(status_int=200, json_body={"connection_info": info})

    @wsgi.action("os-async_migration_copy_disconnect")
    def _copy_disconnect(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "copy_disconnect")
        check_holder(volume, args)
        if volume.migration_status != LOCKED["migration_status"]:
            raise webob.exc.HTTPConflict(explanation=refusal(volume, "copy_disconnect") + " (not a host copy)")
        target = copy_target(context, volume)
        if args.get("copied"):
            if target is None or target.status != "available":
                raise webob.exc.HTTPConflict(explanation=f"volume {id}: no destination volume to record copied")
            db.volume_admin_metadata_update(context.elevated(), volume.id, {COPIED_KEY: target.id}, False)
            LOG.info("host copy of volume %s: destination volume %s holds the whole copy", id, target.id)
        _disconnect_all(self.rpc, context, volume, target, strict=True)
        volume.refresh()
        return webob.Response(status_int=202, json_body=_target_view(target) if target else {"copy_target": None})
