"""What the extension's actions and resources share: the lock's keys and states, the policy rules, lookups.

The lock of a migration is kept in the volume's admin metadata (``DEST_KEY``,
``SOURCE_KEY``, ``OWNER_KEY``) while ``migration_status`` is ``starting`` or
``migrating_attachable``. Every route is admin-only by default (policy rules
``volume_extension:async_migration:<name>``, which an operator's policy file
may override).
"""

from __future__ import annotations

import functools
from typing import Any

import webob
from cinder import exception, objects
from cinder import policy as cinder_policy
from cinder.api.openstack import wsgi
from cinder.common import constants
from cinder.policies import base as policy_base
from cinder.scheduler import rpcapi as scheduler_rpcapi
from cinder.volume import volume_utils
from oslo_policy import policy as oslo_policy

from include.cinder_plugin.names import (
    BACKENDS_RESOURCE,
    COPIED_KEY,
    COPY_CONNECTOR_KEY,
    COPY_TARGET_KEY,
    DEADLINE_KEY,
    DEST_KEY,
    OWNER_KEY,
    RESOURCE,
    SETTLED_MIGRATION_STATUSES,
    SOURCE_KEY,
    SOURCE_LOCATION_KEY,
    SOURCE_STEP_KEY,
    TARGET_ARGS_KEY,
    TARGET_STEP_KEY,
)
from include.cinder_plugin.rpcapi import AsyncMigrationAPI

NOT_MIGRATING = SETTLED_MIGRATION_STATUSES
# admin metadata the blueprint's steps and a host copy record during one migration (cleared at begin and release)
STEP_KEYS = (SOURCE_STEP_KEY, TARGET_STEP_KEY, TARGET_ARGS_KEY, SOURCE_LOCATION_KEY, COPY_TARGET_KEY,
             COPY_CONNECTOR_KEY, COPIED_KEY)  # fmt: skip
ADMIN_KEYS = (DEST_KEY, OWNER_KEY, SOURCE_KEY, DEADLINE_KEY, *STEP_KEYS)  # every admin metadata key of ours
LOCKED = {"migration_status": "starting", "status": "maintenance"}  # what begin left: the state later steps expect
ACTIONS = (
    "begin",
    "attachable",
    "finish",
    "fail",
    "abandon",
    "progress",
    "source_migrate",
    "target_migrate",
    "copy",
    "copy_target",
    "copy_connect",
    "copy_disconnect",
)
# resource -> (policy rule, route)
READS = {"index": f"/{RESOURCE}", "show": f"/{RESOURCE}/{{volume_id}}",
         "features": f"/{BACKENDS_RESOURCE}/{{host@backend}}",
         "inventory": f"/{BACKENDS_RESOURCE}/{{host@backend}}/inventory"}  # fmt: skip
# the backends resource's own action (an audit's repair) -> its route
BACKEND_ACTIONS = {"release": f"/{BACKENDS_RESOURCE}/{{host@backend}}/action (os-async_migration_release)"}


def policy_name(action: str) -> str:
    return f"volume_extension:async_migration:{action}"


def _rule(name: str, method: str, path: str) -> oslo_policy.DocumentedRuleDefault:
    return oslo_policy.DocumentedRuleDefault(
        name=policy_name(name),
        check_str=policy_base.RULE_ADMIN_API,
        description=f"Async volume migration: {name}.",
        operations=[{"method": method, "path": path}],
    )


RULES = [
    *(_rule(action, "POST", f"/volumes/{{volume_id}}/action (os-async_migration_{action})") for action in ACTIONS),
    *(_rule(read, "GET", path) for read, path in READS.items()),
    *(_rule(action, "POST", path) for action, path in BACKEND_ACTIONS.items()),
]


def register_policies() -> None:
    """Add our rules to Cinder's enforcer (Cinder has no hook for out-of-tree defaults)."""
    cinder_policy.init()
    enforcer = cinder_policy.get_enforcer()
    missing = [rule for rule in RULES if rule.name not in enforcer.registered_rules]
    if missing:
        enforcer.register_defaults(missing)
        enforcer.load_rules(force_reload=True)


