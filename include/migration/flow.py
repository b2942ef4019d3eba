"""The steps of one volume migration, as plain functions (no Airflow here).

Each function is one task of ``dags/volume_migration.py`` and is safe to run
again after a retry or a dead worker:

* ``validate_and_lock``: refuse bad requests with one clear message before
  anything changes, then lock the volume in Cinder (``os-async_migration_begin``,
  owned by the run, so the same run may lock again and no other run can);
* ``source_driver_migrate`` / ``target_takeover``: the blueprint's driver
  calls, both idempotent on the arrays; a takeover that answers async marks
  the volume attachable (``mark_attachable``): the target serves it while it
  copies;
* ``host_copy``: the generic path, resumable from its checkpoint;
* ``commit``: check the target is complete, only then delete the source LUN,
  and mark ``success``;
* ``rollback``: before the volume was attachable, remove what the run made on
  the target and mark ``error`` with the reason; after it, never delete data.

The callers pass ``cinder`` (a ``CinderApi``: ``plugins.hooks.cinder.CinderHook``
or any object with its methods) and ``arrays``: a function from a Cinder backend name to the
``BackendDriver`` that serves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from include.backends.base import BackendDriver, Destination, GiB, MiB, MigrationProgress, MigrationState, Volume
from include.backends.errors import ArrayUnavailable, BackendError, Conflict, NotFound
from include.host_copy import host_copy as copy_through_host
from include.migration.branches import first_step
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError, MigrationFailed, MigrationRefused
from include.migration.request import MigrationRequest, parse_request
from include.migration.steps import Step

log = logging.getLogger(__name__)

MIGRATING_ATTACHABLE = "migrating_attachable"


Arrays = Callable[[str], BackendDriver]


def backend_of(host: str) -> str:
    """``host@backend#pool`` -> ``backend``."""
    return host.split("@", 1)[1].split("#", 1)[0]


def lun_of(volume: dict[str, Any]) -> str:
    """The name of a Cinder volume's LUN on its arrays: Cinder's ``volume-<id>`` (of its name id, if it has one)."""
    return f"volume-{volume.get('os-vol-mig-status-attr:name_id') or volume['id']}"


def pool_of(host: str) -> str:
    return host.split("#", 1)[1]


@dataclass(frozen=True)
class Plan:
    """What validate_and_lock found and locked: every later step works from this alone."""

    volume_id: str
    lun: str  # the LUN's name on both arrays (Cinder's volume name)
    size: int  # bytes
    source_host: str
    dest_host: str
    owner: str  # who holds the lock in Cinder (the Airflow run)
    path: str  # Step.SOURCE_DRIVER or Step.HOST_COPY
    speed_mib: int | None = None
    copy_mode: str | None = None  # a takeover's copy mode; None: the target array's default
    copy_timeout_s: int = 24 * 3600
    volume_type_id: str | None = None

    @property
    def source_backend(self) -> str:
        return backend_of(self.source_host)

    @property
    def dest_backend(self) -> str:
        return backend_of(self.dest_host)

    @property
    def source_pool(self) -> str:
        return pool_of(self.source_host)

    @property
    def dest_pool(self) -> str:
        return pool_of(self.dest_host)

    @property
    def speed_bps(self) -> int | None:
        return None if self.speed_mib is None else self.speed_mib * MiB

    @property
    def volume(self) -> Volume:
        return Volume(self.lun, self.size, self.source_pool)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dest_backend": self.dest_backend}  # dest_backend: for wait_for_copy's template

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _array(arrays: Arrays, backend: str, role: str) -> BackendDriver:
    try:
        return arrays(backend)
    except (LookupError, ValueError) as exc:
        raise MigrationRefused(f"{role} backend {backend}: {exc}") from None


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


