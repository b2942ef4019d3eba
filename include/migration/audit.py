"""The audit's decisions: what is inconsistent between Cinder, the arrays and the migration runs, and what fixes it.

``find(snapshot)`` is a plain function of what was read (``Snapshot``: every
array's LUNs, read first, then Cinder's volumes, then the state of each run
that holds a volume's lock) and returns ``Finding`` s, each with the action
that fixes it and, for the cases that are safe to repair without an
operator, the ``Repair`` that ``volume_audit`` applies when asked:

- a **stuck volume**: locked for a migration (``maintenance``, ``starting``,
  ``migrating_attachable``) with no live run. Its run failed: clear it (it
  resumes, the README's table says from where); its run is gone: trigger it
  again under the same run id (it takes its own lock back and resumes).
  A lock that no run of ours holds is left to an operator.
- an **orphan LUN**: a ``volume-<id>`` LUN on an array where no volume is
  or goes. Deleted only when nothing can be lost: no volume has that LUN
  name, or the volume is settled and its own array holds its LUN.
- a **foreign LUN**: a LUN named like Cinder's that this Cinder did not make
  (no volume of its has or had that id, or it was unmanaged: the
  extension's ``made_here``, from Cinder's own records): another
  deployment's on shared storage, or made by hand. Reported, left alone,
  never repaired, and it fails no audit. Neither orphan nor unowned
  takeover is said of it; Cinder itself refuses to clean it up.
- an **unowned takeover**: a copy running into a LUN that no volume points
  to (aborted on the same terms), or a volume's LUN still exported for a
  takeover while no migration runs (the export is released).
- a **host without its LUN**: a volume whose host's array does not hold its
  LUN; the finding says where the LUN is. Never repaired: which copy is
  right is an operator's call.
- **not audited**: a backend whose volume service did not list what it
  holds (down, or its driver lists nothing); nothing on it is judged.

What each backend holds comes from its own cinder-volume, through Cinder
(``GET /os-async-migration-backends/{host@backend}/inventory``): a driver
that is an ``InventoryDriver`` (the lab arrays') lists everything, with the
takeovers in flight, and cleans up the leftovers the audit repairs; any
other (Ceph behind Cinder's RBD driver, any stock driver) is listed through
its manageable-volumes listing, and its findings are reported with their
action but never repaired: the audit changes nothing behind a driver that
does not offer it.

Reading LUNs before volumes keeps migrations in flight out of the findings:
a migration locks its volume before it makes a LUN anywhere, so every LUN
read belongs to a volume or lock that the later read sees. A migration
that ends between the two reads can still look inconsistent once, which is
why a repair acts only on what a second, later read finds again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from include.cinder_plugin.names import SETTLED_MIGRATION_STATUSES, VOLUME_LUN
from include.migration.flow import LOCK_STATUSES, backend_of, lun_of
from include.migration.planner import columns
from include.migration.steps import MIGRATION_DAG, owner_run

LIVE_RUN_STATES = frozenset({"queued", "running"})
NO_LUN_YET = frozenset({"creating", "error", "deleting", "error_deleting"})  # volume statuses without a LUN to check


class Kind(enum.StrEnum):
    STUCK_VOLUME = "stuck_volume"
    ORPHAN_LUN = "orphan_lun"
    UNOWNED_TAKEOVER = "unowned_takeover"
    HOST_WITHOUT_LUN = "host_without_lun"
    NOT_AUDITED = "not_audited"
    FOREIGN_LUN = "foreign_lun"


# what the audit reports and leaves alone: none of these is an inconsistency of this deployment's (none fails it)
LEFT_ALONE = frozenset({Kind.FOREIGN_LUN})


class Repair(enum.StrEnum):
    """What ``volume_audit`` does to a finding when its param ``repair`` is on, in this order."""

    RESUME_RUN = "resume_run"  # clear the lock's run, or trigger it again under its run id if it is gone
    ABORT_TAKEOVER = "abort_takeover"  # stop the copy and delete the LUN (abort_migration_target)
    RELEASE_EXPORT = "release_export"  # drop the source LUN's takeover export
    DELETE_LUN = "delete_lun"


@dataclass(frozen=True)
class Finding:
    kind: Kind
    subject: str  # the volume id, or array/LUN
    detail: str  # what is wrong
    action: str  # what fixes it
    repair: Repair | None = None  # what repair does; None: left to an operator
    array: str | None = None
    lun: str | None = None
    size: int | None = None
    run_id: str | None = None
    conf: dict[str, Any] | None = field(default=None, compare=False)  # the run's conf when it is triggered again

    @property
    def key(self) -> str:
        """Names the finding among the others: its kind and subject."""
        return f"{self.kind} {self.subject}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        repair = data.get("repair")
        return cls(**{**data, "kind": Kind(data["kind"]), "repair": Repair(repair) if repair else None})


@dataclass(frozen=True)
class Snapshot:
    luns: Mapping[str, list[dict[str, Any]]]  # backend -> what it holds (``HeldVolume`` JSON)
    backends: Mapping[str, str]  # Cinder backend -> the name its volumes are listed under in ``luns`` (those read)
    not_audited: Mapping[str, str]  # Cinder backend -> why it was not read
    volumes: list[dict[str, Any]]  # Cinder's volumes, as an admin lists them
    runs: Mapping[str, str | None]  # run id of a MIGRATION_DAG run that holds a lock -> its state (None: no such run)
    listed_by_cinder: frozenset[str] = frozenset()  # backends listed by manageable volumes: reported, never repaired
    locks: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # volume id -> its migration's view
    # the LUN names this Cinder made (it has or had their volume, not unmanaged); any other is left alone
    made_here: frozenset[str] = frozenset()

    def lock(self, volume: dict[str, Any]) -> dict[str, Any]:
        """The extension's lock on ``volume`` (``source_host``, ``dest_host``, ``owner``); {} when none."""
        return self.locks.get(volume["id"]) or {}


