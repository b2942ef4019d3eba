"""The Cinder boundary of the flow: the Block Storage calls and async-migration actions it makes.

``CinderApi`` builds every call on one primitive, ``request``, that a
concrete client supplies (``plugins.hooks.cinder.CinderHook``: Keystone
session, microversion, retries). The extension's actions are Cinder's
``os-async_migration_{begin,attachable,finish,fail,abandon,progress}`` (``include/cinder_plugin``).
Every method raises ``CinderError`` with Cinder's HTTP status on a refusal.
"""

from __future__ import annotations

import abc
from typing import Any
from urllib.parse import quote

from include.cinder_plugin.names import BACKENDS_RESOURCE, RESOURCE
from include.migration.errors import CinderError


class CinderApi(abc.ABC):
    @abc.abstractmethod
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One Block Storage API call, ``path`` below ``/v3/{project_id}``: the JSON answer, or None.

        Raises CinderError (with the HTTP status when Cinder answered).
        """

    # ---- volumes and the async-migration extension -----------------------------------
    def get_volume(self, volume_id: str) -> dict[str, Any]:
        """The volume as an admin sees it (host, migration_status, name_id...); CinderError 404 if none."""
        return self.request("GET", f"/volumes/{volume_id}")["volume"]

    def action(self, volume_id: str, action: str, args: dict[str, Any] | None = None) -> Any:
        return self.request("POST", f"/volumes/{volume_id}/action", {action: args or {}})

    def begin_migration(self, volume_id: str, host: str, owner: str | None = None,
                        deadline: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Lock the volume for a migration to ``host`` (``starting``), held by ``owner``, its copy to be complete
        by ``deadline`` (epoch seconds, kept with the lock).

        The same owner may begin again while the lock holds (its ``deadline`` is then ignored); any other is
        refused (409). Returns the lock: ``source_host``, ``host``, ``owner``, ``deadline`` (the one the first
        begin set), ``migration_status``.
        """
        args = {"host": host, **({"owner": owner} if owner else {}), **({"deadline": deadline} if deadline else {})}
        return (self.action(volume_id, "os-async_migration_begin", args) or {}).get("async_migration") or {}

    def mark_attachable(self, volume_id: str, host: str, provider_location: str | None = None) -> None:
        """The target serves the volume: host := ``host``, ``migrating_attachable``; 409 unless locked."""
        self.action(volume_id, "os-async_migration_attachable", {"host": host, "provider_location": provider_location})

    def finish_migration(self, volume_id: str, host: str | None = None, provider_location: str | None = None,
                         volume_type_id: str | None = None) -> None:  # fmt: skip
        """``success``: from ``migrating_attachable``, or from ``starting`` for a synchronous path (then
        ``host`` is where the volume arrived); ``volume_type_id`` changes the type with the move."""
        given = (("host", host), ("provider_location", provider_location), ("volume_type_id", volume_type_id))
        self.action(volume_id, "os-async_migration_finish", {k: v for k, v in given if v is not None})

    def fail_migration(self, volume_id: str, reason: str, owner: str | None = None) -> None:
        """``error`` with ``reason`` (Cinder shows it as metadata ``async_migration_error``); only the owner may."""
        self.action(volume_id, "os-async_migration_fail", {"reason": reason, **({"owner": owner} if owner else {})})

    def abandon_migration(
        self, volume_id: str, reason: str, owner: str | None = None, provider_location: str | None = None
    ) -> None:
        """Back to the source the lock recorded, ``error`` with ``reason``: from ``migrating_attachable`` only,
        the volume detached (409 otherwise), after the target was given up (``abandon_migration_target``)."""
        args = {"reason": reason, "owner": owner, "provider_location": provider_location}
        self.action(volume_id, "os-async_migration_abandon", {k: v for k, v in args.items() if v is not None})

    def report_progress(self, volume_id: str, progress: str, owner: str | None = None) -> None:
        """The copy's progress, one line, into the volume's metadata ``async_migration_progress``; 409 unless
        a migration (of ``owner``) is in flight. Cleared when it ends."""
        self.action(
            volume_id, "os-async_migration_progress", {"progress": progress, **({"owner": owner} if owner else {})}
        )

    def migration(self, volume_id: str) -> dict[str, Any]:
        """The volume's migration as the extension's own resource shows it: ``status``, ``migration_status``,
        ``host``, ``source_host``, ``dest_host``, ``owner``, ``source_step`` and ``target_step`` (what steps 1 and 2
        did in cinder-volume), and for an attachable takeover ``copy`` (``MigrationProgress``'s JSON, None with
        ``copy_error`` when the destination could not say)."""
        return self.request("GET", f"/{RESOURCE}/{volume_id}")["async_migration"]

    def migration_locks(self) -> dict[str, dict[str, Any]]:
        """Volume id -> the migration view (without ``copy``) of every volume of every project that a migration
        of the extension holds: ``source_host``, ``dest_host``, ``owner``... whoever started it. Cinder's own volume
        views carry none of this."""
        return {view["volume_id"]: view for view in self.request("GET", f"/{RESOURCE}")["async_migrations"]}

    def source_migrate(self, volume_id: str, owner: str | None = None) -> dict[str, Any]:
        """Blueprint step 1: the source backend's cinder-volume runs its driver's ``migrate_volume`` toward the
        lock's destination. Returns at once (the migration as ``migration`` shows it); its ``source_step`` says
        what became of it. 409 unless the volume is locked (``starting``)."""
        args = {"owner": owner} if owner else {}
        return (self.action(volume_id, "os-async_migration_source_migrate", args) or {}).get("async_migration") or {}

    def target_migrate(self, volume_id: str, owner: str | None = None, speed_mib: int | None = None,
                       mode: str | None = None, again: bool = False) -> dict[str, Any]:  # fmt: skip
        """Blueprint step 2: the lock's destination backend's cinder-volume takes the volume over (its driver's
        ``migrate_volume_target``, the source's connection opened by the source's cinder-volume). Returns at once
        (the migration's view); its ``target_step`` says what became of it: ``attachable`` (the volume is
        ``migrating_attachable`` on the destination), ``moved``, ``not_moved`` or ``failed: <reason>``. ``again``
        while it is ``running``: the same request is sent once more (cinder-volume runs a duplicate not twice)."""
        given = (("owner", owner), ("speed_mib", speed_mib), ("mode", mode), ("again", again or None))
        args = {k: v for k, v in given if v is not None}
        return (self.action(volume_id, "os-async_migration_target_migrate", args) or {}).get("async_migration") or {}

    def copy_control(self, volume_id: str, control: str, speed_mib: int | None = None) -> dict[str, Any]:
        """``pause``, ``resume`` or ``speed`` (``speed_mib``, 0: unlimited) the background copy of an attachable
        takeover, where the destination's driver offers it (400 otherwise); the copy's progress after it."""
        args = {"control": control, **({"speed_mib": speed_mib} if speed_mib is not None else {})}
        return self.action(volume_id, "os-async_migration_copy", args)["copy"]

    # ---- the host copy (include/cinder_plugin/host_copy.py) ------------------------------------
    def copy_target(self, volume_id: str, owner: str | None = None,
                    volume_type_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """The destination volume of a host copy, made once by Cinder on the lock's destination pool:
        ``volume_id``, ``status`` (wait for ``available``), ``host``. 409 unless the volume is locked and no driver
        step moved it."""
        given = (("owner", owner), ("volume_type_id", volume_type_id))
        args = {k: v for k, v in given if v is not None}
        return self.action(volume_id, "os-async_migration_copy_target", args)["copy_target"]

    def copy_connect(self, volume_id: str, which: str, connector: dict[str, Any],
                     owner: str | None = None) -> dict[str, Any]:  # fmt: skip
        """A connection to the ``source`` or the ``target`` volume of a host copy for ``connector`` (os-brick's
        connector properties of this host), opened by the cinder-volume that owns it: Cinder's connection info
        (``driver_volume_type``, ``data``)."""
        args = {"volume": which, "connector": connector, **({"owner": owner} if owner else {})}
        return self.action(volume_id, "os-async_migration_copy_connect", args)["connection_info"]

    def copy_disconnect(self, volume_id: str, owner: str | None = None, copied: bool = False) -> None:
        """Close both connections of a host copy; ``copied``: first record that the destination holds the whole
        copy (``finish`` requires it before Cinder's completion deletes the source)."""
        args = {"copied": copied, **({"owner": owner} if owner else {})}
        self.action(volume_id, "os-async_migration_copy_disconnect", args)

    def backend_features(self, backend: str) -> dict[str, Any]:
        """What the driver of ``backend`` (``host@backend``) offers of the blueprint (``Features.to_json()``),
        asked of its cinder-volume; 400 when its service is not enabled and up."""
        return self.request("GET", f"/{BACKENDS_RESOURCE}/{quote(backend, safe='')}")["features"]

    def backend_inventory(self, backend: str) -> dict[str, Any]:
        """What ``backend`` (``host@backend``) holds, as its own driver lists it: ``volumes`` (``HeldVolume``'s
        JSON), ``repairable`` (its driver cleans up leftovers: ``release_held``), ``made_here`` (the names of those
        this Cinder made, by its records). 400 when its service is not enabled and up or its driver lists nothing."""
        return self.request("GET", f"/{BACKENDS_RESOURCE}/{quote(backend, safe='')}/inventory")

    def release_held(self, backend: str, name: str, cleanup: str) -> str:
        """An audit's repair: ``backend``'s driver does ``cleanup`` (``inventory.Cleanup``) to ``name``, which no
        volume accounts for (409 when a Cinder volume names it, or this Cinder did not make it); what was done."""
        body = {"os-async_migration_release": {"name": name, "cleanup": str(cleanup)}}
        return self.request("POST", f"/{BACKENDS_RESOURCE}/{quote(backend, safe='')}/action", body)["done"]

    # ---- what the scheduler and the services say --------------------------------------
    def volume_services(self) -> list[dict[str, Any]]:
        """The cinder-volume services: host (host@backend), status (enabled/disabled), state (up/down)."""
        return self.request("GET", "/os-services?binary=cinder-volume")["services"]

    def extension_aliases(self) -> set[str]:
        """The aliases of the API extensions this Cinder loaded (``GET /extensions``)."""
        return {str(e.get("alias")) for e in self.request("GET", "/extensions").get("extensions") or []}

    def pool_details(self) -> list[dict[str, Any]]:
        """Every pool with its capabilities (capacity, over-subscription, what the driver reports)."""
        return self.request("GET", "/scheduler-stats/get_pools?detail=True")["pools"]

    def list_volumes(self, page: int = 500, max_pages: int = 1000) -> list[dict[str, Any]]:
        """Every volume of every project, as an admin sees it, a page at a time."""
        return self._all("volumes", page, max_pages)

    def list_snapshots(self, page: int = 500, max_pages: int = 1000) -> list[dict[str, Any]]:
        return self._all("snapshots", page, max_pages)

    def list_volume_types(self) -> list[dict[str, Any]]:
        """Every volume type with its extra specs (``volume_backend_name`` pins a backend)."""
        return self.request("GET", "/types?is_public=None")["volume_types"]

    def _all(self, kind: str, page: int, max_pages: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        marker = ""
        for _ in range(max_pages):
            batch = self.request("GET", f"/{kind}/detail?all_tenants=1&sort=id:asc&limit={page}{marker}")[kind]
            found += batch
            if len(batch) < page:
                return found
            marker = f"&marker={batch[-1]['id']}"
        raise CinderError(f"more than {page * max_pages} {kind}: listing stopped")

    def get_volume_type(self, name_or_id: str) -> dict[str, Any]:
        """A volume type by ID, else by name; CinderError 404 when there is none."""
        try:
            return self.request("GET", f"/types/{name_or_id}")["volume_type"]
        except CinderError as exc:
            if exc.status != 404:
                raise
        for vtype in self.request("GET", "/types")["volume_types"]:
            if vtype["name"] == name_or_id:
                return vtype
        raise CinderError(f"volume type {name_or_id} does not exist", 404)