def validate_and_lock(conf: dict[str, Any], owner: str, cinder: CinderApi, arrays: Arrays) -> Plan:
    """Check everything a migration needs, then lock the volume for ``owner``.

    Raises InvalidParams (bad parameters) or MigrationRefused (the volume,
    the destination or an array is not fit) with one message that names every
    problem found, before any change. The same ``owner`` may run it again
    (a retry, a cleared run): while its lock holds, it answers the same plan,
    even once the volume is attachable on the destination.
    """
    request: MigrationRequest = parse_request(conf)
    volume = _volume_or_refuse(cinder, request.volume_id)
    current_host = volume.get("os-vol-host-attr:host") or ""
    if volume.get("migration_status") == MIGRATING_ATTACHABLE and current_host == request.dest_host:
        lock = _lock(cinder, request, owner)  # refused unless this owner made it attachable
        return _plan(request, volume, lock["source_host"], owner, cinder)
    if current_host.count("@") != 1 or "#" not in current_host:
        raise MigrationRefused(f"volume {request.volume_id} has no pool host (host is {current_host!r})")
    if current_host == request.dest_host:
        raise MigrationRefused(f"volume {request.volume_id} is already on {request.dest_host}")
    _check_service(cinder, request.dest_host)
    pools = cinder.get_pools()
    if request.dest_host not in pools:
        raise MigrationRefused(f"destination {request.dest_host} is not a pool Cinder knows ({', '.join(pools)})")
    plan = _plan(request, volume, current_host, owner, cinder)
    resumed = volume.get("migration_status") == "starting"
    if resumed:  # locked already: by this run (a retry, a cleared run) or refused here
        _lock(cinder, request, owner)
    source = _array(arrays, plan.source_backend, "source")
    dest = _array(arrays, plan.dest_backend, "destination")
    problems = _array_problems(plan, source, dest, resumed=resumed)
    if problems:
        raise MigrationRefused(f"volume {plan.volume_id} cannot be migrated to {plan.dest_host}: {'; '.join(problems)}")
    if not resumed:
        _lock(cinder, request, owner)
    log.info("volume %s locked for %s by %s; path %s", plan.volume_id, plan.dest_host, owner, plan.path)
    return plan


def _lock(cinder: CinderApi, request: MigrationRequest, owner: str) -> dict[str, Any]:
    with _refused_on((400, 409)):  # Cinder's refusal (status, snapshots, another run...)
        return cinder.begin_migration(request.volume_id, request.dest_host, owner)


def _plan(request: MigrationRequest, volume: dict[str, Any], source_host: str, owner: str, cinder: CinderApi) -> Plan:
    volume_type_id = None
    if request.new_type:
        with _refused_on((404,), f"volume type {request.new_type} does not exist"):
            volume_type_id = cinder.get_volume_type(request.new_type)["id"]
    return Plan(
        volume_id=request.volume_id,
        lun=lun_of(volume),
        size=int(volume["size"]) * GiB,
        source_host=source_host,
        dest_host=request.dest_host,
        owner=owner,
        path=first_step(request).value,
        speed_mib=request.speed_mib,
        copy_mode=request.copy_mode,
        copy_timeout_s=request.copy_timeout_s,
        volume_type_id=volume_type_id,
    )


def _array_problems(plan: Plan, source: BackendDriver, dest: BackendDriver, *, resumed: bool) -> list[str]:
    """What the arrays say against the move: reachability, pool, space, the LUNs on both sides.

    ``resumed``: the run holds the lock already, so a LUN of that name on the
    destination (and the space it takes) is its own work from before.
    """
    problems = []
    caps = {}
    for role, array in (("source", source), ("destination", dest)):
        try:
            caps[role] = array.capabilities()
        except ArrayUnavailable as exc:
            problems.append(f"{role} {exc}")
    if problems:
        return problems
    pool = caps["destination"].pool(plan.dest_pool)
    if pool is None:
        problems.append(f"array {dest.name} has no pool {plan.dest_pool}")
    if _find_lun(source, plan.lun) is None:
        problems.append(f"array {source.name} has no LUN {plan.lun}")
    if source.name == dest.name:
        if plan.path == Step.HOST_COPY.value:
            problems.append(f"a host copy needs two arrays; {source.name} moves between its pools itself")
        return problems
    if resumed:
        return problems
    if pool is not None and pool.free_bytes < plan.size:
        free, need = pool.free_bytes // MiB, plan.size // MiB
        problems.append(f"pool {plan.dest_pool} of {dest.name} has {free} MiB free, the volume needs {need} MiB")
    if _find_lun(dest, plan.lun) is not None:
        problems.append(f"array {dest.name} already holds a LUN named {plan.lun}")
    return problems


