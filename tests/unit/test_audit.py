"""The audit's decisions on canned snapshots: each inconsistency found with its action and repair, and only those."""

from __future__ import annotations

import pytest

from include.backends.inventory import HeldVolume
from include.cinder_plugin.names import BACKENDS_RESOURCE, RESOURCE
from include.migration.audit import Finding, Kind, Repair, Snapshot, find, format_findings, owning_runs
from include.migration.audit_flow import conclude, read, repair
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError, InconsistenciesLeft
from include.migration.steps import run_owner

A = "11111111-1111-1111-1111-111111111111"
B = "22222222-2222-2222-2222-222222222222"
GONE = "33333333-3333-3333-3333-333333333333"
BACKENDS = {"alpha": "alpha", "beta": "beta"}


LOCK = "_lock"  # the test's own key: the lock that GET /os-async-migration lists for the volume


def volume(vid, host="lab@alpha#pool1", status="available", migration_status=None, lock=None):
    v = {"id": vid, "status": status, "migration_status": migration_status, "os-vol-host-attr:host": host}
    if lock:
        v[LOCK] = {"volume_id": vid, **lock}
    return v


def lun(vid, **extra):
    return HeldVolume(f"volume-{vid}", 1 << 30, **extra).to_json()


def lock(run_id, source="lab@beta#pool1", dest="lab@alpha#pool1", owner=None):
    return {"source_host": source, "dest_host": dest, "owner": owner or run_owner("volume_migration", run_id)}


def snapshot(luns, volumes, runs=None, not_audited=None, made_here=None):
    """By default every LUN is one this Cinder made (``made_here``)."""
    locks = {v["id"]: v[LOCK] for v in volumes if LOCK in v}
    if made_here is None:
        made_here = {held["name"] for held_here in luns.values() for held in held_here}
    return Snapshot(luns, BACKENDS, not_audited or {}, volumes, runs or {}, locks=locks, made_here=frozenset(made_here))


def test_a_consistent_cloud_gives_nothing():
    migrating = volume(B, "lab@alpha#pool1", "available", "migrating_attachable", lock("r1"))
    snap = snapshot({"alpha": [lun(A), lun(B, copying=True)], "beta": [lun(B, lent_to="alpha")]},
                    [volume(A), migrating], {"r1": "running"})  # fmt: skip
    assert find(snap) == []
    assert "nothing to do" in format_findings([])
    assert conclude([], {}) == "audit: nothing to do"


def test_other_luns_than_cinders_are_none_of_its_business():
    assert find(snapshot({"alpha": [{"name": "scratch", "size": 1}, {"name": "volume-x"}]}, [])) == []


@pytest.mark.parametrize(
    ("state", "words"),
    [("failed", "clear run r1 of volume_migration"), (None, "trigger volume_migration with run id r1")],
)
def test_a_volume_locked_by_a_run_that_is_over_or_gone_is_stuck_and_resumed(state, words):
    stuck = volume(A, "lab@alpha#pool1", "available", "migrating_attachable", lock("r1"))
    snap = snapshot({"alpha": [lun(A)], "beta": [lun(A, lent_to="alpha")]}, [stuck],
                    {"r1": state})  # fmt: skip
    [finding] = find(snap)
    assert (finding.kind, finding.subject, finding.repair, finding.run_id) == (Kind.STUCK_VOLUME, A,
                                                                               Repair.RESUME_RUN, "r1")  # fmt: skip
    assert words in finding.action and finding.conf == {"volume_id": A, "dest_host": "lab@alpha#pool1"}
    assert owning_runs([stuck[LOCK]]) == ["r1"]


def test_locks_that_are_not_a_runs_are_reported_for_an_operator():
    foreign = volume(A, "lab@beta#pool1", "maintenance", "starting", lock("x", owner="someone"))
    bare = volume(B, "lab@beta#pool1", "maintenance", None)
    found = find(snapshot({"beta": [lun(A), lun(B)]}, [foreign, bare]))
    assert [(f.kind, f.subject, f.repair) for f in found] == [
        (Kind.STUCK_VOLUME, A, None),
        (Kind.STUCK_VOLUME, B, None),
    ]
    assert "locked by 'someone'" in found[0].detail and "reset-state" in found[1].action
    assert owning_runs([foreign[LOCK]]) == []


def test_a_live_run_keeps_its_volume_out_of_the_findings():
    starting = volume(A, "lab@beta#pool1", "maintenance", "starting", lock("r1"))
    assert find(snapshot({"beta": [lun(A)], "alpha": [lun(A)]}, [starting], {"r1": "queued"})) == []


def test_an_orphan_lun_is_deleted_only_when_nothing_can_be_lost():
    snap = snapshot({"alpha": [lun(A), lun(GONE)], "beta": [lun(A), lun(B, exported=True)]}, [volume(A)])
    found = {f.subject: f for f in find(snap)}
    assert set(found) == {f"alpha/volume-{GONE}", f"beta/volume-{A}", f"beta/volume-{B}"}
    assert found[f"alpha/volume-{GONE}"].repair is Repair.DELETE_LUN  # no volume has it
    assert found[f"beta/volume-{A}"].repair is Repair.DELETE_LUN  # a second copy: A is settled on alpha, which has it
    assert found[f"beta/volume-{B}"].repair is Repair.DELETE_LUN  # no volume points to it: no attachment uses it
    assert "the export goes too" in found[f"beta/volume-{B}"].detail
    assert all(f.kind is Kind.ORPHAN_LUN for f in found.values())


