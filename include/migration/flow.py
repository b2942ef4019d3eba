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
* ``host_copy``: the generic path, through Cinder as its own generic
  migration: a destination volume made by Cinder, both volumes opened on
  this host from the connections their cinder-volumes give (os-brick, or
  libnbd for NBD), copied, resumable from a checkpoint tied to the
  destination volume;
* ``commit``: Cinder's finish, which refuses unless the target is complete:
  for a takeover the destination's cinder-volume checks its copy, for a host
  copy Cinder's own migration completion swaps the volumes; only then is the
  source deleted, by its own driver, and the volume ``success``;
* ``rollback``: before the volume was attachable, mark ``error`` with the
  reason (Cinder deletes a host copy's destination volume; a driver step that
  failed left its source as it was); after it, never delete data.

The callers pass ``cinder`` (a ``CinderApi``: ``plugins.hooks.cinder.CinderHook``
or any object with its methods): every call that touches a backend goes
through Cinder to the cinder-volume that owns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pathlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from include.backends.base import MiB, MigrationProgress
from include.backends.errors import BackendError
from include.cinder_plugin.names import IN_FLIGHT, MIGRATING_ATTACHABLE, SourceStep, TargetStep
from include.connectors import connection_type, open_volume, unattachable, worker_connector
from include.host_copy import host_copy as copy_through_host
from include.migration.cinder_api import CinderApi
from include.migration.deadlines import LEGACY_COPY_TIMEOUT_S, deadline_text, seconds_left
from include.migration.errors import CinderError, CopyDeadlinePassed, MigrationFailed, MigrationRefused

log = logging.getLogger(__name__)