def _find_lun(array: BackendDriver, name: str) -> dict[str, Any] | None:
    try:
        return array.get_lun(name)
    except NotFound:
        return None


def _release_source(source: BackendDriver, name: str, *, delete: bool = False) -> None:
    """Drop the source LUN's takeover and server exports (and the LUN itself with ``delete``); idempotent."""
    steps = (source.release_takeover, source.unexport_lun) + ((source.delete_lun,) if delete else ())
    for step in steps:
        try:
            step(name)
        except NotFound:
            pass


# ---- the data paths ---------------------------------------------------------------------------
def source_driver_migrate(plan: Plan, arrays: Arrays) -> dict[str, Any]:
    """Blueprint step 1: ``migrate_volume`` on the source backend. Returns ``{"moved", "model_update"}``."""
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    moved, update = source.migrate_volume(plan.volume, Destination(dest.name, plan.dest_pool))
    log.info("source driver %s: moved=%s %s", source.name, moved, update or "")
    return {"moved": moved, "model_update": update}


def target_takeover(plan: Plan, arrays: Arrays, cinder: CinderApi) -> dict[str, Any]:
    """Blueprint step 2: ``migrate_volume_target`` on the target. Returns ``{"moved", "async", "model_update"}``.

    Moved asynchronously, the volume is then marked attachable on the target
    (``mark_attachable``) before this returns: the caller waits for the copy
    next. Idempotent, on the array (a retry after the takeover was made finds
    it and answers the same without a second takeover) and in Cinder.
    """
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    moved, is_async, update = dest.migrate_volume_target(
        plan.volume, source, pool=plan.dest_pool, speed_bps=plan.speed_bps, mode=plan.copy_mode
    )
    log.info("target driver %s: moved=%s async=%s %s", dest.name, moved, is_async, update or "")
    if moved and is_async:
        mark_attachable(plan, cinder, update)
    return {"moved": moved, "async": is_async, "model_update": update}


def mark_attachable(plan: Plan, cinder: CinderApi, model_update: dict[str, Any] | None) -> None:
    """The target serves the volume: Cinder's host := target, ``migrating_attachable`` (idempotent)."""
    location = (model_update or {}).get("provider_location")
    try:
        cinder.mark_attachable(plan.volume_id, plan.dest_host, location)
    except CinderError as exc:
        volume = cinder.get_volume(plan.volume_id)
        if (volume.get("migration_status"), volume.get("os-vol-host-attr:host")) != (
            MIGRATING_ATTACHABLE,
            plan.dest_host,
        ):
            raise
        log.info("volume %s was already attachable on %s (%s)", plan.volume_id, plan.dest_host, exc)
    log.info("volume %s is attachable on %s while its data is copied", plan.volume_id, plan.dest_host)


def checkpoint_path(state_dir: pathlib.Path, plan: Plan) -> pathlib.Path:
    digest = hashlib.sha256(f"{plan.owner}|{plan.source_host}|{plan.dest_host}".encode()).hexdigest()[:16]
    return pathlib.Path(state_dir) / f"{plan.lun}.{digest}.checkpoint"


