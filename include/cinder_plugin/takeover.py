"""The extension's actions for blueprint step 2 and the background copy, each run by the target's cinder-volume.

Volume actions (``POST /v3/{project_id}/volumes/{id}/action``), admin-only by
default (policy rules ``volume_extension:async_migration:<action>``):

* ``os-async_migration_target_migrate`` ``{"owner"?, "speed_mib"?, "mode"?, "again"?}``:
  blueprint step 2 for a volume locked (``starting``) on its source: the
  destination backend's cinder-volume has the source's cinder-volume open a
  connection for it and runs its driver's ``migrate_volume_target``
  (``manager.AsyncMigrationManager``). Answers once it ended, or after 2 s
  (202, the migration's view); the outcome is the view's ``target_step``: ``running``, then
  ``attachable`` (the volume is ``migrating_attachable`` on its destination),
  ``moved``, ``not_moved`` or ``failed: <reason>``. Asked again while
  ``running`` or after it took the volume over, it changes nothing; with
  ``"again": true`` while ``running``, the same request (its token) is sent
  once more, for a caller that waited too long (a request lost with its
  message, say): cinder-volume runs a request only while it is the one
  recorded and ``running``, one at a time, so a duplicate does nothing. A
  destination whose driver takes nothing over answers ``not_moved``.
* ``os-async_migration_copy`` ``{"control", "speed_mib"?}``: ``pause``,
  ``resume`` or ``speed`` (``speed_mib``, 0: unlimited) the background copy of
  an attachable migration, where the destination's driver offers it (else
  400 naming what it lacks); answers the copy's progress
  (``{"copy": MigrationProgress}``).

The finish and abandon actions (``extension.py``) ask the destination's
cinder-volume to end a takeover through ``finish_takeover`` and
``abandon_takeover`` here; the migration's view shows the copy's progress
(``copy_view``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import webob
from cinder import exception
from cinder.api.openstack import wsgi
from cinder.db import api as db
from oslo_log import log as logging

from include.backends.base import MiB
from include.cinder_plugin.common import (
    LOCKED,
    Controller,
    action_args,
    check_holder,
    dest_pool,
    migration_view,
    refusal,
)
from include.cinder_plugin.names import (
    COPY_CONTROLS,
    DEST_KEY,
    MIGRATING_ATTACHABLE,
    TARGET_ARGS_KEY,
    TARGET_STEP_KEY,
    TargetStep,
)
from include.cinder_plugin.rpcapi import AsyncMigrationAPI

LOG = logging.getLogger(__name__)

COPY_LOOK_TIMEOUT_S = 10.0
# a step's action waits this long for the step to end (most do within a second), then answers "running"
STEP_WAIT_S = 2.0  # a migration's view waits this long for the copy's progress, then says it has none


def _speed_mib(args: dict[str, Any], *, required: bool = False) -> int | None:
    value = args.get("speed_mib")
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise webob.exc.HTTPBadRequest(explanation="'speed_mib' must be a whole number of MiB/s, 0 for unlimited")
    return value


def taken_over(volume: Any) -> str | None:
    """The target step of a volume its destination took over (``attachable`` or ``moved``), else None."""
    step = (volume.admin_metadata or {}).get(TARGET_STEP_KEY)
    return step if step in (TargetStep.ATTACHABLE, TargetStep.MOVED) else None


def copy_view(rpc: AsyncMigrationAPI, context: Any, volume: Any) -> dict[str, Any]:
    """What the migration's view adds for an attachable takeover: ``copy`` (its progress) or ``copy_error``."""
    if volume.migration_status != MIGRATING_ATTACHABLE or taken_over(volume) != TargetStep.ATTACHABLE:
        return {}
    try:
        return {"copy": rpc.copy(context, volume, timeout=COPY_LOOK_TIMEOUT_S)}
    except Exception as exc:  # a restarting cinder-volume, a driver that cannot look now: said, not a 500
        return {"copy": None, "copy_error": f"{type(exc).__name__}: {exc}"}


def finish_takeover(rpc: AsyncMigrationAPI, context: Any, volume: Any) -> None:
    """Before a taken-over volume is marked ``success``: the destination checks its copy is complete, then the
    source volume is deleted by its own driver. 409 (nothing changed) while the copy is not complete."""
    step = taken_over(volume)
    if step is None:
        return
    try:
        rpc.target_finish(context, volume, copied=step == TargetStep.ATTACHABLE)
    except exception.InvalidVolume as exc:
        raise webob.exc.HTTPConflict(explanation=f"not finished: {exc.msg}") from None


