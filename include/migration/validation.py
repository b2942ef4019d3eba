"""The first step of a migration: refuse a bad request with one clear message before anything changes, then lock.

``validate_and_lock`` is the ``validate_and_lock`` task of ``dags/volume_migration.py``; its ``Plan`` is what
every later step of ``flow.py`` works from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from include.backends.base import GiB
from include.cinder_plugin.names import (
    ALIAS,
    ASYNC_TARGET_CAPABILITY,
    ASYNC_TARGET_SOURCES,
    INSTALL_HINT,
    MANAGER_CAPABILITY,
)
from include.connectors import connection_type, takes_over
from include.migration.branches import first_step
from include.migration.cinder_api import CinderApi
from include.migration.deadlines import copy_timeout, deadline_text
from include.migration.errors import CinderError, MigrationRefused
from include.migration.flow import LOCK_STATUSES, Plan, attach_problems, backend_of, lun_of
from include.migration.request import MigrationRequest, parse_request
from include.migration.steps import Step

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _refused_on(statuses: tuple[int, ...], message: str | None = None) -> Iterator[None]:
    """A Cinder answer with one of ``statuses`` becomes MigrationRefused (``message``, else Cinder's own words)."""
    try:
        yield
    except CinderError as exc:
        if exc.status in statuses:
            raise MigrationRefused(message or str(exc)) from None
        raise


def _volume_or_refuse(cinder: CinderApi, volume_id: str) -> dict[str, Any]:
    with _refused_on((404,), f"volume {volume_id} does not exist"):
        return cinder.get_volume(volume_id)


def _check_service(cinder: CinderApi, dest_host: str) -> None:
    backend_host = dest_host.split("#", 1)[0]
    services = {s["host"]: s for s in cinder.volume_services()}
    service = services.get(backend_host)
    if service is None:
        known = ", ".join(sorted(services)) or "none"
        raise MigrationRefused(f"destination {dest_host}: Cinder has no volume service {backend_host} (known: {known})")
    if service.get("status") != "enabled" or service.get("state") != "up":
        raise MigrationRefused(
            f"destination {dest_host}: the volume service {backend_host} is {service.get('status')} and "
            f"{service.get('state')} (updated {service.get('updated_at')}); it must be enabled and up"
        )


def validate_and_lock(conf: dict[str, Any], owner: str, cinder: CinderApi) -> Plan:
    """Check everything a migration needs, then lock the volume for ``owner``.

    Raises InvalidParams (bad parameters) or MigrationRefused (the volume,
    the destination pool or this host is not fit) with one message that names every
    problem found, before any change. The same ``owner`` may run it again
    (a retry, a cleared run): while its lock holds, it answers the same plan,
    even once the volume is attachable on the destination.
    """
    request: MigrationRequest = parse_request(conf)
    if ALIAS not in cinder.extension_aliases():
        raise MigrationRefused(f"this Cinder has not loaded the API extension {ALIAS}: {INSTALL_HINT}")
    volume = _volume_or_refuse(cinder, request.volume_id)
    current_host = volume.get("os-vol-host-attr:host") or ""
    if volume.get("migration_status") in LOCK_STATUSES and current_host == request.dest_host:
        plan = _plan(request, volume, current_host, owner, cinder)
        lock = _lock(cinder, plan, owner)  # refused unless this owner moved it there (attachable, or its driver)
        return _locked(replace(plan, source_host=lock["source_host"]), lock)
    if current_host.count("@") != 1 or "#" not in current_host:
        raise MigrationRefused(f"volume {request.volume_id} has no pool host (host is {current_host!r})")
    if current_host == request.dest_host:
        raise MigrationRefused(f"volume {request.volume_id} is already on {request.dest_host}")
    _check_service(cinder, request.dest_host)
    pools = {pool["name"]: pool.get("capabilities") or {} for pool in cinder.pool_details()}
    if request.dest_host not in pools:
        raise MigrationRefused(f"destination {request.dest_host} is not a pool Cinder knows ({', '.join(pools)})")
    _check_managers(pools, current_host, request.dest_host)
    plan = _plan(request, volume, current_host, owner, cinder)
    resumed = volume.get("migration_status") == "starting"
    if resumed:  # locked already: by this run (a retry, a cleared run) or refused here
        plan = _locked(plan, _lock(cinder, plan, owner))
    problems = _pool_problems(plan, pools.get(current_host) or {}, pools[request.dest_host], resumed=resumed)
    problems += _type_problems(
        cinder, request.new_type or volume.get("volume_type_id") or volume.get("volume_type"), request, pools
    )
    if problems:
        raise MigrationRefused(f"volume {plan.volume_id} cannot be migrated to {plan.dest_host}: {'; '.join(problems)}")
    if not resumed:
        plan = _locked(plan, _lock(cinder, plan, owner))
    log.info("volume %s locked for %s by %s; path %s", plan.volume_id, plan.dest_host, owner, plan.path)
    return plan


def _check_managers(pools: dict[str, dict[str, Any]], *hosts: str) -> None:
    """Each pool's cinder-volume runs the blueprint's steps (its pools report ``MANAGER_CAPABILITY``), else
    MigrationRefused saying what to install. A pool the scheduler does not report is left to the steps."""
    missing = sorted({backend_of(h) for h in hosts if h in pools and not pools[h].get(MANAGER_CAPABILITY)})
    if missing:
        raise MigrationRefused(f"the cinder-volume of {', '.join(missing)} does not run the async migration volume "
                               f"manager: {INSTALL_HINT}")  # fmt: skip


def _lock(cinder: CinderApi, plan: Plan, owner: str) -> dict[str, Any]:
    """Lock the volume (again, for the same owner) with the copy's deadline from now; the lock as Cinder keeps it."""
    deadline = int(time.time()) + plan.copy_timeout_s  # the first lock keeps it: a retry's is ignored
    with _refused_on((400, 409)):  # Cinder's refusal (status, snapshots, another run...)
        return {"deadline": deadline} | {
            k: v for k, v in cinder.begin_migration(plan.volume_id, plan.dest_host, owner, deadline).items() if v
        }


def _locked(plan: Plan, lock: dict[str, Any]) -> Plan:
    """``plan`` with the copy deadline its lock keeps, logged."""
    plan = replace(plan, copy_deadline=float(lock["deadline"]))
    log.info("volume %s: the copy must be complete by %s (%s)", plan.volume_id, deadline_text(plan.copy_deadline),
             plan.copy_deadline_basis)  # fmt: skip
    return plan


def _plan(request: MigrationRequest, volume: dict[str, Any], source_host: str, owner: str, cinder: CinderApi) -> Plan:
    size = int(volume["size"]) * GiB
    try:
        timeout = copy_timeout(size, request.speed_mib, request.copy_timeout_s)
    except ValueError as exc:
        raise MigrationRefused(f"volume {request.volume_id}: {exc}") from None
    volume_type_id = None
    if request.new_type:
        with _refused_on((404,), f"volume type {request.new_type} does not exist"):
            volume_type_id = cinder.get_volume_type(request.new_type)["id"]
    return Plan(
        volume_id=request.volume_id,
        lun=lun_of(volume),
        size=size,
        source_host=source_host,
        dest_host=request.dest_host,
        owner=owner,
        path=first_step(request).value,
        speed_mib=request.speed_mib,
        copy_mode=request.copy_mode,
        copy_timeout_s=timeout.seconds,
        copy_deadline_basis=timeout.basis,
        volume_type_id=volume_type_id,
    )


def _type_problems(cinder: CinderApi, type_name: str | None, request: MigrationRequest, pools: dict) -> list[str]:
    """A volume type (the new one, else the volume's) that pins a backend (``volume_backend_name``) the
    destination pool is not of: Cinder's own scheduler refuses such a move (its capabilities filter), and a
    volume left on a backend its type excludes could not be retyped, extended by a new pool or migrated back
    by Cinder. A run may change the type with the move (``new_type``)."""
    if not type_name:
        return []
    with _refused_on((404,), f"volume type {type_name} does not exist"):
        vtype = cinder.get_volume_type(type_name)
    pinned = (vtype.get("extra_specs") or {}).get("volume_backend_name")
    dest = pools[request.dest_host].get("volume_backend_name") or backend_of(request.dest_host)
    if pinned is None or pinned == dest:
        return []
    hint = "" if request.new_type else "; give new_type (a type the destination serves) to move it"
    return [f"its volume type {vtype.get('name', type_name)} pins backend {pinned}, the destination is {dest}{hint}"]


def _pool_problems(plan: Plan, source: dict[str, Any], dest: dict[str, Any], *, resumed: bool) -> list[str]:
    """What the pools' capabilities (as Cinder's scheduler reports them) say against the move.

    A host copy must be able to open both pools' protocols on this host: checked when the run asks for one
    (``force_host_copy``, a new type), and when nothing else can move the volume: the pools speak different
    protocols (no driver moves within one array then) and the destination's driver takes nothing over. Any
    other run finds out at its host copy, if it comes to one, before anything of the copy is made. A destination
    pool without the free space the volume needs (thick provisioning) is refused unless the run holds the lock
    already (``resumed``: the space may be its own work).
    """
    problems = []
    source_protocol, dest_protocol = (str(c.get("storage_protocol") or "") for c in (source, dest))
    takeover = takes_over(bool(dest.get(ASYNC_TARGET_CAPABILITY)), dest.get(ASYNC_TARGET_SOURCES) or (),
                          source_protocol)  # fmt: skip
    only_host_copy = connection_type(source_protocol) != connection_type(dest_protocol) and not takeover
    if plan.path == Step.HOST_COPY or only_host_copy:
        problems += attach_problems(source_protocol, dest_protocol)
    free, thin = dest.get("free_capacity_gb"), dest.get("thin_provisioning_support")
    if not resumed and isinstance(free, (int, float)) and not thin and free * GiB < plan.size:
        problems.append(f"pool {plan.dest_host} has {free} GiB free, the volume needs {plan.size // GiB} GiB")
    return problems
