"""Cinder API extension: the async-migration states of the blueprint, recorded in Cinder's database.

Load it beside the standard extensions in cinder.conf::

    osapi_volume_extension = cinder.api.contrib.standard_extensions
    osapi_volume_extension = include.cinder_plugin.extension.Async_migration

Volume actions (``POST /v3/{project_id}/volumes/{id}/action``), admin-only by
default (policy rules ``volume_extension:async_migration:<action>``, which an
operator's policy file may override):

* ``os-async_migration_begin`` ``{"host": "host@backend#pool", "owner"?}``:
  lock the volume for a migration to ``host``: it must be ``available``, not
  migrating, without snapshots, outside any group, and ``host`` must be
  another pool of an enabled, up volume service. ``status`` becomes
  ``maintenance`` (nothing can attach it yet), ``migration_status``
  ``starting``. ``owner`` (the Airflow run, say) is recorded: the same begin
  from the same owner again, while the migration is ``starting`` or
  ``migrating_attachable``, is accepted without a change (a retried task, a
  re-run); from anyone else it is refused. The answer (202) holds the lock:
  ``{"async_migration": {"source_host", "host", "owner", "migration_status"}}``.
* ``os-async_migration_attachable`` ``{"host", "provider_location"?}``: the
  target array serves the volume: host (and cluster, service and
  availability zone) := the target, ``migration_status`` :=
  ``migrating_attachable``, ``status`` back to ``available``.
* ``os-async_migration_finish`` ``{"host"?, "provider_location"?,
  "volume_type_id"?}``: the copy is complete: ``migration_status`` :=
  ``success``. After a takeover, the destination's cinder-volume checks its
  copy first; after a host copy (``host_copy.py``), Cinder's own
  ``migrate_volume_completion`` swaps the volumes and deletes the source;
  after a driver moved the volume synchronously, the host is set. From
  ``starting`` with none of these done it is refused (409): nothing may mark
  a migration done that nothing copied.
* ``os-async_migration_fail`` ``{"reason", "owner"?}``: before the volume was
  attachable only: ``migration_status`` := ``error``, host unchanged,
  ``status`` restored; the reason is kept in the volume's metadata
  (``async_migration_error``), where ``cinder show`` shows it. A host copy's
  destination volume is deleted.
* ``os-async_migration_abandon`` ``{"reason", "owner"?, "provider_location"?}``:
  a migration given up while ``migrating_attachable``, before the target
  switched over (the caller has deleted the target; the source has every
  write): the volume must be ``available`` and detached; host (and cluster,
  service and zone) := the source the lock recorded, ``migration_status`` :=
  ``error``, the reason in ``async_migration_error``.
* ``os-async_migration_progress`` ``{"progress", "owner"?}``: while a
  migration is in flight (``starting`` or ``migrating_attachable``, whatever
  the volume's ``status``), the copy's progress as one line of text in the
  volume's metadata (``async_migration_progress``), where ``cinder show``
  shows it; removed when the migration ends (``begin`` clears a stale one).
* ``os-async_migration_source_migrate`` ``{"owner"?}``: blueprint step 1,
  for a volume locked (``starting``): the source backend's cinder-volume
  runs its driver's own ``migrate_volume`` toward the lock's destination
  (``manager.AsyncMigrationManager``). Answers once the driver ended, or
  after 2 s (202, the migration's view); the outcome, ``running`` then
  ``moved``, ``not_moved`` or ``failed: <reason>``, is the view's ``source_step``
  (``GET /v3/{project_id}/os-async-migration/{volume_id}``,
  ``resources.py``). Asked again while ``running`` or after ``moved``, it
  changes nothing.

Cinder's own views stay as Cinder defines them: a migration's lock and steps are
read from the extension's resource (``GET /v3/{project_id}/os-async-migration``
for every migration in flight, ``.../os-async-migration/{volume_id}`` for one:
``resources.py``), so that a scheduler of many migrations counts them by pool,
whoever started them.

Each transition is one compare-and-swap (``conditional_update``): an invalid
one changes nothing and answers 400/409 with the reason. While a volume is
``migrating_attachable`` Cinder's own extend is refused (the LUN is still
being copied), and a detach puts the volume back to ``available`` (Cinder
does not while ``migration_status`` is set). Cinder's own unmanage first
marks the volume (``UNMANAGED_KEY``), so that an audit never takes the LUN it
leaves behind for a leftover (``resources.made_here``).
"""

