"""The extension's own resources (read-only): a migration's state, and what a backend's driver offers.

* ``GET /v3/{project_id}/os-async-migration/{volume_id}``: ``{"async_migration": {volume_id, status,
  migration_status, host, source_host, dest_host, owner, source_step, target_step}}`` (``common.migration_view``), and
  for a takeover attachable on its destination ``copy``: the copy's progress (``MigrationProgress``), asked of the
  destination's cinder-volume (``copy`` null and ``copy_error`` when it could not say within 10 s);
* ``GET /v3/{project_id}/os-async-migration-backends/{host@backend}``: ``{"features": Features}``, asked of
  that backend's cinder-volume (400 when its service is not enabled and up).

Admin-only by default (policy rules ``volume_extension:async_migration:show`` and ``...:features``).
"""

from __future__ import annotations

from typing import Any

from cinder.volume import volume_utils

from include.cinder_plugin.common import (
    Controller,
    backend_service,
    migration_view,
    policy_name,
    volume_or_404,
)
from include.cinder_plugin.takeover import copy_view


class MigrationsController(Controller):
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
