"""The extension's own resources (read-only): a migration's state, and what a backend's driver offers.

* ``GET /v3/{project_id}/os-async-migration``: ``{"async_migrations": [...]}``, the view of every volume of every
  project that a migration of this extension holds (its lock: ``dest_host`` set, ``migration_status`` one of
  ``LOCK_HELD``), without ``copy``; what a scheduler of many migrations counts by pool, whoever started them
  (Cinder's own volume views carry nothing of the extension's);
* ``GET /v3/{project_id}/os-async-migration/{volume_id}``: ``{"async_migration": {volume_id, status,
  migration_status, host, source_host, dest_host, owner, source_step, target_step}}`` (``common.migration_view``), and
  for a takeover attachable on its destination ``copy``: the copy's progress (``MigrationProgress``), asked of the
  destination's cinder-volume (``copy`` null and ``copy_error`` when it could not say within 10 s);
* ``GET /v3/{project_id}/os-async-migration-backends/{host@backend}``: ``{"features": Features}``, asked of
  that backend's cinder-volume (400 when its service is not enabled and up);
* ``GET /v3/{project_id}/os-async-migration-backends/{host@backend}/inventory``: ``{"volumes": [HeldVolume],
  "repairable", "made_here"}``, what the backend holds as its driver lists it (``include/backends/inventory.py``),
  for an audit, and which of those this Cinder made (``made_here``); 400 when the driver cannot list (nor has a
  manageable-volumes listing);
* ``POST /v3/{project_id}/os-async-migration-backends/{host@backend}/action``
  ``{"os-async_migration_release": {"name", "cleanup"}}``: an audit's repair of a leftover no volume accounts
  for (``Cleanup``: ``abort_takeover``, ``release_export``, ``delete``), done by the backend's driver; 409 when
  a Cinder volume on that backend names it (for ``release_export``: one that migrates) or when this Cinder did
  not make it (``made_here``), 400 when the driver cleans nothing up. Answers ``{"done": "..."}``.

Admin-only by default (policy rules ``volume_extension:async_migration:show``, ``...:index``, ``...:features``,
``...:inventory``, ``...:release``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
import webob
from cinder import exception, objects
from cinder.api.openstack import wsgi
from cinder.db import api as db_api
from cinder.db import models as db_models
from cinder.volume import volume_utils

from include.backends.inventory import Cleanup
from include.cinder_plugin.common import (
    DEST_KEY,
    NOT_MIGRATING,
    Controller,
    backend_service,
    migration_view,
    policy_name,
    volume_or_404,
)
from include.cinder_plugin.names import IN_FLIGHT, UNMANAGED_KEY, VOLUME_LUN
from include.cinder_plugin.takeover import copy_view

# the migration_status of a volume that a lock of this extension may hold: the blueprint's steps', and Cinder's own
# while a host copy's completion runs
LOCK_HELD = (*IN_FLIGHT, "migrating", "completing")


def made_here(context: Any, names: list[str]) -> set[str]:
    """The names among ``names`` of LUNs this Cinder made: ``volume-<uuid>`` where ``<uuid>`` is the id of a
    volume this Cinder has or had (it keeps a deleted volume's row until ``cinder-manage db purge``; a volume that
    Cinder moved keeps its LUN's name in ``_name_id``, itself the id of the volume made for the move), and that
    was not unmanaged (``UNMANAGED_KEY``: marked just before). Any other name, a LUN made by hand or by another
    deployment on shared storage, is not: an audit leaves it alone.

    Cinder's soft-deleted rows are read with its own DB layer (``model_query`` with ``read_deleted="yes"``): the
    objects' loaders hide them and the deleted volumes' admin metadata."""
    ids = {found.group(1): name for name in names if (found := VOLUME_LUN.fullmatch(name))}
    if not ids:
        return set()
    volume, meta = db_models.Volume, db_models.VolumeAdminMetadata
    ctx = context.elevated(read_deleted="yes")
    with db_api.main_context_manager.reader.using(ctx):
        rows = db_api.model_query(ctx, volume.id, volume._name_id.label("name_id"), read_deleted="yes").filter(
            sqlalchemy.or_(volume.id.in_(ids), volume._name_id.in_(ids))).all()  # fmt: skip
        unmanaged = {row.volume_id for row in db_api.model_query(ctx, meta.volume_id, read_deleted="yes")
                     .filter(meta.volume_id.in_([row.id for row in rows]), meta.key == UNMANAGED_KEY)}  # fmt: skip
    # a LUN is named after its volume's _name_id when it has one (a moved volume), else after its id; a LUN that
    # any of its volumes was unmanaged with is not this Cinder's to clean up any more
    named = {row.id: row.name_id or row.id for row in rows}
    return {ids[lun] for lun in set(named.values()) - {named[vid] for vid in unmanaged} if lun in ids}


class MigrationsController(Controller):
    def index(self, req: Any) -> dict[str, Any]:
        context = req.environ["cinder.context"]
        context.authorize(policy_name("index"))
        held = objects.VolumeList.get_all(context.elevated(), None, None, filters={"migration_status": LOCK_HELD})
        views = [migration_view(v)["async_migration"] for v in held if (v.admin_metadata or {}).get(DEST_KEY)]
        return {"async_migrations": sorted(views, key=lambda view: view["volume_id"])}

    def show(self, req: Any, id: str) -> dict[str, Any]:
        context = req.environ["cinder.context"]
        context.authorize(policy_name("show"))
        volume = volume_or_404(context, id)
        view = migration_view(volume)
        view["async_migration"].update(copy_view(self.rpc, context, volume))
        return view


class BackendsController(Controller):
    def show(self, req: Any, id: str) -> dict[str, Any]:
        context = req.environ["cinder.context"]
        context.authorize(policy_name("features"))
        backend_service(context, id)
        return {"features": self.rpc.features(context, volume_utils.extract_host(id, "backend"))}

    def inventory(self, req: Any, id: str) -> dict[str, Any]:
        context = req.environ["cinder.context"]
        context.authorize(policy_name("inventory"))
        backend_service(context, id)
        try:
            inventory = self.rpc.inventory(context, volume_utils.extract_host(id, "backend"))
        except NotImplementedError as exc:  # a driver with no listing at all
            raise webob.exc.HTTPBadRequest(explanation=f"the driver of {id} lists nothing: {exc}") from None
        names = [held["name"] for held in inventory.get("volumes") or []]
        return {**inventory, "made_here": sorted(made_here(context, names))}

    @wsgi.action("os-async_migration_release")
    def _release(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context = req.environ["cinder.context"]
        context.authorize(policy_name("release"))
        args = body.get("os-async_migration_release") or {}
        name, cleanup = args.get("name"), args.get("cleanup")
        if not isinstance(name, str) or not name or cleanup not in tuple(Cleanup):
            raise webob.exc.HTTPBadRequest(
                explanation=f"'name' must name a volume on the backend and 'cleanup' be one of {', '.join(Cleanup)}"
            )
        backend = volume_utils.extract_host(backend_service(context, id).host, "backend")
        named = [v for v in objects.VolumeList.get_all_by_host(context.elevated(), backend) if v.name == name]
        # never behind a volume's back: a volume's own LUN is never deleted here, and its takeover export is
        # released only while it does not migrate
        busy = [v for v in named if cleanup != Cleanup.RELEASE_EXPORT or v.migration_status not in NOT_MIGRATING]
        if busy:
            raise webob.exc.HTTPConflict(explanation=f"{name} on {backend} is volume {busy[0].id}'s "
                                         f"(migration_status {busy[0].migration_status}): not released")  # fmt: skip
        if not made_here(context, [name]):  # never somebody else's: only what this Cinder made is cleaned up
            raise webob.exc.HTTPConflict(explanation=f"{name} on {backend} was not made by this Cinder (no volume of "
                                         "its has or had that id, or it was unmanaged): left alone")  # fmt: skip
        try:
            done = self.rpc.release_held(context, backend, name, cleanup)
        except exception.InvalidInput as exc:
            raise webob.exc.HTTPBadRequest(explanation=exc.msg) from None
        return webob.Response(status_int=200, json_body={"done": done})