from __future__ import annotations

from typing import Any

import webob
from cinder import exception, objects
from cinder.api import extensions
from cinder.api.openstack import wsgi
from cinder.db import api as db
from cinder.objects import fields
from cinder.policies import manageable_volumes
from cinder.volume import volume_utils
from oslo_log import log as logging

from include.cinder_plugin.common import (
    ADMIN_KEYS,
    DEADLINE_KEY,
    DEST_KEY,
    LOCKED,
    NOT_MIGRATING,
    OWNER_KEY,
    SOURCE_KEY,
    STEP_KEYS,
    Controller,
    action_args,
    backend_service,
    check_dest,
    check_holder,
    deadline_of,
    dest_pool,
    kept_deadline,
    migration_view,
    owner_of,
    refusal,
    volume_or_404,
    volume_type_or_400,
)
from include.cinder_plugin.host_copy import HostCopyController, copy_target, drop_host_copy, finish_host_copy
from include.cinder_plugin.names import (
    ALIAS,
    BACKENDS_RESOURCE,
    ERROR_KEY,
    MIGRATING_ATTACHABLE,
    PROGRESS_KEY,
    RESOURCE,
    SOURCE_STEP_KEY,
    TARGET_STEP_KEY,
    UNMANAGED_KEY,
    SourceStep,
    TargetStep,
)
from include.cinder_plugin.resources import BackendsController, MigrationsController
from include.cinder_plugin.takeover import STEP_WAIT_S, TakeoverController, abandon_takeover, finish_takeover

LOG = logging.getLogger(__name__)