# migration_status while a run's lock holds; the volume may be on its destination already (attachable there, or
# moved by its source driver and not committed yet)
LOCK_STATUSES = frozenset(IN_FLIGHT)
# step 1's outcome is read after 0.05 s, then twice as long each time up to 0.2 s: most drivers answer at once
SOURCE_STEP_FIRST_POLL_S, SOURCE_STEP_POLL_S = 0.05, 0.2
# a driver step still running after this long is asked again (a request lost with its message, say)
STEP_REASK_S = 60.0
# a host copy's destination volume must be available within this long (Cinder's own migration waits as long)
TARGET_CREATE_TIMEOUT_S = 300.0


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
    copy_timeout_s: int = LEGACY_COPY_TIMEOUT_S  # how long the copy may take (deadlines.copy_timeout)
    volume_type_id: str | None = None
    copy_deadline: float | None = None  # epoch seconds: the copy must be complete then (set once, kept with the lock)
    copy_deadline_basis: str = ""  # how copy_timeout_s was found, for the log and the operator

    def deadline(self, now: float) -> float:
        """When the copy must be complete (epoch seconds): the lock's deadline, else ``copy_timeout_s`` from ``now``
        (a plan made before deadlines were kept)."""
        return self.copy_deadline if self.copy_deadline is not None else now + self.copy_timeout_s

    def deadline_passed(self, now: float) -> str | None:
        """Why the copy may not go on at ``now`` (epoch seconds), or None while its deadline is ahead."""
        deadline = self.deadline(now)
        if now < deadline:
            return None
        return f"the copy deadline {deadline_text(deadline)} has passed ({self.copy_deadline_basis or 'given'})"

    @property
    def source_backend(self) -> str:
        return backend_of(self.source_host)

    @property
    def dest_backend(self) -> str:
        return backend_of(self.dest_host)

    @property
    def speed_bps(self) -> int | None:
        return None if self.speed_mib is None else self.speed_mib * MiB

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dest_backend": self.dest_backend}  # dest_backend: for wait_for_copy's template

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ---- the data paths ---------------------------------------------------------------------------
def source_driver_migrate(
    plan: Plan, cinder: CinderApi, *, poll_s: float = SOURCE_STEP_POLL_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:  # fmt: skip
    """Blueprint step 1: the source backend's cinder-volume runs its own driver's ``migrate_volume`` toward
    ``plan.dest_host`` (``os-async_migration_source_migrate``); this waits for what it did (a look after 0.05 s,
    then ever less often, every ``poll_s`` at most), until the plan's copy deadline. Returns ``{"moved",
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
    look after 0.05 s, then ever less often, every ``poll_s`` at most; CopyDeadlinePassed at the plan's copy
    deadline. ``again`` asks for the step once more every ``STEP_REASK_S`` while it runs (for a request lost on its
    way: cinder-volume does nothing for a duplicate)."""
    now, wall = clock(), time.time()
    deadline, asked, pause = now + seconds_left(plan.deadline(wall), wall), now, min(SOURCE_STEP_FIRST_POLL_S, poll_s)
    while view.get(step) == SourceStep.RUNNING:
        if clock() >= deadline:
            raise CopyDeadlinePassed(f"{step.replace('_', ' ')} toward {plan.dest_host} has not answered by the copy "
                                     f"deadline {deadline_text(plan.deadline(wall))}")  # fmt: skip
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


def checkpoint_path(state_dir: pathlib.Path, plan: Plan, target_id: str) -> pathlib.Path:
    """Where the host copy into the destination volume ``target_id`` keeps its checkpoint (one per destination
    volume: a destination made again starts from 0)."""
    digest = hashlib.sha256(f"{plan.owner}|{plan.source_host}|{plan.dest_host}|{target_id}".encode()).hexdigest()
    return pathlib.Path(state_dir) / f"{plan.lun}.{digest[:16]}.checkpoint"


def attach_problems(source_protocol: str, dest_protocol: str) -> list[str]:
    """Why this host cannot open the volumes of a host copy between pools reporting these ``storage_protocol``s."""
    problems = []
    for role, protocol in (("source", source_protocol), ("destination", dest_protocol)):
        why = unattachable(connection_type(protocol))
        if why:
            problems.append(f"the {role} pool's protocol {protocol or '(none reported)'} cannot be opened here: {why}")
    return problems


def pool_protocols(plan: Plan, cinder: CinderApi) -> tuple[str, str]:
    """The ``storage_protocol`` the scheduler reports for the plan's source and destination pools."""
    caps = {pool["name"]: pool.get("capabilities") or {} for pool in cinder.pool_details()}
    return tuple(str(caps.get(host, {}).get("storage_protocol") or "") for host in (plan.source_host, plan.dest_host))


def host_copy(
    plan: Plan, cinder: CinderApi, state_dir: pathlib.Path,
    progress: Callable[[MigrationProgress], None] | None = None, *, slice_s: float | None = None,
    connector: dict[str, Any] | None = None, poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:  # fmt: skip
    """The generic path, as Cinder's own generic migration makes it, with the copy on this host.

    Cinder makes the destination volume on the destination pool (once: a retry finds it; one in error is made
    again), the cinder-volume of each volume opens a connection for this host's ``connector``, this opens both
    (``include.connectors``) and copies (sparse, throttled by ``plan.speed_mib``, resuming the checkpoint of the
    same destination volume; ``progress`` every few seconds), then records with Cinder that the destination
    holds the whole copy and closes both connections. ``commit`` then has Cinder complete the migration.

    A copy runs for ``slice_s`` seconds at most, and never past the plan's copy deadline: then it stops cleanly
    (flushed, checkpoint saved, connections closed) and returns ``complete`` False; the caller calls again to go
    on from the checkpoint (the DAG reschedules the task). A copy not complete at its deadline, or called after
    it, raises CopyDeadlinePassed (no retry; the rollback deletes the destination volume).

    MigrationRefused, nothing made, when this host cannot open a pool's protocol; MigrationFailed when Cinder
    could not make the destination volume; BackendError when a read or write failed (the connections are closed:
    a retry resumes from the checkpoint). Returns ``{"complete", "bytes_copied", "offset", "copy_target"}``.
    """
    late = plan.deadline_passed(time.time())
    if late:
        raise CopyDeadlinePassed(f"host copy of volume {plan.volume_id}: {late}")
    problems = attach_problems(*pool_protocols(plan, cinder))
    if problems:
        raise MigrationRefused(f"no host copy of volume {plan.volume_id}: {'; '.join(problems)}")
    target_id = _copy_target(plan, cinder, poll_s, clock, sleep)
    checkpoint = checkpoint_path(state_dir, plan, target_id)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint.parent.glob(f"{plan.lun}.*.checkpoint"):
        if stale != checkpoint:  # an earlier destination volume's: it is gone
            stale.unlink(missing_ok=True)
    connector = connector or worker_connector()
    try:
        source_info = cinder.copy_connect(plan.volume_id, "source", connector, plan.owner)
        target_info = cinder.copy_connect(plan.volume_id, "target", connector, plan.owner)
        with (
            open_volume(source_info, f"volume {plan.volume_id} on {plan.source_host}", writable=False) as source,
            open_volume(target_info, f"volume {target_id} on {plan.dest_host}") as target,
        ):
            deadline = plan.deadline(time.time())
            stop_at = deadline if slice_s is None else min(deadline, time.time() + slice_s)
            result = copy_through_host(source, target, checkpoint=checkpoint, speed_bps=plan.speed_bps or 0,
                                       progress=progress, stop_at=stop_at)  # fmt: skip
    except BaseException:
        with contextlib.suppress(CinderError):  # closed by Cinder at the end anyway; the copy's error matters
            cinder.copy_disconnect(plan.volume_id, plan.owner)
        raise
    done = {"complete": result.complete, "bytes_copied": result.bytes_written, "offset": result.offset,
            "copy_target": target_id}  # fmt: skip
    cinder.copy_disconnect(plan.volume_id, plan.owner, copied=result.complete)
    if result.complete:
        log.info("host copy of volume %s into volume %s: %s", plan.volume_id, target_id, result)
        return done
    share = f"{100 * result.offset / plan.size:.1f}% copied" if plan.size else "copied"
    late = plan.deadline_passed(time.time())
    if late:
        raise CopyDeadlinePassed(f"host copy of volume {plan.volume_id}: {late}, {share}")
    log.info("host copy of volume %s: slice ended at %s, %s; the next one goes on from the checkpoint",
             plan.volume_id, result.offset, share)  # fmt: skip
    return done


def _copy_target(plan: Plan, cinder: CinderApi, poll_s: float, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> str:  # fmt: skip
    """The id of the host copy's destination volume, once Cinder made it ``available``."""
    try:
        target = cinder.copy_target(plan.volume_id, plan.owner, plan.volume_type_id)
    except CinderError as exc:
        if exc.status not in (400, 409):
            raise
        raise MigrationFailed(f"Cinder made no destination volume on {plan.dest_host}: {exc}") from None
    target_id, status = target["volume_id"], target["status"]
    deadline = clock() + TARGET_CREATE_TIMEOUT_S
    while status != "available":
        if status == "error":
            raise MigrationFailed(f"Cinder could not create the destination volume {target_id} on {plan.dest_host} "
                                  "(see its cinder-volume's log); a retry makes it again")  # fmt: skip
        if clock() >= deadline:
            raise MigrationFailed(f"the destination volume {target_id} on {plan.dest_host} is still {status} after "
                                  f"{TARGET_CREATE_TIMEOUT_S:.0f} s")  # fmt: skip
        sleep(poll_s)
        status = cinder.get_volume(target_id)["status"]
    return target_id


# ---- the end: commit or roll back -------------------------------------------------------------
def _moved_by_a_driver(view: dict[str, Any]) -> str | None:
    """Which of the blueprint's driver steps put the volume on its destination, as Cinder recorded it in the
    migration's ``view``: "source" (step 1 moved it, complete), "target" (step 2 took it over), or None (neither:
    the host copy's path)."""
    if view.get("source_step") == SourceStep.MOVED:
        return "source"
    if view.get("target_step") in (TargetStep.ATTACHABLE, TargetStep.MOVED):
        return "target"
    return None


def commit(plan: Plan, cinder: CinderApi) -> None:
    """Have Cinder finish the migration: it checks the target is complete and only then deletes the source.

    For a takeover, the destination's cinder-volume checks its copy is complete and the source's own driver
    deletes the source; for a host copy, Cinder's migration completion swaps the volumes (the volume keeps its
    id; the destination driver sets its own metadata) and deletes the source through its driver; a volume the
    source driver moved is complete already. Refused (MigrationFailed, the source kept) while the target is not
    complete. Idempotent: a volume already ``success`` on the destination is what a retry expects.
    """
    volume = cinder.get_volume(plan.volume_id)
    if volume.get("migration_status") == "success" and volume.get("os-vol-host-attr:host") == plan.dest_host:
        log.info("volume %s is already migrated to %s", plan.volume_id, plan.dest_host)
        return
    by = _moved_by_a_driver(cinder.migration(plan.volume_id)) or "host copy"
    try:
        cinder.finish_migration(plan.volume_id, plan.dest_host, None, plan.volume_type_id)
    except CinderError as exc:
        if exc.status != 409:
            raise
        raise MigrationFailed(f"not committed, the source is kept: {exc}") from None
    log.info("volume %s migrated to %s (%s)", plan.volume_id, plan.dest_host, by)


def rollback(plan: Plan | None, cinder: CinderApi, reason: str) -> str:
    """Undo a migration that failed before the volume became attachable; returns what was done.

    Nothing is deleted once the volume is attachable (clients may have written to the target only) or once a
    driver moved it: the run is then resumed, not rolled back. Nothing is touched when ``plan`` is None
    (validation failed: no lock). Otherwise Cinder marks the volume ``error`` with ``reason`` and deletes a host
    copy's destination volume; the source was never changed.
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
    view = cinder.migration(plan.volume_id)
    by = _moved_by_a_driver(view)
    if by is not None:
        return (f"not rolled back: the {by} driver moved volume {plan.volume_id} to {plan.dest_host}; clear the "
                "failed task to commit the migration")  # fmt: skip
    target = view.get("copy_target")
    cinder.fail_migration(plan.volume_id, reason, plan.owner)
    done = ["migration_status error"]
    if target:
        done.append(_fate_of_target(cinder, target))
    return "rolled back: " + ", ".join(done)


def _fate_of_target(cinder: CinderApi, target: str) -> str:
    """What became of a host copy's destination volume after the migration failed (Cinder deletes it unless it
    was still being created)."""
    try:
        status = cinder.get_volume(target)["status"]
    except CinderError as exc:
        if exc.status != 404:
            raise
        status = "deleted"
    if status in ("deleted", "deleting"):
        return f"the host copy's destination volume {target} deleted by Cinder"
    return (f"the host copy's destination volume {target} is {status}, not deleted: delete it once it settles "
            "(the audit names it)")  # fmt: skip


def abandon(plan: Plan, cinder: CinderApi, reason: str) -> str:
    """An operator gives up a takeover before its switch-over; returns what was done.

    Refused with MigrationRefused, nothing changed, unless the volume is attachable on its destination and
    detached, and the destination's driver finds that the source still has every write (a mirror that has not
    switched over: it checks that and drops its copy in one step; an RBD live migration: Ceph's abort writes them
    back). Cinder's abandon does it all through the
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


def describe_failure(task_id: str, exc: BaseException) -> str:
    """One line for Cinder's ``async_migration_error`` and the run's log."""
    kind = "" if isinstance(exc, (MigrationRefused, MigrationFailed, BackendError)) else f"{type(exc).__name__}: "
    return f"{task_id}: {kind}{exc}"