def abandon_takeover(rpc: AsyncMigrationAPI, context: Any, volume: Any) -> str | None:
    """The destination gives an attachable takeover up; returns the source's provider_location. 409 when the
    copy does not qualify (the source lacks writes made since), nothing changed."""
    if taken_over(volume) != TargetStep.ATTACHABLE:
        return None
    try:
        return rpc.target_abandon(context, volume).get("provider_location")
    except (exception.InvalidVolume, exception.InvalidInput) as exc:
        raise webob.exc.HTTPConflict(explanation=f"not abandoned, nothing changed: {exc.msg}") from None


class TakeoverController(Controller):
    @wsgi.action("os-async_migration_target_migrate")
    def _target_migrate(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "target_migrate")
        check_holder(volume, args)
        speed_mib, mode = _speed_mib(args), args.get("mode")
        if mode is not None and not isinstance(mode, str):
            raise webob.exc.HTTPBadRequest(explanation="'mode' must be a copy mode's name")
        meta = volume.admin_metadata or {}
        step = meta.get(TARGET_STEP_KEY)
        if step in (TargetStep.ATTACHABLE, TargetStep.MOVED) or (step == TargetStep.RUNNING and not args.get("again")):
            return webob.Response(status_int=202, json_body=migration_view(volume))  # a retry: it runs, or it ran
        dest = meta.get(DEST_KEY)
        if (volume.migration_status, volume.status) != (LOCKED["migration_status"], LOCKED["status"]) or not dest:
            raise webob.exc.HTTPConflict(explanation=refusal(volume, "target_migrate") + " (lock it first)")
        host = dest_pool(context, dest)
        if step == TargetStep.RUNNING:  # asked again: the same request (its token) once more, for a lost one
            request = json.loads(meta.get(TARGET_ARGS_KEY) or "{}")
        else:
            speed_bps = None if speed_mib is None else speed_mib * MiB
            request = {"speed_bps": speed_bps, "mode": mode, "token": uuid.uuid4().hex}
            started = {TARGET_STEP_KEY: TargetStep.RUNNING, TARGET_ARGS_KEY: json.dumps(request)}
            db.volume_admin_metadata_update(context.elevated(), volume.id, started, False)
        try:
            self.rpc.target_migrate(context, volume, host, request, STEP_WAIT_S)
        except Exception:
            if step != TargetStep.RUNNING:  # not sent: nothing runs, so nothing may say it does
                db.volume_admin_metadata_delete(context.elevated(), volume.id, TARGET_STEP_KEY)
            raise
        LOG.info("async migration of volume %s: migrate_volume_target asked of %s%s", volume.id, dest,
                 " again" if step == TargetStep.RUNNING else "")  # fmt: skip
        volume.refresh()
        return webob.Response(status_int=202, json_body=migration_view(volume))

    @wsgi.action("os-async_migration_copy")
    def _copy(self, req: Any, id: str, body: dict[str, Any]) -> Any:
        context, args, volume = action_args(req, id, body, "copy")
        control = args.get("control")
        if control not in COPY_CONTROLS:
            raise webob.exc.HTTPBadRequest(explanation=f"'control' must be one of {', '.join(COPY_CONTROLS)}")
        speed_mib = _speed_mib(args, required=control == "speed")
        if volume.migration_status != MIGRATING_ATTACHABLE or taken_over(volume) != TargetStep.ATTACHABLE:
            raise webob.exc.HTTPConflict(explanation=refusal(volume, control) + " (no copy of a takeover runs)")
        try:
            progress = self.rpc.copy(context, volume, control, None if speed_mib is None else speed_mib * MiB)
        except exception.InvalidInput as exc:
            raise webob.exc.HTTPBadRequest(explanation=exc.msg) from None
        except exception.InvalidVolume as exc:
            raise webob.exc.HTTPConflict(explanation=exc.msg) from None
        LOG.info("async migration of volume %s: copy %s%s by %s", volume.id, control,
                 f" {speed_mib} MiB/s" if control == "speed" else "", context.user_id)  # fmt: skip
        return webob.Response(status_int=200, json_body={"copy": progress})
