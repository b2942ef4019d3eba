"""The steps of one volume migration, as plain functions (no Airflow here).

Each function is one task of ``dags/volume_migration.py`` and is safe to run
again after a retry or a dead worker:

* ``validate_and_lock`` (in ``validation.py``): refuse bad requests with one
  clear message before anything changes, then lock the volume in Cinder
  (``os-async_migration_begin``, owned by the run, so the same run may lock
  again and no other run can);
* ``source_driver_migrate``: blueprint step 1, run by the source backend's
  cinder-volume (its driver's own ``migrate_volume``), asked through Cinder;
* ``target_takeover``: blueprint step 2, run by the destination backend's
  cinder-volume (its driver's ``migrate_volume_target``), asked through
  Cinder; a takeover that answers async leaves the volume attachable on the
  destination while it copies;
* ``host_copy``: the generic path, resumable from its checkpoint;
* ``commit``: check the target is complete, only then delete the source LUN,
  and mark ``success`` (for a takeover, Cinder's finish does both through the
  destination's and the source's cinder-volume);
* ``rollback``: before the volume was attachable, remove what the run made on
  the target and mark ``error`` with the reason; after it, never delete data.

The callers pass ``cinder`` (a ``CinderApi``: ``plugins.hooks.cinder.CinderHook``
or any object with its methods) and ``arrays``: a function from a Cinder backend name to the
``BackendDriver`` that serves it.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from include.backends.base import BackendDriver, Destination, MiB, MigrationProgress, Volume
from include.backends.errors import BackendError, NotFound
from include.cinder_plugin.names import MIGRATING_ATTACHABLE, SourceStep, TargetStep
from include.host_copy import host_copy as copy_through_host
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError, MigrationFailed, MigrationRefused

log = logging.getLogger(__name__)

# migration_status while a run's lock holds; the volume may be on its destination already (attachable there, or
# moved by its source driver and not committed yet)
LOCK_STATUSES = frozenset({"starting", MIGRATING_ATTACHABLE})
# step 1's outcome is read after 0.05 s, then twice as long each time up to 0.2 s: most drivers answer at once
SOURCE_STEP_FIRST_POLL_S, SOURCE_STEP_POLL_S = 0.05, 0.2
# a driver step still running after this long is asked again (a request lost with its message, say)
STEP_REASK_S = 60.0


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


def find_lun(array: BackendDriver, name: str) -> dict[str, Any] | None:
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
def source_driver_migrate(
    plan: Plan, cinder: CinderApi, *, poll_s: float = SOURCE_STEP_POLL_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:  # fmt: skip
    """Blueprint step 1: the source backend's cinder-volume runs its own driver's ``migrate_volume`` toward
    ``plan.dest_host`` (``os-async_migration_source_migrate``); this waits for what it did (a look after 0.05 s,
    then ever less often, every ``poll_s`` at most), at most ``plan.copy_timeout_s``. Returns ``{"moved",
    "model_update"}``: a moved volume is on the destination already (Cinder applied the driver's model update) and
    stays locked until ``commit``.

    Idempotent: asked again while the driver runs, or after it moved the volume, Cinder starts nothing new and
    this waits for, or reads, the same outcome; once a takeover made the volume attachable (a cleared run), the
    answer is "not moved" without asking. MigrationFailed with the driver's reason when it failed (the
    source is as the driver left it), or when it has not answered in time.
    """
    if cinder.migration(plan.volume_id).get("migration_status") == MIGRATING_ATTACHABLE:
        log.info("volume %s is attachable on %s already (a cleared run): its source driver had not moved it",
                 plan.volume_id, plan.dest_host)  # fmt: skip
        return {"moved": False, "model_update": None}
    view = _outcome(plan, cinder, "source_step", cinder.source_migrate(plan.volume_id, plan.owner), poll_s, clock,
                    sleep)  # fmt: skip
    outcome = view.get("source_step") or "no outcome recorded"
    log.info("source driver of %s, asked to move %s to %s: %s", plan.source_backend, plan.volume_id, plan.dest_host,
             outcome)  # fmt: skip
    if outcome in (SourceStep.MOVED, SourceStep.NOT_MOVED):
        return {"moved": outcome == SourceStep.MOVED, "model_update": None}
    raise MigrationFailed(f"the source driver of {plan.source_backend} did not move the volume: {outcome}")


def _outcome(plan: Plan, cinder: CinderApi, step: str, view: dict[str, Any], poll_s: float,
             clock: Callable[[], float], sleep: Callable[[float], None],
             again: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The migration's view once its driver ``step`` (``source_step``, ``target_step``) is no longer running: a
    look after 0.05 s, then ever less often, every ``poll_s`` at most; MigrationFailed after
    ``plan.copy_timeout_s``. ``again`` asks for the step once more every ``STEP_REASK_S`` while it runs (for a
    request lost on its way: cinder-volume does nothing for a duplicate)."""
    now = clock()
    deadline, asked, pause = now + plan.copy_timeout_s, now, min(SOURCE_STEP_FIRST_POLL_S, poll_s)
    while view.get(step) == SourceStep.RUNNING:
        if clock() >= deadline:
            raise MigrationFailed(f"{step.replace('_', ' ')} toward {plan.dest_host} has not answered within "
                                  f"copy_timeout_s={plan.copy_timeout_s}")  # fmt: skip
        sleep(pause)
        pause = min(pause * 2, poll_s)
        if again is not None and clock() - asked >= STEP_REASK_S:
            log.warning("%s of volume %s still running after %.0f s: asked again", step, plan.volume_id,
                        clock() - asked)  # fmt: skip
            view, asked = again(), clock()
        else:
            view = cinder.migration(plan.volume_id)
    return view


