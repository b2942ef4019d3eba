"""The volume_audit DAG's steps as plain functions: read, find, repair what is safe, say what is left.

``read`` reads in the order ``include/migration/audit.py`` relies on: what
each backend holds (asked of its own cinder-volume through Cinder), then
Cinder's volumes, then the runs that hold locks. Repairs are done by the
backend's own driver, through Cinder; Airflow holds no array credentials.
``repair`` reads everything again and acts only on a finding that this
second read finds too, one at a time; a repair that fails is reported and
the others go on. ``conclude`` raises ``InconsistenciesLeft`` when anything
is left for an operator, so a scheduled audit that finds something ends
failed, with each finding's action in its log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from include.backends.inventory import Cleanup, HeldVolume
from include.migration.audit import LEFT_ALONE, Finding, Repair, Snapshot, find, format_findings, owning_runs
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError, InconsistenciesLeft
from include.migration.flow import backend_of
from include.migration.inventory import volumes_and_locks

log = logging.getLogger(__name__)


class Runs(Protocol):
    """The volume_migration runs, as the audit sees and resumes them."""

    def state(self, run_id: str) -> str | None:
        """The run's state; None when there is no such run."""

    def resume(self, run_id: str, conf: dict[str, Any]) -> None:
        """Clear the run (all its tasks run again), or start it with ``conf`` when there is no such run."""


@dataclass
class World:
    """What the audit reads, and the ``host@backend`` of each backend it read (for the repairs)."""

    snapshot: Snapshot
    hosts: dict[str, str]


def read(cinder: CinderApi, runs: Runs) -> World:
    """What each backend holds, as its own cinder-volume lists it through Cinder; then Cinder's volumes; then the
    runs that hold their locks."""
    hosts = {backend_of(s["host"]): s["host"] for s in cinder.volume_services() if "@" in s.get("host", "")}
    backends = sorted(hosts)
    luns: dict[str, list[dict[str, Any]]] = {}
    not_audited: dict[str, str] = {}
    listed: set[str] = set()
    made_here: set[str] = set()
    for backend in backends:
        try:
            inventory = cinder.backend_inventory(hosts[backend])
        except CinderError as exc:
            not_audited[backend] = f"its volume service did not list what it holds: {exc}"
            continue
        luns[backend] = [HeldVolume.from_json(held).to_json() for held in inventory.get("volumes") or []]
        made_here.update(inventory.get("made_here") or [])  # Cinder's word: not said, nothing is (left alone)
        if not inventory.get("repairable"):
            listed.add(backend)
    volumes, locks = volumes_and_locks(cinder)  # a volume listed as migrating has its lock
    for volume in volumes:
        host = volume.get("os-vol-host-attr:host") or ""
        backend = backend_of(host) if "@" in host else None
        if backend and backend not in backends:
            not_audited.setdefault(backend, f"no cinder-volume service reports it (volume {volume['id']} is on it)")
    states = {run_id: runs.state(run_id) for run_id in owning_runs(locks.values())}
    names = {backend: backend for backend in luns}
    return World(Snapshot(luns, names, not_audited, volumes, states, frozenset(listed), locks, frozenset(made_here)),
                 hosts)  # fmt: skip


def audit(cinder: CinderApi, runs: Runs) -> list[Finding]:
    """Read and find; the findings go to the log as a table."""
    findings = find(read(cinder, runs).snapshot)
    log.info("%s", format_findings(findings))
    return findings


def repair(findings: list[Finding], asked: bool, cinder: CinderApi, runs: Runs) -> str:
    """Repair (if ``asked``) the safe findings that a new read finds again, then ``conclude``."""
    return conclude(findings, _repair(findings, cinder, runs) if asked else {})


def _repair(findings: list[Finding], cinder: CinderApi, runs: Runs) -> dict[str, tuple[bool, str]]:
    """Finding's key -> (resolved, what was done or why not). What a new read does not find is resolved already."""
    world = read(cinder, runs)
    again = set(find(world.snapshot))
    done: dict[str, tuple[bool, str]] = {}
    for finding in sorted((f for f in findings if f.repair), key=lambda f: list(Repair).index(f.repair)):
        if finding not in again:
            done[finding.key] = (True, "not found again: left alone")
            continue
        try:
            done[finding.key] = (True, _apply(finding, world, cinder, runs))
        except CinderError as exc:
            done[finding.key] = (False, f"repair failed: {exc}")
        log.info("repair of %s: %s", finding.key, done[finding.key][1])
    return done


CLEANUPS = {Repair.ABORT_TAKEOVER: Cleanup.ABORT_TAKEOVER, Repair.RELEASE_EXPORT: Cleanup.RELEASE_EXPORT,
            Repair.DELETE_LUN: Cleanup.DELETE}  # fmt: skip


def _apply(finding: Finding, world: World, cinder: CinderApi, runs: Runs) -> str:
    if finding.repair is Repair.RESUME_RUN:
        runs.resume(finding.run_id, finding.conf or {})
        return f"run {finding.run_id} cleared (or triggered again): it resumes the migration"
    host = world.hosts[finding.array]  # the backend's own driver cleans up, through Cinder
    return cinder.release_held(host, finding.lun, CLEANUPS[finding.repair])


def conclude(findings: list[Finding], repaired: dict[str, tuple[bool, str]]) -> str:
    """What the audit leaves: a line when nothing is; InconsistenciesLeft listing each finding not resolved.
    What it leaves alone by design (``LEFT_ALONE``: foreign LUNs) is said, and fails nothing."""
    alone = [f for f in findings if f.kind in LEFT_ALONE]
    findings = [f for f in findings if f.kind not in LEFT_ALONE]
    left = [f for f in findings if not repaired.get(f.key, (False, ""))[0]]
    also = f" ({len(alone)} foreign LUNs left alone: {', '.join(f.subject for f in alone)})" if alone else ""
    if not left:
        return (f"audit: {len(findings)} found, all resolved" if findings else "audit: nothing to do") + also
    lines = [f"{f.kind} {f.subject}: {f.detail} -> {f.action}" for f in left]
    raise InconsistenciesLeft(f"{len(left)} of {len(findings)} inconsistencies left for an operator{also}:\n" +
                              "\n".join(lines))  # fmt: skip
