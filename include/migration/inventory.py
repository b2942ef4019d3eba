"""What Cinder says about pools, volumes and the migrations in flight, as the planner's plain data.

``read_cloud(cinder)`` makes seven calls (pools with capabilities, volume
services, volumes, the extension's migrations twice, snapshots, volume types); ``pools_from`` /
``volumes_from`` / ``in_flight_from`` turn their JSON into ``PoolState``,
``VolumeState`` and ``InFlight``, and can be tested on canned answers.

A migration is in flight when its volume's ``migration_status`` is not
settled. Its pools come from the extension's lock (``GET /os-async-migration``:
``CinderApi.migration_locks``), so migrations that an operator started by hand count like the others; one
without a lock (Cinder's own ``os-migrate_volume``) counts on its current
host, with the destination unknown. ``volumes_and_locks`` reads the locks
before and after the volumes, so a migration that begins or ends during the
read is not taken for one without a lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from include.backends.base import GiB
from include.cinder_plugin.names import ASYNC_TARGET_CAPABILITY, ASYNC_TARGET_SOURCES
from include.connectors import connection_type
from include.migration.cinder_api import CinderApi
from include.migration.planner import NOT_MIGRATING, PoolState, VolumeState

UNKNOWN_POOL = "?"  # the destination of a migration that holds no lock of ours


@dataclass(frozen=True)
class InFlight:
    """A migration under way: which pools it loads, and who started it (the lock's owner)."""

    volume_id: str
    source: str
    destination: str
    owner: str | None
    migration_status: str


@dataclass(frozen=True)
class Cloud:
    pools: tuple[PoolState, ...]
    volumes: tuple[VolumeState, ...]
    in_flight: tuple[InFlight, ...]

    @property
    def pool_names(self) -> list[str]:
        return sorted(p.name for p in self.pools)

    @cached_property
    def up_pools(self) -> frozenset[str]:
        return frozenset(p.name for p in self.pools if p.up)

    @cached_property
    def _volumes_by_id(self) -> dict[str, VolumeState]:
        return {v.id: v for v in self.volumes}

    def volume(self, volume_id: str) -> VolumeState | None:
        return self._volumes_by_id.get(volume_id)


def _backend_host(pool: str) -> str:
    return pool.partition("#")[0]


def _gib(value: Any) -> int:
    """A capacity in GiB as Cinder reports it (a number, or "infinite"/"unknown") -> bytes; 0 when not a number."""
    try:
        return max(int(float(value) * GiB), 0)
    except (TypeError, ValueError):
        return 0


def _ratio(value: Any) -> float:
    """A pool's max_over_subscription_ratio (a number, or a string: "20.0", "auto") -> a positive float; 1.0 if not."""
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        return 1.0  # "auto" (Cinder computes it in its scheduler) or nothing: no over-subscription counted
    return ratio if math.isfinite(ratio) and ratio > 0 else 1.0


def pools_from(pool_details: Iterable[dict[str, Any]], services: Iterable[dict[str, Any]]) -> list[PoolState]:
    """Pools with a capacity; a pool is up when its backend's volume service is enabled and up."""
    up = {s["host"] for s in services if s.get("status") == "enabled" and s.get("state") == "up"}
    pools = []
    for pool in pool_details:
        caps = pool.get("capabilities") or {}
        total = _gib(caps.get("total_capacity_gb"))
        if total <= 0:
            continue  # "infinite" or unknown: nothing to balance against
        free = min(_gib(caps.get("free_capacity_gb")), total)
        provisioned = _gib(caps.get("provisioned_capacity_gb", caps.get("allocated_capacity_gb")))
        pools.append(
            PoolState(
                name=pool["name"],
                total_bytes=total,
                free_bytes=free,
                provisioned_bytes=provisioned,
                max_over_subscription_ratio=_ratio(caps.get("max_over_subscription_ratio")),
                up=_backend_host(pool["name"]) in up,
                takeover=bool(caps.get(ASYNC_TARGET_CAPABILITY)),
                protocol=connection_type(str(caps.get("storage_protocol") or "")),
                takeover_from=tuple(str(p) for p in caps.get(ASYNC_TARGET_SOURCES) or ()),
                volume_backend_name=caps.get("volume_backend_name"),
            )
        )
    return pools


def pinned_backends(volume_types: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Volume type id and name -> the backend its ``volume_backend_name`` pins."""
    pins = {}
    for vtype in volume_types:
        backend = (vtype.get("extra_specs") or {}).get("volume_backend_name")
        if backend:
            pins[vtype["id"]] = pins[vtype["name"]] = backend
    return pins


# Cinder's own migration makes a temporary volume with migration_status "target:<volume id>": the migration is
# the volume's, counted once, on it
CINDER_TARGET_PREFIX = "target:"


def _migrating(volume: dict[str, Any]) -> bool:
    return volume.get("migration_status") not in NOT_MIGRATING


Locks = Mapping[str, dict[str, Any]]  # volume id -> its migration's view (``CinderApi.migration_locks``)


def volumes_and_locks(cinder: CinderApi) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every volume, and the locks of the extension's migrations, read so that a volume listed as migrating has
    its lock: the locks are read before and after the volumes (a lock that began after the first read is in the
    second; one that ended before the second, in the first)."""
    before = cinder.migration_locks()
    volumes = cinder.list_volumes()
    return volumes, {**before, **cinder.migration_locks()}


def in_flight_from(volumes: Iterable[dict[str, Any]], locks: Locks) -> list[InFlight]:
    found = []
    for volume in volumes:
        if not _migrating(volume) or str(volume["migration_status"]).startswith(CINDER_TARGET_PREFIX):
            continue
        lock = locks.get(volume["id"]) or {}
        host = volume.get("os-vol-host-attr:host") or UNKNOWN_POOL
        found.append(
            InFlight(
                volume_id=volume["id"],
                source=lock.get("source_host") or host,
                destination=lock.get("dest_host") or UNKNOWN_POOL,
                owner=lock.get("owner"),
                migration_status=volume["migration_status"],
            )
        )
    return found


def volumes_from(
    volumes: Iterable[dict[str, Any]], with_snapshots: set[str], pins: dict[str, str], locks: Locks
) -> list[VolumeState]:
    states = []
    for volume in volumes:
        lock = locks.get(volume["id"]) or {}
        host = volume.get("os-vol-host-attr:host") or ""
        vtype = volume.get("volume_type_id") or volume.get("volume_type")
        states.append(
            VolumeState(
                id=volume["id"],
                size_bytes=int(volume.get("size") or 0) * GiB,
                # a migration in flight loads its source until it ends: the planner counts it there
                pool=lock.get("source_host") or host,
                status=volume.get("status") or "",
                volume_type=volume.get("volume_type"),
                pinned_backend=pins.get(vtype) if vtype else None,
                has_snapshots=volume["id"] in with_snapshots,
                group_id=volume.get("group_id") or volume.get("consistencygroup_id"),
                migration_status=volume.get("migration_status"),
                migration_dest=lock.get("dest_host") if _migrating(volume) else None,
                attachments=len(volume.get("attachments") or []),
            )
        )
    return states


def read_pools(cinder: CinderApi) -> list[PoolState]:
    """The pools with a capacity, up or not, as Cinder says them now."""
    return pools_from(cinder.pool_details(), cinder.volume_services())


def read_cloud(cinder: CinderApi) -> Cloud:
    """Pools, volumes and migrations in flight, as Cinder says them now."""
    pools = read_pools(cinder)
    volumes, locks = volumes_and_locks(cinder)
    with_snapshots = {s["volume_id"] for s in cinder.list_snapshots()}
    states = volumes_from(volumes, with_snapshots, pinned_backends(cinder.list_volume_types()), locks)
    return Cloud(tuple(pools), tuple(states), tuple(in_flight_from(volumes, locks)))
