"""The volume_audit DAG's steps as plain functions: read, find, repair what is safe, say what is left.

``read`` reads in the order ``include/migration/audit.py`` relies on: the
arrays' LUNs, then Cinder's volumes, then the runs that hold locks.
``repair`` reads everything again and acts only on a finding that this
second read finds too, one at a time; a repair that fails is reported and
the others go on. ``conclude`` raises ``InconsistenciesLeft`` when anything
is left for an operator, so a scheduled audit that finds something ends
failed, with each finding's action in its log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from include.backends.base import BackendDriver, GiB, Volume
from include.backends.errors import BackendError, NotFound
from include.migration.audit import Finding, Repair, Snapshot, find, format_findings, owning_runs
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError, InconsistenciesLeft
from include.migration.flow import backend_of

log = logging.getLogger(__name__)

Arrays = Callable[[str], BackendDriver]  # a Cinder backend's array adapter (LookupError: none; read through Cinder)


class Runs(Protocol):
    """The volume_migration runs, as the audit sees and resumes them."""

    def state(self, run_id: str) -> str | None:
        """The run's state; None when there is no such run."""

    def resume(self, run_id: str, conf: dict[str, Any]) -> None:
        """Clear the run (all its tasks run again), or start it with ``conf`` when there is no such run."""


@dataclass
class World:
    """What the audit reads, and the adapters of the arrays it read (by array name) for the repairs."""

    snapshot: Snapshot
    adapters: dict[str, BackendDriver]


def read(cinder: CinderApi, arrays: Arrays, runs: Runs) -> World:
    hosts = {backend_of(s["host"]): s["host"] for s in cinder.volume_services() if "@" in s.get("host", "")}
    backends = sorted(hosts)
    luns: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, str] = {}
    adapters: dict[str, BackendDriver] = {}
    not_audited: dict[str, str] = {}
    listed: set[str] = set()
    for backend in backends:
        try:
            adapter = arrays(backend)
            if adapter.name not in luns:
                luns[adapter.name] = adapter.list_luns()
        except LookupError as no_array:  # no array Connection: what the backend's own driver lists, through Cinder
            try:
                luns[backend] = listed_by_cinder(cinder, hosts[backend])
            except CinderError as exc:
                not_audited[backend] = f"{no_array}, and Cinder's manageable-volumes listing failed: {exc}"
                continue
            names[backend] = backend
            listed.add(backend)
            continue
        except BackendError as exc:
            not_audited[backend] = str(exc)
            continue
        names[backend], adapters[adapter.name] = adapter.name, adapter
    volumes = cinder.list_volumes()
    for volume in volumes:
        host = volume.get("os-vol-host-attr:host") or ""
        backend = backend_of(host) if "@" in host else None
        if backend and backend not in backends:
            not_audited.setdefault(backend, f"no cinder-volume service reports it (volume {volume['id']} is on it)")
    states = {run_id: runs.state(run_id) for run_id in owning_runs(volumes)}
    return World(Snapshot(luns, names, not_audited, volumes, states, frozenset(listed)), adapters)


def listed_by_cinder(cinder: CinderApi, host: str) -> list[dict[str, Any]]:
    """The LUNs of backend ``host`` (``host@backend``) as its driver lists them to Cinder's manage API: name, size."""
    found = []
    for entry in cinder.manageable_volumes(host):
        reference = entry.get("reference") or {}
        name = reference.get("source-name") or reference.get("source-id")
        if name:
            found.append({"name": str(name), "size": int(entry.get("size") or 0) * GiB})
    return found


def audit(cinder: CinderApi, arrays: Arrays, runs: Runs) -> list[Finding]:
    """Read and find; the findings go to the log as a table."""
    findings = find(read(cinder, arrays, runs).snapshot)
    log.info("%s", format_findings(findings))
    return findings


def repair(findings: list[Finding], asked: bool, cinder: CinderApi, arrays: Arrays, runs: Runs) -> str:
    """Repair (if ``asked``) the safe findings that a new read finds again, then ``conclude``."""
    return conclude(findings, _repair(findings, cinder, arrays, runs) if asked else {})


def _repair(findings: list[Finding], cinder: CinderApi, arrays: Arrays, runs: Runs) -> dict[str, tuple[bool, str]]:
    """Finding's key -> (resolved, what was done or why not). What a new read does not find is resolved already."""
    world = read(cinder, arrays, runs)
    again = set(find(world.snapshot))
    done: dict[str, tuple[bool, str]] = {}
    for finding in sorted((f for f in findings if f.repair), key=lambda f: list(Repair).index(f.repair)):
        if finding not in again:
            done[finding.key] = (True, "not found again: left alone")
            continue
        try:
            done[finding.key] = (True, _apply(finding, world, runs))
        except (BackendError, LookupError) as exc:
            done[finding.key] = (False, f"repair failed: {exc}")
        log.info("repair of %s: %s", finding.key, done[finding.key][1])
    return done


def _apply(finding: Finding, world: World, runs: Runs) -> str:
    if finding.repair is Repair.RESUME_RUN:
        runs.resume(finding.run_id, finding.conf or {})
        return f"run {finding.run_id} cleared (or triggered again): it resumes the migration"
    array = world.adapters[finding.array]
    if finding.repair is Repair.ABORT_TAKEOVER:
        array.abort_migration_target(Volume(finding.lun, finding.size or 0))
        return f"takeover of {finding.lun} aborted on {finding.array}: copy stopped, LUN deleted"
    if finding.repair is Repair.RELEASE_EXPORT:
        array.release_takeover(finding.lun)
        return f"takeover export of {finding.lun} released on {finding.array}"
    try:
        array.release_takeover(finding.lun)  # an orphan that another array was taking over: aborted before this
        array.unexport_lun(finding.lun)
        array.delete_lun(finding.lun)
    except NotFound:
        return f"LUN {finding.lun} was gone from {finding.array} already"
    return f"LUN {finding.lun} deleted from {finding.array}"


def conclude(findings: list[Finding], repaired: dict[str, tuple[bool, str]]) -> str:
    """What the audit leaves: a line when nothing is; InconsistenciesLeft listing each finding not resolved."""
    left = [f for f in findings if not repaired.get(f.key, (False, ""))[0]]
    if not left:
        return f"audit: {len(findings)} found, all resolved" if findings else "audit: nothing to do"
    lines = [f"{f.kind} {f.subject}: {f.detail} -> {f.action}" for f in left]
    raise InconsistenciesLeft(f"{len(left)} of {len(findings)} inconsistencies left for an operator:\n" +
                              "\n".join(lines))  # fmt: skip