def test_a_lun_this_cinder_did_not_make_is_foreign_and_left_alone_whatever_it_looks_like():
    """Named like Cinder's, but no volume of this Cinder's has or had its id (or it was unmanaged): another
    deployment's on shared storage, or made by hand. Reported, never repaired, and the audit does not fail."""
    luns = {"alpha": [lun(A), lun(GONE), lun(B, copying=True)], "beta": [lun(GONE, exported=True)]}
    found = {f.subject: f for f in find(snapshot(luns, [volume(A)], made_here={f"volume-{A}"}))}
    assert set(found) == {f"alpha/volume-{GONE}", f"alpha/volume-{B}", f"beta/volume-{GONE}"}
    assert all((f.kind, f.repair) == (Kind.FOREIGN_LUN, None) for f in found.values()), found
    assert "an array copies into it" in found[f"alpha/volume-{B}"].detail and "left alone" in found[
        f"alpha/volume-{B}"].action  # fmt: skip
    # the same LUNs made here: orphans and a takeover, repaired
    found = {f.subject: f.kind for f in find(snapshot(luns, [volume(A)]))}
    assert found[f"alpha/volume-{GONE}"] is Kind.ORPHAN_LUN and found[f"alpha/volume-{B}"] is Kind.UNOWNED_TAKEOVER
    foreign = Finding(Kind.FOREIGN_LUN, f"beta/volume-{GONE}", "not made here", "left alone")
    assert conclude([foreign], {}) == f"audit: nothing to do (1 foreign LUNs left alone: beta/volume-{GONE})"
    assert "left alone" in format_findings([foreign]) and "0 inconsistencies, 1 foreign" in format_findings([foreign])
    orphan = Finding(Kind.ORPHAN_LUN, f"beta/volume-{B}", "nobody's", "delete it")
    with pytest.raises(InconsistenciesLeft, match=r"1 of 1 inconsistencies left for an operator \(1 foreign"):
        conclude([foreign, orphan], {})


def test_a_volume_whose_host_lacks_its_lun_is_reported_and_its_only_copy_is_kept():
    snap = snapshot({"alpha": [], "beta": [lun(A)]}, [volume(A, "lab@alpha#pool1")])
    found = {f.kind: f for f in find(snap)}
    assert set(found) == {Kind.HOST_WITHOUT_LUN, Kind.ORPHAN_LUN}
    assert "the LUN is on beta" in found[Kind.HOST_WITHOUT_LUN].detail and found[Kind.HOST_WITHOUT_LUN].repair is None
    assert found[Kind.ORPHAN_LUN].repair is None  # the only copy of A's data
    assert find(snapshot({"alpha": []}, [volume(B, status="creating"), volume(A, status="error")])) == []


def test_unowned_takeovers_are_aborted_and_stale_exports_released():
    snap = snapshot({"alpha": [lun(GONE, copying=True)], "beta": [lun(A, lent_to="alpha")]},
                    [volume(A, "lab@beta#pool1")])  # fmt: skip
    found = {f.subject: f for f in find(snap)}
    assert found[f"alpha/volume-{GONE}"].kind is Kind.UNOWNED_TAKEOVER
    assert found[f"alpha/volume-{GONE}"].repair is Repair.ABORT_TAKEOVER
    assert found[f"beta/volume-{A}"].kind is Kind.UNOWNED_TAKEOVER
    assert found[f"beta/volume-{A}"].repair is Repair.RELEASE_EXPORT


def test_arrays_not_read_are_findings_and_nothing_on_them_is_judged():
    snap = snapshot({"beta": []}, [volume(A, "lab@alpha#pool1"), volume(B, "lab@gamma#pool1")],
                    not_audited={"alpha": "array alpha did not answer"})  # fmt: skip
    snap = Snapshot(snap.luns, {"beta": "beta"}, snap.not_audited, snap.volumes, {})
    [finding] = find(snap)
    assert (finding.kind, finding.subject) == (Kind.NOT_AUDITED, "alpha")


def test_what_is_left_fails_the_audit_with_each_action():
    stuck = Finding(Kind.STUCK_VOLUME, A, "locked", "clear run r1", Repair.RESUME_RUN, run_id="r1")
    orphan = Finding(Kind.ORPHAN_LUN, f"beta/volume-{B}", "nobody's", "delete it")
    assert conclude([stuck], {stuck.key: (True, "resumed")}) == "audit: 1 found, all resolved"
    with pytest.raises(InconsistenciesLeft, match=r"(?s)1 of 2 inconsistencies left.*delete it"):
        conclude([stuck, orphan], {stuck.key: (True, "resumed")})
    assert Finding.from_json(stuck.to_json()) == stuck
    assert "stuck_volume" in format_findings([stuck, orphan])