def host_copy(
    plan: Plan, arrays: Arrays, state_dir: pathlib.Path, progress: Callable[[MigrationProgress], None] | None = None
) -> dict[str, Any]:
    """The generic path: create the target LUN (once) and copy through this host, resuming a checkpoint.

    A checkpoint counts only for the target LUN it was written for: when the
    target has to be made (a rollback deleted the one an earlier try copied
    into), the copy starts over from 0. ``progress`` receives a
    ``MigrationProgress`` every few seconds.
    """
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    checkpoint = checkpoint_path(state_dir, plan)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    target = _find_lun(dest, plan.lun)
    if target is None:
        if checkpoint.exists():
            log.warning("target LUN %s is new on %s: its earlier checkpoint is dropped", plan.lun, dest.name)
            checkpoint.unlink()
        target = dest.create_lun(plan.lun, plan.size, plan.dest_pool)
    result = copy_through_host(
        source.export_lun(plan.lun).uri,
        dest.export_lun(plan.lun).uri,
        checkpoint=checkpoint,
        speed_bps=plan.speed_bps or 0,
        progress=progress,
    )
    for array in (source, dest):
        array.unexport_lun(plan.lun)
    log.info("host copy of %s: %s", plan.lun, result)
    return {"bytes_copied": result.bytes_written, "provider_location": target.get("location")}


# ---- the end: commit or roll back -------------------------------------------------------------
def _target_complete(plan: Plan, source: BackendDriver, dest: BackendDriver) -> str | None:
    """Why the target is not complete yet, or None when it is."""
    lun = dest.get_lun(plan.lun)
    if source.name == dest.name:
        if lun.get("move") or lun.get("pool") != plan.dest_pool:
            return f"LUN {plan.lun} is in pool {lun.get('pool')} of {dest.name}, not yet {plan.dest_pool}"
        return None
    if lun.get("copy") or lun.get("taken_over_from"):
        progress = dest.complete_migration_target(plan.volume)
        if progress.state is not MigrationState.DONE:
            return f"the copy on {dest.name} is {progress.describe()}"
    if lun.get("size") != plan.size:
        return f"LUN {plan.lun} on {dest.name} is {lun.get('size')} bytes, not {plan.size}"
    return None


def commit(plan: Plan, cinder: CinderApi, arrays: Arrays, model_update: dict[str, Any] | None = None) -> None:
    """Check that the target is complete; only then delete the source LUN, and mark ``success``.

    Idempotent: a source LUN already gone and a volume already ``success``
    on the destination are what a retry expects.
    """
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    volume = cinder.get_volume(plan.volume_id)
    if volume.get("migration_status") == "success" and volume.get("os-vol-host-attr:host") == plan.dest_host:
        log.info("volume %s is already migrated to %s", plan.volume_id, plan.dest_host)
        return
    why = _target_complete(plan, source, dest)
    if why:
        raise MigrationFailed(f"not committed, the source LUN is kept: {why}")
    if source.name != dest.name:
        _release_source(source, plan.lun, delete=True)
        log.info("source LUN %s deleted from %s", plan.lun, source.name)
    location = (model_update or {}).get("provider_location") or dest.get_lun(plan.lun).get("location")
    cinder.finish_migration(plan.volume_id, plan.dest_host, location, plan.volume_type_id)
    log.info("volume %s migrated to %s", plan.volume_id, plan.dest_host)


def rollback(plan: Plan | None, cinder: CinderApi, arrays: Arrays, reason: str) -> str:
    """Undo a migration that failed before the volume became attachable; returns what was done.

    Nothing is deleted once the volume is attachable (clients may have
    written to the target only): the run is then resumed, not rolled back.
    Nothing is touched when ``plan`` is None (validation failed: no lock).
    The target is only removed while the source LUN is intact.
    """
    if plan is None:
        return "nothing to undo: the volume was never locked"
    volume = cinder.get_volume(plan.volume_id)
    status = volume.get("migration_status")
    if status in (MIGRATING_ATTACHABLE, "success"):
        return (
            f"not rolled back: volume {plan.volume_id} is {status} on {volume.get('os-vol-host-attr:host')}; "
            "clear the failed task to resume the migration"
        )
    if status != "starting":
        return f"nothing to undo: volume {plan.volume_id} has migration_status {status}"
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    lun = _find_lun(source, plan.lun)
    if lun is None:
        raise MigrationFailed(
            f"rollback refused: the source LUN {plan.lun} is gone from {source.name}; the target on "
            f"{dest.name} is the only copy and is kept (commit the run instead)"
        )
    done = []
    if source.name == dest.name:
        if lun.get("pool") != plan.source_pool:
            source.migrate_volume(plan.volume, Destination(source.name, plan.source_pool))
            done.append(f"LUN moved back to pool {plan.source_pool}")
    else:
        done += _remove_target(plan, source, dest)
    cinder.fail_migration(plan.volume_id, reason, plan.owner)
    done.append("migration_status error")
    return "rolled back: " + ", ".join(done)