def _text(args: dict[str, Any], key: str, what: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise webob.exc.HTTPBadRequest(explanation=f"'{key}' must {what}")
    return value.strip()


def _host(args: dict[str, Any]) -> str:
    host = args.get("host")
    if not isinstance(host, str) or "@" not in host or "#" not in host:
        raise webob.exc.HTTPBadRequest(explanation="'host' must be a pool like host@backend#pool")
    return host


class AsyncMigrationController(Controller):
    # ---- helpers -------------------------------------------------------------------

    @staticmethod
    def _held_by(volume: Any, host: str, owner: str) -> bool:
        """The volume is locked (``starting``) for ``host`` by ``owner``."""
        meta = volume.admin_metadata or {}
        return (
            volume.migration_status in ("starting", MIGRATING_ATTACHABLE)
            and meta.get(OWNER_KEY) == owner
            and meta.get(DEST_KEY) == host
        )

    @staticmethod
    def _lock_answer(volume: Any) -> Any:
        volume.refresh()
        meta = volume.admin_metadata or {}
        lock = {
            "source_host": meta.get(SOURCE_KEY),
            "host": meta.get(DEST_KEY),
            "owner": meta.get(OWNER_KEY),
            "deadline": kept_deadline(meta),
            "migration_status": volume.migration_status,
        }
        return webob.Response(status_int=202, json_body={"async_migration": lock})

    @staticmethod
    def _release(context: Any, volume: Any) -> None:
        for key in ADMIN_KEYS:
            db.volume_admin_metadata_delete(context.elevated(), volume.id, key)
        try:  # the copy's progress ends with the migration
            db.volume_metadata_delete(context, volume.id, PROGRESS_KEY)
        except exception.VolumeMetadataNotFound:
            pass

    # ---- actions -----------------------------------------------------------------
    @wsgi.action("os-async_migration_begin")
    def _begin(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "begin")
        host, owner, deadline = _host(args), owner_of(args), deadline_of(args)
        if owner and self._held_by(volume, host, owner):  # the lock, and its deadline, as the first begin set them
            LOG.info("async migration of volume %s to %s: begin again by %s, already locked", id, host, owner)
            return self._lock_answer(volume)
        backend_service(context, host)
        settled = volume.migration_status in NOT_MIGRATING  # else "already migrating" below says it better
        if settled and volume_utils.extract_host(volume.host, "pool") and volume.host == host:
            raise webob.exc.HTTPBadRequest(explanation=f"volume {id} is already on {host}")
        reasons = []
        if volume.status != "available":
            reasons.append(f"status is {volume.status}, not available")
        if volume.migration_status not in NOT_MIGRATING:
            reasons.append(f"it is already migrating (migration_status {volume.migration_status})")
        if volume.group_id or volume.consistencygroup_id:
            reasons.append("it is part of a group")
        if objects.SnapshotList.get_all_for_volume(context, volume.id):
            reasons.append("it has snapshots")
        if reasons:
            raise webob.exc.HTTPBadRequest(explanation=f"volume {id} cannot be migrated: {'; '.join(reasons)}")
        expected = {
            "status": "available",
            "migration_status": NOT_MIGRATING,
            "consistencygroup_id": (None, ""),
            "group_id": (None, ""),
            "replication_status": (None, fields.ReplicationStatus.DISABLED, fields.ReplicationStatus.NOT_CAPABLE),
        }
        updates = {**LOCKED, "previous_status": "available"}
        lock = {DEST_KEY: host, SOURCE_KEY: volume.host, **({OWNER_KEY: owner} if owner else {}),
                **({DEADLINE_KEY: str(deadline)} if deadline else {})}  # fmt: skip
        # the state and the lock's keys in one transaction: a cinder-api killed between two commits left a volume
        # "starting" with no lock, which no owner could take back or fail (the fault matrix, trial 64)
        admin = context.elevated()
        with db.main_context_manager.writer.using(admin):
            if not db.conditional_update(admin, volume.model, updates, {**expected, "id": volume.id},
                                         [~db.volume_has_snapshots_filter()]):  # fmt: skip
                raise webob.exc.HTTPConflict(explanation=refusal(volume, "starting"))
            for stale in STEP_KEYS:  # what the steps of an earlier migration recorded no longer applies
                db.volume_admin_metadata_delete(admin, volume.id, stale)
            db.volume_admin_metadata_update(admin, volume.id, lock, False)
        for stale in (ERROR_KEY, PROGRESS_KEY):  # an earlier migration's reason or progress no longer applies
            if stale in (volume.metadata or {}):
                db.volume_metadata_delete(context, volume.id, stale)
        LOG.info("async migration of volume %s to %s begins", volume.id, host)
        return self._lock_answer(volume)

    def _arrival(self, context: Any, volume: Any, host: str, args: dict[str, Any], status: str) -> dict[str, Any]:
        """The updates that put a locked volume on ``host`` (its service and zone) with ``migration_status``."""
        check_dest(volume, host)
        return self._on_host(context, host, args, status)

    def _on_host(self, context: Any, host: str, args: dict[str, Any], status: str) -> dict[str, Any]:
        """The updates that put a volume on ``host`` (its service and zone), ``available``, with ``status``."""
        service = backend_service(context, host)
        updates = {
            "host": host,
            "cluster_name": service.cluster_name,
            "service_uuid": service.uuid,
            "availability_zone": service.availability_zone,
            "migration_status": status,
            "status": "available",
        }
        if args.get("provider_location") is not None:
            updates["provider_location"] = str(args["provider_location"])
        return updates

    @wsgi.action("os-async_migration_attachable")
    def _attachable(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "attachable")
        host = _host(args)
        updates = self._arrival(context, volume, host, args, MIGRATING_ATTACHABLE)
        if not volume.conditional_update(updates, LOCKED):
            raise webob.exc.HTTPConflict(explanation=refusal(volume, MIGRATING_ATTACHABLE))
        LOG.info("volume %s is served by %s and attachable while its data is copied", volume.id, host)
        return webob.Response(status_int=202)

    @wsgi.action("os-async_migration_finish")
    def _finish(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "finish")
        if volume.migration_status == LOCKED["migration_status"] and copy_target(context, volume) is not None:
            if args.get("host") is not None:
                check_dest(volume, _host(args))
            dest = volume.admin_metadata.get(DEST_KEY)
            finish_host_copy(self.rpc, context, volume)  # Cinder's completion: swapped, the source deleted
            self._release(context, volume)
            LOG.info("async migration of volume %s finished on %s by a host copy", volume.id, dest)
            return webob.Response(status_int=202)
        if volume.migration_status == MIGRATING_ATTACHABLE:
            updates: dict[str, Any] = {"migration_status": "success"}
            if args.get("host") is not None and _host(args) != volume.host:
                raise webob.exc.HTTPBadRequest(explanation=f"volume {id} is on {volume.host}, not {args['host']}")
            expected: dict[str, Any] = {"migration_status": MIGRATING_ATTACHABLE}
        else:  # a driver that moved it synchronously (step 1, or step 2 answering moved) ends here from starting
            meta = volume.admin_metadata or {}
            if meta.get(SOURCE_STEP_KEY) != SourceStep.MOVED and meta.get(TARGET_STEP_KEY) != TargetStep.MOVED:
                raise webob.exc.HTTPConflict(
                    explanation=f"volume {id}: no driver moved it and no host copy completed; the source is kept "
                    f"(migration_status {volume.migration_status})"
                )
            updates = self._arrival(context, volume, _host(args), args, "success")
            expected = LOCKED
        if args.get("volume_type_id") is not None:
            updates["volume_type_id"] = volume_type_or_400(context, args["volume_type_id"]).id
        finish_takeover(self.rpc, context, volume)  # a takeover: complete on the target, its source deleted
        if not volume.conditional_update(updates, expected):
            raise webob.exc.HTTPConflict(explanation=refusal(volume, "success"))
        self._release(context, volume)
        LOG.info("async migration of volume %s finished on %s", volume.id, volume.host)
        return webob.Response(status_int=202)

    @wsgi.action("os-async_migration_fail")
    def _fail(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "fail")
        reason = _text(args, "reason", "say what went wrong")
        check_holder(volume, args)
        updates = {"migration_status": "error", "status": "available"}
        if not volume.conditional_update(updates, LOCKED):
            raise webob.exc.HTTPConflict(
                explanation=refusal(volume, "error")
                + " (only a migration that is not attachable yet can fail; an attachable one is retried)"
            )
        db.volume_metadata_update(context, volume.id, {ERROR_KEY: reason[:255]}, False)
        drop_host_copy(self.rpc, context, volume)  # a host copy's destination volume goes; the source is intact
        self._release(context, volume)
        LOG.warning("async migration of volume %s failed: %s", volume.id, reason)
        return webob.Response(status_int=202)

    @wsgi.action("os-async_migration_abandon")
    def _abandon(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "abandon")
        reason = _text(args, "reason", "say why the migration is given up")
        check_holder(volume, args)
        source = (volume.admin_metadata or {}).get(SOURCE_KEY)
        if volume.migration_status != MIGRATING_ATTACHABLE or not source:
            raise webob.exc.HTTPConflict(explanation=refusal(volume, "error") + " (only an attachable one)")
        expected = {"migration_status": MIGRATING_ATTACHABLE, "status": "available", "attach_status": "detached"}
        if (volume.status, volume.attach_status) != (expected["status"], expected["attach_status"]):
            raise webob.exc.HTTPConflict(explanation=f"volume {id} is {volume.status} ({volume.attach_status}): "
                                         "detach it first (its clients use the target's export)")  # fmt: skip
        location = abandon_takeover(self.rpc, context, volume)  # a takeover: the target gives its copy up
        back = {**args, "provider_location": location or args.get("provider_location")}
        updates = self._on_host(context, source, back, "error")
        if not volume.conditional_update(updates, expected):
            raise webob.exc.HTTPConflict(
                explanation=f"volume {id} is {volume.status} ({volume.attach_status}), migration_status "
                f"{volume.migration_status}: detach it first (its clients use the target's export)"
            )
        db.volume_metadata_update(context, volume.id, {ERROR_KEY: reason[:255]}, False)
        self._release(context, volume)
        LOG.warning("async migration of volume %s abandoned, back on %s: %s", volume.id, source, reason)
        return webob.Response(status_int=202)

    @wsgi.action("os-async_migration_progress")
    def _progress(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "progress")
        text = _text(args, "progress", "be a line of text")
        if volume.migration_status not in (LOCKED["migration_status"], MIGRATING_ATTACHABLE):
            raise webob.exc.HTTPConflict(
                explanation=f"volume {id} is not migrating (migration_status {volume.migration_status})"
            )
        check_holder(volume, args)
        db.volume_metadata_update(context, volume.id, {PROGRESS_KEY: text[:255]}, False)
        return webob.Response(status_int=202)

    @wsgi.action("os-async_migration_source_migrate")
    def _source_migrate(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "source_migrate")
        check_holder(volume, args)
        meta = volume.admin_metadata or {}
        dest = meta.get(DEST_KEY)
        if (volume.migration_status, volume.status) != (LOCKED["migration_status"], LOCKED["status"]) or not dest:
            raise webob.exc.HTTPConflict(explanation=refusal(volume, "source_migrate") + " (lock it first)")
        if meta.get(SOURCE_STEP_KEY) in (SourceStep.RUNNING, SourceStep.MOVED):  # a retry: it runs, or it ran
            return webob.Response(status_int=202, json_body=migration_view(volume))
        host = dest_pool(context, dest)
        db.volume_admin_metadata_update(context.elevated(), volume.id, {SOURCE_STEP_KEY: SourceStep.RUNNING}, False)
        try:
            self.rpc.source_migrate(context, volume, host, STEP_WAIT_S)
        except Exception:  # not sent: nothing runs, so nothing may say it does
            db.volume_admin_metadata_delete(context.elevated(), volume.id, SOURCE_STEP_KEY)
            raise
        LOG.info("async migration of volume %s to %s: migrate_volume asked of %s", volume.id, dest, volume.host)
        volume.refresh()
        return webob.Response(status_int=202, json_body=migration_view(volume))

    # ---- Cinder's own actions during a migration -------------------------------------
    @wsgi.extends(action="os-extend")
    def _extend(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        volume = volume_or_404(req.environ["cinder.context"], id)
        if volume.migration_status == MIGRATING_ATTACHABLE:
            raise webob.exc.HTTPConflict(
                explanation=f"volume {id} is still being copied to {volume.host}; extend it after the migration"
            )
        yield

    @wsgi.extends(action="os-unmanage")
    def _unmanage(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        """Marks the volume (``UNMANAGED_KEY``) before Cinder forgets it: its LUN stays on the backend by design, and
        the mark keeps an audit from taking it for a leftover of this Cinder's (``resources.made_here``). A refused
        unmanage leaves the mark on a volume that stays: its LUN would only ever be left alone."""
        context = req.environ["cinder.context"]
        volume = volume_or_404(context, id)
        context.authorize(manageable_volumes.UNMANAGE_POLICY, target_obj=volume)  # Cinder's own check, first
        db.volume_admin_metadata_update(context.elevated(), volume.id, {UNMANAGED_KEY: "true"}, False)
        yield


class AttachmentsDuringMigrationController(wsgi.Controller):
    """Put a volume back to ``available`` when its last attachment goes during ``migrating_attachable``."""

    @wsgi.extends
    def delete(self, req: Any, id: str) -> Any:
        context = req.environ["cinder.context"]
        try:
            volume_id = objects.VolumeAttachment.get_by_id(context, id).volume_id
        except exception.VolumeAttachmentNotFound:
            volume_id = None
        yield
        if volume_id is None:
            return
        volume = objects.Volume.get_by_id(context.elevated(), volume_id)
        if volume.migration_status != MIGRATING_ATTACHABLE:
            return
        fixed = volume.conditional_update(
            {"status": "available", "attach_status": fields.VolumeAttachStatus.DETACHED},
            {"migration_status": MIGRATING_ATTACHABLE, "status": ("in-use", "detaching", "attaching", "reserved")},
            [~db.volume_has_attachments_filter()],
        )
        if fixed:
            LOG.info("volume %s detached during its migration: back to available", volume_id)


class Async_migration(extensions.ExtensionDescriptor):
    """Async volume migration between backends: begin, attachable, finish and fail transitions."""

    name = "AsyncMigration"
    alias = ALIAS
    updated = "2026-11-27T00:00:00+00:00"

    def get_resources(self) -> list[Any]:
        return [
            extensions.ResourceExtension(RESOURCE, MigrationsController()),
            extensions.ResourceExtension(
                BACKENDS_RESOURCE, BackendsController(), member_actions={"inventory": "GET", "action": "POST"}
            ),  # fmt: skip
        ]

    def get_controller_extensions(self) -> list[Any]:
        return [
            extensions.ControllerExtension(self, "volumes", AsyncMigrationController()),
            extensions.ControllerExtension(self, "volumes", TakeoverController()),
            extensions.ControllerExtension(self, "volumes", HostCopyController()),
            extensions.ControllerExtension(self, "attachments", AttachmentsDuringMigrationController()),
        ]