class ListingCinder(CinderApi):
    """Cinder at its request boundary: three volume services, one volume; what alpha's driver (an inventory
    driver, repairable) and ceph-hdd's (a manageable-volumes listing) hold; gamma's service is down."""

    def __init__(self, volumes=None, lock_reads=((), ())):
        self.asked = []
        self.volumes = volumes or [volume(A, "lab@ceph-hdd#ceph-hdd")]
        self.lock_reads = list(lock_reads)  # what each GET /os-async-migration answers, in turn

    def request(self, method, path, body=None):
        self.asked.append((method, path, body))
        if path.startswith("/os-services"):
            return {"services": [{"host": "lab@alpha"}, {"host": "lab@ceph-hdd"}, {"host": "lab@gamma"}]}
        if path == f"/{BACKENDS_RESOURCE}/lab%40alpha/inventory":
            return {"volumes": [HeldVolume(f"volume-{B}", 1 << 30, copying=True).to_json()], "repairable": True,
                    "made_here": [f"volume-{B}"]}  # fmt: skip
        if path == f"/{BACKENDS_RESOURCE}/lab%40ceph-hdd/inventory":
            held = [HeldVolume(f"volume-{A}", 2 << 30), HeldVolume(f"volume-{GONE}", 1 << 30)]
            return {"volumes": [h.to_json() for h in held], "repairable": False,
                    "made_here": [f"volume-{A}", f"volume-{GONE}"]}  # fmt: skip
        if path == f"/{BACKENDS_RESOURCE}/lab%40gamma/inventory":
            raise CinderError("HTTP 400: no enabled volume service is up for lab@gamma", 400)
        if path == f"/{BACKENDS_RESOURCE}/lab%40alpha/action":
            return {"done": f"takeover of {body['os-async_migration_release']['name']} aborted on alpha"}
        if path.startswith("/volumes/detail"):
            return {"volumes": self.volumes}
        if path == f"/{RESOURCE}":
            return {"async_migrations": list(self.lock_reads.pop(0) if self.lock_reads else ())}
        raise AssertionError(path)


class NoRuns:
    def state(self, run_id):
        raise AssertionError(run_id)


def test_each_backend_is_read_through_its_cinder_volume_and_only_an_inventory_driver_is_repaired():
    cinder = ListingCinder()
    snap = read(cinder, NoRuns()).snapshot
    assert snap.luns["ceph-hdd"] == [HeldVolume(f"volume-{A}", 2 << 30).to_json(),
                                     HeldVolume(f"volume-{GONE}", 1 << 30).to_json()]  # fmt: skip
    assert snap.backends == {"alpha": "alpha", "ceph-hdd": "ceph-hdd"}
    assert snap.listed_by_cinder == frozenset({"ceph-hdd"})
    assert snap.made_here == {f"volume-{A}", f"volume-{B}", f"volume-{GONE}"}  # each backend's, as Cinder said
    assert "no enabled volume service is up for lab@gamma" in snap.not_audited["gamma"]
    found = {f.subject: f for f in find(snap)}
    orphan = found[f"ceph-hdd/volume-{GONE}"]
    assert (orphan.kind, orphan.repair) == (Kind.ORPHAN_LUN, None)  # reported for an operator, never deleted
    takeover = found[f"alpha/volume-{B}"]
    assert (takeover.kind, takeover.repair) == (Kind.UNOWNED_TAKEOVER, Repair.ABORT_TAKEOVER)
    assert set(found) == {"gamma", f"ceph-hdd/volume-{GONE}", f"alpha/volume-{B}"}  # A's LUN is on its host


@pytest.mark.parametrize("reads", [("before", ()), ((), "after")], ids=["ended-during-the-listing", "began-during"])
def test_a_lock_read_before_or_after_the_volumes_is_the_volumes_lock(reads):
    """The locks are read before and after the volumes: a migration that began or ended while they were listed
    keeps its lock, and its volume is not reported as locked by nobody."""
    migrating = volume(A, "lab@alpha#pool1", "available", "migrating_attachable", lock("r1"))
    view = migrating[LOCK]
    cinder = ListingCinder([migrating], [(view,) if r else () for r in reads])

    class Live:
        def state(self, run_id):
            return "running"

    snap = read(cinder, Live()).snapshot
    assert snap.lock(migrating) == view and not [f for f in find(snap) if f.kind is Kind.STUCK_VOLUME]


def test_a_repair_is_the_backends_own_driver_asked_through_cinder():
    cinder = ListingCinder()
    findings = find(read(cinder, NoRuns()).snapshot)
    with pytest.raises(InconsistenciesLeft) as left:
        repair(findings, True, cinder, NoRuns())
    release = [a for a in cinder.asked if a[0] == "POST"]
    asked = {"os-async_migration_release": {"name": f"volume-{B}", "cleanup": "abort_takeover"}}
    assert release == [("POST", f"/{BACKENDS_RESOURCE}/lab%40alpha/action", asked)]
    assert "ceph-hdd" in str(left.value) and "gamma" in str(left.value)  # what no driver repairs is left