def abandon(plan: Plan, cinder: CinderApi, arrays: Arrays, reason: str) -> str:
    """An operator gives up a mirror-mode migration before its switch-over; returns what was done.

    The source has every write until then (the mirror wrote each one to it),
    so the volume goes back to it and nothing is lost. Refused with
    MigrationRefused, nothing changed, unless the volume is attachable on its
    destination and detached, its source LUN is there, and the destination's
    copy is a mirror that has not switched over (the array checks that and
    deletes its LUN in one step). Then the source's takeover export is
    released and Cinder points the volume back at the source (``error``,
    with ``reason``). In that order a failure never leaves Cinder pointing at
    a source that lacks writes; a retry after a partial abandon finds the
    target gone and the source intact, and does the rest.
    """
    volume = cinder.get_volume(plan.volume_id)
    status, host = volume.get("migration_status"), volume.get("os-vol-host-attr:host")
    if status != MIGRATING_ATTACHABLE or host != plan.dest_host:
        raise MigrationRefused(
            f"volume {plan.volume_id} is {status} on {host}: only a migration attachable on {plan.dest_host} "
            "can be abandoned"
        )
    if volume.get("status") != "available" or volume.get("attachments"):
        raise MigrationRefused(
            f"volume {plan.volume_id} is {volume.get('status')}: detach it first (its clients use the export on "
            f"{plan.dest_backend}, which goes away)"
        )
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    source_lun = _find_lun(source, plan.lun)
    if source_lun is None:
        raise MigrationRefused(f"the source LUN {plan.lun} is gone from {source.name}: there is nothing to go back to")
    done = []
    if _find_lun(dest, plan.lun) is not None:
        try:
            dest.abandon_migration_target(plan.volume)
        except Conflict as exc:
            raise MigrationRefused(f"not abandoned, nothing changed: {exc}") from None
        done.append(f"copy stopped and target LUN deleted on {dest.name}")
    _release_source(source, plan.lun)
    cinder.abandon_migration(plan.volume_id, reason, plan.owner, source_lun.get("location"))
    done.append(f"volume back on {plan.source_host}")
    log.warning("migration of volume %s abandoned: %s (%s)", plan.volume_id, ", ".join(done), reason)
    return "abandoned: " + ", ".join(done)


def _remove_target(plan: Plan, source: BackendDriver, dest: BackendDriver) -> list[str]:
    done = []
    target = _find_lun(dest, plan.lun)
    if target is not None:
        if target.get("copy"):  # only an array that takes LUNs over has a copy running
            dest.abort_migration_target(plan.volume)
            done.append(f"takeover on {dest.name} aborted")
        else:
            dest.unexport_lun(plan.lun)
            dest.delete_lun(plan.lun)
            done.append(f"target LUN deleted from {dest.name}")
    _release_source(source, plan.lun)
    return done


def describe_failure(task_id: str, exc: BaseException) -> str:
    """One line for Cinder's ``async_migration_error`` and the run's log."""
    kind = "" if isinstance(exc, (MigrationRefused, MigrationFailed, BackendError)) else f"{type(exc).__name__}: "
    return f"{task_id}: {kind}{exc}"