def owning_runs(locks: Iterable[dict[str, Any]]) -> list[str]:
    """The MIGRATION_DAG runs whose state the audit needs: those that hold a volume's lock."""
    found = []
    for lock in locks:
        run = owner_run(lock.get("owner"))
        if run and run[0] == MIGRATION_DAG:
            found.append(run[1])
    return sorted(set(found))


def _host(volume: dict[str, Any]) -> str:
    return volume.get("os-vol-host-attr:host") or ""


def _migrating(volume: dict[str, Any]) -> bool:
    return volume.get("migration_status") not in SETTLED_MIGRATION_STATUSES


def _locked(volume: dict[str, Any]) -> bool:
    return volume.get("status") == "maintenance" or volume.get("migration_status") in LOCK_STATUSES


class _Places:
    """Where each volume's LUN is, and where it is expected (its host's array; while migrating, both ends)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.held = {(array, lun["name"]) for array, luns in snapshot.luns.items() for lun in luns}
        self.expected: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_lun: dict[str, dict[str, Any]] = {}
        for volume in snapshot.volumes:
            lun = lun_of(volume)
            self.by_lun[lun] = volume
            for array in self.arrays_of(volume):
                self.expected[(array, lun)] = volume

    def array(self, host: str) -> str | None:
        return self.snapshot.backends.get(backend_of(host)) if "@" in host else None

    def arrays_of(self, volume: dict[str, Any]) -> set[str]:
        hosts = [_host(volume)]
        if _migrating(volume):
            lock = self.snapshot.lock(volume)
            hosts += [lock.get("source_host") or "", lock.get("dest_host") or ""]
        return {a for a in map(self.array, hosts) if a}

    def safe_to_remove(self, lun: str) -> bool:
        """Nothing is lost without this LUN: no volume has its name, or its volume is settled on an array that
        holds it."""
        volume = self.by_lun.get(lun)
        if volume is None:
            return True
        home = self.array(_host(volume))
        return not _migrating(volume) and not _locked(volume) and home is not None and (home, lun) in self.held


def find(snapshot: Snapshot) -> list[Finding]:
    """Every inconsistency in ``snapshot``, sorted by kind and subject."""
    places = _Places(snapshot)
    found = [*_not_audited(snapshot), *_stuck(snapshot), *_hosts_without_lun(snapshot, places)]
    found += _stray_luns(snapshot, places)
    return sorted(found, key=lambda f: (list(Kind).index(f.kind), f.subject))


def _not_audited(snapshot: Snapshot) -> Iterable[Finding]:
    for backend, why in sorted(snapshot.not_audited.items()):
        yield Finding(Kind.NOT_AUDITED, backend, f"backend {backend} was not audited: {why}",
                      "make its volume service answer (its driver lists what the backend holds), then audit "
                      "again")  # fmt: skip


def _stuck(snapshot: Snapshot) -> Iterable[Finding]:
    for volume in snapshot.volumes:
        if not _locked(volume):
            continue
        vid, status = volume["id"], f"{volume.get('status')}/{volume.get('migration_status')}"
        lock = snapshot.lock(volume)
        run = owner_run(lock.get("owner"))
        if not _migrating(volume) or not lock:
            yield Finding(Kind.STUCK_VOLUME, vid, f"volume {vid} is {status} with no migration lock",
                          f"find who put it in {volume.get('status')}; if nobody, cinder reset-state --state "
                          "available")  # fmt: skip
        elif run is None or run[0] != MIGRATION_DAG:
            yield Finding(Kind.STUCK_VOLUME, vid, f"volume {vid} is {status}, locked by {lock.get('owner')!r}",
                          "not a volume_migration run: finish or fail it where it was started "
                          "(os-async_migration_fail with its owner)")  # fmt: skip
        elif (state := snapshot.runs.get(run[1])) not in LIVE_RUN_STATES:
            conf = {"volume_id": vid, "dest_host": lock.get("dest_host")}
            if state is None:
                detail = f"volume {vid} is {status}, locked by run {run[1]}, which does not exist"
                action = f"trigger {MIGRATION_DAG} with run id {run[1]} and conf {conf}: it takes its lock back"
            else:
                detail = f"volume {vid} is {status}, locked by run {run[1]}, which is {state}"
                action = f"clear run {run[1]} of {MIGRATION_DAG}"
            yield Finding(Kind.STUCK_VOLUME, vid, detail, f"{action} and resumes the migration",
                          Repair.RESUME_RUN if lock.get("dest_host") else None, run_id=run[1], conf=conf)  # fmt: skip


def _hosts_without_lun(snapshot: Snapshot, places: _Places) -> Iterable[Finding]:
    for volume in snapshot.volumes:
        host, lun = _host(volume), lun_of(volume)
        array = places.array(host)
        if volume.get("status") in NO_LUN_YET or array is None or (array, lun) in places.held:
            continue
        elsewhere = sorted(a for a in snapshot.luns if (a, lun) in places.held)
        where = f"the LUN is on {', '.join(elsewhere)}" if elsewhere else "no array audited holds it"
        action = (
            "check that copy, then point the volume at it (finish or roll back its migration, or "
            "cinder-manage volume update_host)"
            if elsewhere
            else "restore the volume from a backup, or delete it"
        )
        yield Finding(Kind.HOST_WITHOUT_LUN, volume["id"],
                      f"volume {volume['id']} is on {host}, but array {array} has no LUN {lun}; {where}",
                      action, array=array, lun=lun)  # fmt: skip


def _stray_luns(snapshot: Snapshot, places: _Places) -> Iterable[Finding]:
    for array, luns in sorted(snapshot.luns.items()):
        for lun in luns:
            name = lun["name"]
            if not VOLUME_LUN.fullmatch(name):
                continue  # not a LUN of Cinder's
            subject, size = f"{array}/{name}", lun.get("size")
            owner = places.expected.get((array, name))
            if owner is None and name not in snapshot.made_here:
                copying = " (an array copies into it)" if lun.get("copying") else ""
                yield Finding(Kind.FOREIGN_LUN, subject, f"LUN {name} on {array}{copying} is named like a Cinder "
                              "volume's, but this Cinder did not make it: no volume of its has or had that id, or "
                              "it was unmanaged", "left alone: another deployment's or made by hand; whoever made "
                              "it decides", None, array, name, size)  # fmt: skip
            elif owner is None:
                # no Cinder volume points here: no attachment can use it
                safe = places.safe_to_remove(name) and array not in snapshot.listed_by_cinder
                volume = places.by_lun.get(name)
                whose = f"volume {volume['id']} is on {_host(volume)}" if volume else "no volume has this LUN"
                if lun.get("copying"):
                    yield Finding(Kind.UNOWNED_TAKEOVER, subject,
                                  f"array {array} copies into LUN {name}, which no volume points to ({whose})",
                                  f"abort the takeover on {array} (its copy stops, the LUN is deleted)",
                                  Repair.ABORT_TAKEOVER if safe else None, array, name, size)  # fmt: skip
                else:
                    exported = " (exported: the export goes too)" if lun.get("exported") else ""
                    yield Finding(Kind.ORPHAN_LUN, subject, f"LUN {name} on {array} belongs to no volume here "
                                  f"({whose}){exported}", f"delete LUN {name} from {array}",
                                  Repair.DELETE_LUN if safe else None, array, name, size)  # fmt: skip
            elif lun.get("lent_to") and not _migrating(owner):
                by = lun["lent_to"]
                yield Finding(Kind.UNOWNED_TAKEOVER, subject,
                              f"LUN {name} on {array} is exported for a takeover by {by}, but volume {owner['id']} "
                              f"is not migrating", f"release the takeover export of {name} on {array}",
                              Repair.RELEASE_EXPORT, array, name, size)  # fmt: skip


def format_findings(findings: list[Finding]) -> str:
    """The findings as a table for the task log, or a line saying the lab is consistent."""
    if not findings:
        return "audit: Cinder, the arrays and the migration runs agree: nothing to do"
    rows = [("kind", "subject", "what", "action", "repair")]
    rows += [(f.kind, f.subject, f.detail, f.action, f.repair or ("left alone" if f.kind in LEFT_ALONE else "operator"))
             for f in findings]  # fmt: skip
    alone = sum(f.kind in LEFT_ALONE for f in findings)
    return (f"audit: {len(findings) - alone} inconsistencies, {alone} foreign LUNs left alone\n"
            + "\n".join(columns(rows)))  # fmt: skip
