"""volume_audit on the real lab: a clean lab reports clean; each inconsistency, made on purpose, is found with its
action; nothing changes without the param repair; with it the safe ones are fixed and the lab is clean again."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from include.backends.base import GiB, MiB, Volume
from include.backends.errors import BackendError, NotFound
from include.migration.audit import Finding, Kind, Repair
from include.migration.errors import CinderError
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG, AuditStep
from lab.procutil import wait_until
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import CINDER_HOST
from tests.integration.migration_runs import assert_migrated, gone_from_cinder, leftover_name, luns, seed, state_of

pytestmark = pytest.mark.integration

ALPHA = f"{CINDER_HOST}@alpha#pool1"


def audit(api, repair=False):
    """One volume_audit run: its state and what ``find`` found, by (kind, subject)."""
    run_id = api.trigger(AUDIT_DAG, {"repair": repair})
    state = api.wait_run(AUDIT_DAG, run_id, 180)["state"]
    found = [Finding.from_json(f) for f in api.xcom(AUDIT_DAG, run_id, AuditStep.FIND) or []]
    return run_id, state, {(f.kind, f.subject): f for f in found}


def wait_attachable(admin, vid):
    assert wait_until(lambda: state_of(admin, vid)[1] == "migrating_attachable", 120, 0.5), state_of(admin, vid)


def test_the_audit_finds_each_inconsistency_and_repairs_only_the_safe_ones_when_asked(
    lab, admin, services, api, airflow, volume, ceph
):
    airflow.wait_dags((AUDIT_DAG,), 120)
    run_id, state, found = audit(api)
    assert (state, found) == ("success", {}), f"the lab is not clean before the test: {found}"

    # two migrations stuck attachable on alpha: one whose run was deleted, one whose run an operator marked failed
    gone, failed = volume("beta"), volume("beta")
    models = {v["id"]: seed(lab, "beta", f"volume-{v['id']}") for v in (gone, failed)}
    gone_run = api.trigger(MIGRATION_DAG, {"volume_id": gone["id"], "dest_host": ALPHA, "speed_mib": 1})
    failed_run = api.trigger(MIGRATION_DAG, {"volume_id": failed["id"], "dest_host": ALPHA, "speed_mib": 1})
    for vid in (gone["id"], failed["id"]):
        wait_attachable(admin, vid)
    for run in (gone_run, failed_run):
        api.mark_run(MIGRATION_DAG, run, "failed")
    api.delete_run(MIGRATION_DAG, gone_run)  # Airflow deletes only runs that are over
    assert api.wait_run(MIGRATION_DAG, failed_run, 60)["state"] == "failed"
    # an orphan LUN on gamma; alpha taking over a LUN of beta's that no volume has (both named after volumes this
    # Cinder made and deleted); a volume's LUN on beta exported for a takeover while it does not migrate; a volume
    # on gamma whose LUN is gone
    orphan, taken = leftover_name(admin, "gamma"), leftover_name(admin, "beta")
    lab.backend("gamma").create_lun(orphan, 64 * MiB, "pool1")
    lab.backend("beta").create_lun(taken, 64 * MiB, "pool1")
    lab.backend("alpha").migrate_volume_target(Volume(taken, 64 * MiB), lab.backend("beta"), pool="pool1",
                                               speed_bps=MiB)  # fmt: skip
    exported, lost = volume("beta"), volume("gamma")
    lab.backend("beta").export_for_takeover(f"volume-{exported['id']}", initiator="alpha")
    lab.backend("gamma").delete_lun(f"volume-{lost['id']}")
    # Ceph's stock RBD driver is listed through its manageable-volumes listing (the lab arrays' drivers list
    # everything themselves): a volume of its own is no finding, an image of Cinder's name that no volume has is
    # reported, never repaired
    volume("ceph-hdd")
    rbd_orphan = leftover_name(admin, "ceph-hdd")
    ceph.write_image(CEPH_POOLS["ceph-hdd"], rbd_orphan, b"mine", size=64 * MiB)
    # what this Cinder did not make, on storage it shares, is left alone whatever its name: a LUN of another
    # deployment's (named like Cinder's, an id this Cinder never had), a LUN it was told to unmanage
    foreign = f"volume-{uuid.uuid4()}"
    lab.backend("gamma").create_lun(foreign, 64 * MiB, "pool1")
    unmanaged = volume("gamma")
    admin.action(unmanaged["id"], "os-unmanage")
    gone_from_cinder(admin, unmanaged["id"])
    kept = {
        ("gamma", foreign): lab.backend("gamma").get_lun(foreign),
        ("gamma", f"volume-{unmanaged['id']}"): lab.backend("gamma").get_lun(f"volume-{unmanaged['id']}"),
    }
    try:
        before = (luns(lab), {v["id"]: state_of(admin, v["id"]) for v in (gone, failed, exported, lost)})
        run_id, state, found = audit(api)
        expected = {
            (Kind.STUCK_VOLUME, gone["id"]): Repair.RESUME_RUN,
            (Kind.STUCK_VOLUME, failed["id"]): Repair.RESUME_RUN,
            (Kind.ORPHAN_LUN, f"gamma/{orphan}"): Repair.DELETE_LUN,
            (Kind.UNOWNED_TAKEOVER, f"alpha/{taken}"): Repair.ABORT_TAKEOVER,
            (Kind.ORPHAN_LUN, f"beta/{taken}"): Repair.DELETE_LUN,
            (Kind.UNOWNED_TAKEOVER, f"beta/volume-{exported['id']}"): Repair.RELEASE_EXPORT,
            (Kind.HOST_WITHOUT_LUN, lost["id"]): None,
            (Kind.ORPHAN_LUN, f"ceph-hdd/{rbd_orphan}"): None,
            (Kind.FOREIGN_LUN, f"gamma/{foreign}"): None,
            (Kind.FOREIGN_LUN, f"gamma/volume-{unmanaged['id']}"): None,
        }
        assert {key: f.repair for key, f in found.items()} == expected
        assert "does not exist" in found[(Kind.STUCK_VOLUME, gone["id"])].detail
        assert f"clear run {failed_run}" in found[(Kind.STUCK_VOLUME, failed["id"])].action
        assert "this Cinder did not make it" in found[(Kind.FOREIGN_LUN, f"gamma/{foreign}")].detail
        assert state == "failed"  # things are left for an operator: the run says so
        log = api.task_log(AUDIT_DAG, run_id, AuditStep.REPAIR, 1)
        assert "8 of 8 inconsistencies left for an operator (2 foreign LUNs left alone" in log, log
        # Cinder itself refuses to clean up what it did not make, whoever asks
        gamma = f"{CINDER_HOST}@gamma"
        for name in (foreign, f"volume-{unmanaged['id']}"):
            with pytest.raises(CinderError, match="not made by this Cinder") as refused:
                admin.release_held(gamma, name, "delete")
            assert refused.value.status == 409
        assert (luns(lab), {v["id"]: state_of(admin, v["id"]) for v in (gone, failed, exported, lost)}) == before

        for vid in (gone["id"], failed["id"]):  # the copies finish by the time the runs are resumed
            lab.backend("alpha").set_migration_speed(Volume(f"volume-{vid}", GiB), 0)
        run_id, state, found = audit(api, repair=True)
        assert set(found) == set(expected) and state == "failed"  # the lost volume and the image: for an operator
        log = api.task_log(AUDIT_DAG, run_id, AuditStep.REPAIR, 1)
        assert "2 of 8 inconsistencies left" in log and lost["id"] in log and rbd_orphan in log, log
        assert ceph.read_image(CEPH_POOLS["ceph-hdd"], rbd_orphan, length=4) == b"mine"
        assert {key: lab.backend(key[0]).get_lun(key[1]) for key in kept} == kept  # left alone, as they were
        for run in (gone_run, failed_run):  # the deleted run triggered again under its id, the failed one cleared
            assert api.wait_run(MIGRATION_DAG, run, 300)["state"] == "success"
        for vid in (gone["id"], failed["id"]):
            assert_migrated(lab, admin, services, vid, ALPHA, models[vid], "beta")
        for array, name in (("gamma", orphan), ("alpha", taken), ("beta", taken)):
            with pytest.raises(NotFound):
                lab.backend(array).get_lun(name)
        assert not lab.backend("beta").get_lun(f"volume-{exported['id']}")["takeover_export"]

        admin.request("DELETE", f"/volumes/{lost['id']}")
        ceph.remove_image(CEPH_POOLS["ceph-hdd"], rbd_orphan)
        gone_from_cinder(admin, lost["id"])
        run_id, state, found = audit(api, repair=True)  # what is left is foreign: reported, and no failure
        assert (state, set(found)) == ("success", {k for k in expected if k[0] is Kind.FOREIGN_LUN}), found
        assert "nothing to do (2 foreign LUNs left alone" in api.task_log(AUDIT_DAG, run_id, AuditStep.REPAIR, 1)
        for array, name in kept:
            lab.backend(array).delete_lun(name)
        run_id, state, found = audit(api)
        assert (state, found) == ("success", {}), found
    finally:  # what the repair did not remove, if the test failed before it
        if rbd_orphan in ceph.images(CEPH_POOLS["ceph-hdd"]):
            ceph.remove_image(CEPH_POOLS["ceph-hdd"], rbd_orphan)
        for array, name in kept:
            with contextlib.suppress(NotFound):
                lab.backend(array).delete_lun(name)
        for array, name in (("alpha", taken), ("beta", taken), ("gamma", orphan)):
            backend = lab.backend(array)
            try:
                if array == "alpha":
                    backend.abort_migration_target(Volume(name, 64 * MiB))
                else:
                    backend.release_takeover(name)
                    backend.delete_lun(name)
            except BackendError:
                pass