def target_takeover(
    plan: Plan, cinder: CinderApi, *, poll_s: float = SOURCE_STEP_POLL_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:  # fmt: skip
    """Blueprint step 2: the destination backend's cinder-volume runs its driver's ``migrate_volume_target``
    (``os-async_migration_target_migrate``: the source's cinder-volume opens the source's connection for it) and
    this waits for what it did. Returns ``{"moved", "async", "model_update"}``: moved async, the volume is
    ``migrating_attachable`` on the destination already (Cinder put it there); moved sync, it is complete there
    and locked until ``commit``; not moved, nothing changed (a driver that takes nothing over, or cannot open the
    source's protocol): the host copy's turn.

    Idempotent: asked again while the driver runs or after it took the volume over, Cinder starts nothing new and
    this reads the same outcome; still running after ``STEP_REASK_S``, it is asked again (a lost request runs
    then; one that runs is not run twice). MigrationFailed with the driver's reason when it failed (cinder-volume
    aborted what it made and released the source: the source is intact).
    """
    args = {"speed_mib": plan.speed_mib, "mode": plan.copy_mode}
    view = _outcome(plan, cinder, "target_step", cinder.target_migrate(plan.volume_id, plan.owner, **args), poll_s,
                    clock, sleep, lambda: cinder.target_migrate(plan.volume_id, plan.owner, again=True))  # fmt: skip
    outcome = view.get("target_step") or "no outcome recorded"
    log.info("target driver of %s, asked to take %s over: %s", plan.dest_backend, plan.volume_id, outcome)
    if outcome == TargetStep.NOT_MOVED:
        return {"moved": False, "async": False, "model_update": None}
    if outcome in (TargetStep.ATTACHABLE, TargetStep.MOVED):
        if outcome == TargetStep.ATTACHABLE:
            log.info("volume %s is attachable on %s while its data is copied", plan.volume_id, plan.dest_host)
        return {"moved": True, "async": outcome == TargetStep.ATTACHABLE, "model_update": None}
    raise MigrationFailed(f"the target driver of {plan.dest_backend} did not take the volume over: {outcome}")


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
    ``MigrationProgress`` every few seconds. MigrationRefused (nothing done)
    when a backend has no array: the copy reads and writes through the
    arrays' NBD exports.
    """
    try:
        source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    except LookupError as exc:
        raise MigrationRefused(f"no host copy of volume {plan.volume_id} from {plan.source_host} to {plan.dest_host}: "
                               f"{exc}; the host copy reads and writes through both arrays") from None  # fmt: skip
    checkpoint = checkpoint_path(state_dir, plan)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    target = find_lun(dest, plan.lun)
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
def _target_complete(plan: Plan, dest: BackendDriver) -> str | None:
    """Why the host copy's target LUN is not complete yet, or None when it is."""
    lun = dest.get_lun(plan.lun)
    if lun.get("pool") != plan.dest_pool:
        return f"LUN {plan.lun} is in pool {lun.get('pool')} of {dest.name}, not {plan.dest_pool}"
    if lun.get("size") != plan.size:
        return f"LUN {plan.lun} on {dest.name} is {lun.get('size')} bytes, not {plan.size}"
    return None


def _has_array(arrays: Arrays, backend: str) -> bool:
    try:
        arrays(backend)
    except LookupError:
        return False
    return True


def _moved_by_a_driver(plan: Plan, cinder: CinderApi) -> str | None:
    """Which of the blueprint's driver steps put the volume on its destination, as Cinder recorded it: "source"
    (step 1 moved it, complete), "target" (step 2 took it over), or None (neither: the host copy's path)."""
    view = cinder.migration(plan.volume_id)
    if view.get("source_step") == SourceStep.MOVED:
        return "source"
    if view.get("target_step") in (TargetStep.ATTACHABLE, TargetStep.MOVED):
        return "target"
    return None


def commit(plan: Plan, cinder: CinderApi, arrays: Arrays, model_update: dict[str, Any] | None = None) -> None:
    """Check that the target is complete; only then delete the source, and mark ``success``.

    A volume a driver moved is finished through Cinder: for a takeover, the destination's cinder-volume checks
    its copy is complete and the source's own driver deletes the source (a copy not complete yet: MigrationFailed,
    the source kept). A host copy's target LUN is checked here and the source LUN deleted on its array.
    Idempotent: a source already gone and a volume already ``success`` on the destination are what a retry expects.
    """
    volume = cinder.get_volume(plan.volume_id)
    if volume.get("migration_status") == "success" and volume.get("os-vol-host-attr:host") == plan.dest_host:
        log.info("volume %s is already migrated to %s", plan.volume_id, plan.dest_host)
        return
    by = _moved_by_a_driver(plan, cinder)
    if by is not None:
        try:
            cinder.finish_migration(plan.volume_id, plan.dest_host, None, plan.volume_type_id)
        except CinderError as exc:
            if exc.status != 409:
                raise
            raise MigrationFailed(f"not committed, the source is kept: {exc}") from None
        log.info("volume %s migrated to %s by its %s driver", plan.volume_id, plan.dest_host, by)
        return
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)
    why = _target_complete(plan, dest)
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
    by = _moved_by_a_driver(plan, cinder)
    if by is not None:
        return (f"not rolled back: the {by} driver moved volume {plan.volume_id} to {plan.dest_host}; clear the "
                "failed task to commit the migration")  # fmt: skip
    if not _has_array(arrays, plan.source_backend) and not _has_array(arrays, plan.dest_backend):
        # no step can make anything on an array here, and a driver leaves its source as it was when it fails
        cinder.fail_migration(plan.volume_id, reason, plan.owner)
        return "rolled back: migration_status error (neither backend has an array in Airflow: nothing to remove)"
    source, dest = arrays(plan.source_backend), arrays(plan.dest_backend)  # LookupError: kept locked, says why
    lun = find_lun(source, plan.lun)
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


def abandon(plan: Plan, cinder: CinderApi, reason: str) -> str:
    """An operator gives up a takeover before its switch-over; returns what was done.

    Refused with MigrationRefused, nothing changed, unless the volume is attachable on its destination and
    detached, and the destination's driver finds that the source still has every write (a mirror that has not
    switched over: it checks that and drops its copy in one step). Cinder's abandon does it all through the
    cinder-volumes: the destination gives its copy up, the source's connection is terminated, and the volume goes
    back to its source (``error``, with ``reason``), so nothing is lost. A retry after a partial abandon finds the
    copy gone and does the rest.
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
    try:
        cinder.abandon_migration(plan.volume_id, reason, plan.owner)
    except CinderError as exc:
        if exc.status not in (400, 409):
            raise
        raise MigrationRefused(f"not abandoned, nothing changed: {exc}") from None
    done = f"copy given up on {plan.dest_backend}, volume back on {plan.source_host}"
    log.warning("migration of volume %s abandoned: %s (%s)", plan.volume_id, done, reason)
    return f"abandoned: {done}"


def _remove_target(plan: Plan, source: BackendDriver, dest: BackendDriver) -> list[str]:
    done = []
    target = find_lun(dest, plan.lun)
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