class Controller(wsgi.Controller):
    """A controller of the extension: our policy rules are in Cinder's enforcer once one exists."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        register_policies()

    @functools.cached_property
    def rpc(self) -> AsyncMigrationAPI:
        """The RPC client of the steps in cinder-volume, made at first use and kept (its version cap is read from
        the database once, as Cinder's own API does with its VolumeAPI)."""
        return AsyncMigrationAPI()


def action_body(body: dict[str, Any], action: str) -> dict[str, Any]:
    """The arguments of action ``os-async_migration_<action>`` (an object; absent: none)."""
    value = body.get(f"os-async_migration_{action}")
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise webob.exc.HTTPBadRequest(explanation=f"os-async_migration_{action} takes an object")
    return value


def action_args(req: Any, id: str, body: dict[str, Any], action: str) -> tuple[Any, dict[str, Any], Any]:
    """What every action starts with: its policy checked, its arguments, the volume: (context, args, volume)."""
    context = req.environ["cinder.context"]
    context.authorize(policy_name(action))
    args = action_body(body, action)
    return context, args, volume_or_404(context, id)


def deadline_of(args: dict[str, Any]) -> int | None:
    """The action's ``deadline`` argument (epoch seconds), checked (400 when it is not a positive whole number)."""
    deadline = args.get("deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0):
        raise webob.exc.HTTPBadRequest(explanation="'deadline' must be a positive whole number (epoch seconds)")
    return deadline


def kept_deadline(meta: dict[str, Any]) -> int | None:
    """The deadline kept with a volume's lock (admin metadata), or None."""
    value = meta.get(DEADLINE_KEY)
    return int(value) if value and str(value).isdigit() else None


def owner_of(args: dict[str, Any]) -> str | None:
    """The action's ``owner`` argument, checked (400 when it is not a name)."""
    owner = args.get("owner")
    if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 255):
        raise webob.exc.HTTPBadRequest(explanation="'owner' must be a non-empty string of at most 255 characters")
    return owner


def check_holder(volume: Any, args: dict[str, Any]) -> None:
    """409 when the action names an ``owner`` and another owner holds the lock."""
    owner = owner_of(args)
    holder = (volume.admin_metadata or {}).get(OWNER_KEY)
    if owner and holder and holder != owner:
        raise webob.exc.HTTPConflict(explanation=f"volume {volume.id} is locked by {holder}, not {owner}")


def refusal(volume: Any, wanted: str) -> str:
    """Why a conditional update did not match: the volume's current state, said plainly."""
    volume.refresh()
    return (
        f"volume {volume.id} cannot go to {wanted}: status {volume.status}, "
        f"migration_status {volume.migration_status}, host {volume.host}"
    )


def volume_or_404(context: Any, volume_id: str) -> Any:
    try:
        return objects.Volume.get_by_id(context, volume_id)
    except exception.VolumeNotFound as exc:
        raise webob.exc.HTTPNotFound(explanation=exc.msg) from exc


def volume_type_or_400(context: Any, type_id: Any) -> Any:
    """The volume type named or identified by ``type_id``; 400 when there is none."""
    try:
        return objects.VolumeType.get_by_name_or_id(context, str(type_id))
    except exception.VolumeTypeNotFound as exc:
        raise webob.exc.HTTPBadRequest(explanation=exc.msg) from exc


def check_dest(volume: Any, host: str) -> None:
    """400 when the volume's lock is for another destination than ``host``."""
    dest = (volume.admin_metadata or {}).get(DEST_KEY)
    if dest and dest != host:
        raise webob.exc.HTTPBadRequest(explanation=f"volume {volume.id} is migrating to {dest}, not {host}")


def backend_service(context: Any, host: str) -> Any:
    """The enabled, up volume service of ``host``'s backend (``host@backend``, a pool may follow); 400 if none."""
    backend = volume_utils.extract_host(host, "backend")
    try:
        return objects.Service.get_by_id(
            context.elevated(),
            None,
            is_up=True,
            topic=constants.VOLUME_TOPIC,
            host=backend,
            disabled=False,
            backend_match_level="backend",
        )
    except exception.ServiceNotFound:
        raise webob.exc.HTTPBadRequest(
            explanation=f"no enabled volume service is up for {backend} (destination {host})"
        ) from None


def dest_pool(context: Any, dest: str) -> dict[str, Any]:
    """The destination pool as Cinder's scheduler describes it to a driver: ``host``, ``cluster_name``,
    ``capabilities`` (400 when its service is not up or the scheduler does not know it)."""
    service = backend_service(context, dest)
    pools = scheduler_rpcapi.SchedulerAPI().get_pools(context.elevated(), filters={"name": dest})
    if not pools:
        raise webob.exc.HTTPBadRequest(explanation=f"Cinder's scheduler reports no pool {dest}")
    return {"host": dest, "cluster_name": service.cluster_name, "capabilities": pools[0]["capabilities"]}


def migration_view(volume: Any) -> dict[str, Any]:
    """A volume's migration as the extension's own resource shows it (never as keys in Cinder's volume views)."""
    meta = volume.admin_metadata or {}
    return {
        "async_migration": {
            "volume_id": volume.id,
            "status": volume.status,
            "migration_status": volume.migration_status,
            "host": volume.host,
            "source_host": meta.get(SOURCE_KEY),
            "dest_host": meta.get(DEST_KEY),
            "owner": meta.get(OWNER_KEY),
            "deadline": kept_deadline(meta),
            "source_step": meta.get(SOURCE_STEP_KEY),
            "target_step": meta.get(TARGET_STEP_KEY),
            "copy_target": meta.get(COPY_TARGET_KEY),
            "copied": bool(meta.get(COPY_TARGET_KEY)) and meta.get(COPIED_KEY) == meta.get(COPY_TARGET_KEY),
        }
    }
