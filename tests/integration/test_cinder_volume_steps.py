"""The blueprint's steps run in cinder-volume (include/cinder_plugin/manager.py), asked through the extension.

Step 2, the target driver's ``migrate_volume_target``: alpha's driver takes a beta volume over (the source's
connection opened by beta's own cinder-volume), serves it while it copies, is paused, resumed and sped up through
Cinder, and finishes; another is abandoned back to beta; a target that cannot open the source's protocol (Ceph
an NBD one) answers "not moved". Between the Ceph pools, the RBD source's step 1 defers to
the destination's RBD live migration (``AsyncRBDDriver``).

Step 1, the source driver's own ``migrate_volume``, on three drivers: Cinder's unmodified RBD driver
(``ceph-stock``) moves a volume to another Ceph pool, the lab's reference driver moves one between alpha's
pools, and the plain array's driver answers "not moved". What each backend's driver offers
comes from its own cinder-volume.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

from include.backends.base import GiB, MiB, MigrationState
from include.backends.features import Features
from include.cinder_plugin.names import SourceStep, TargetStep
from include.migration.errors import CinderError
from lab import verify
from lab.procutil import pid_alive, process_tree, wait_until
from lab.services.ceph import POOLS
from lab.services.cinder import CINDER_HOST, DEFAULT_ZONE

pytestmark = pytest.mark.integration

OWNER = "test:cinder-volume-steps"


def ask_step(ask, admin, vid, key, timeout=120, **args):
    """Ask for a driver step (``ask``: step 1's or step 2's action), then wait until cinder-volume says what became
    of it (``key``: ``source_step`` or ``target_step``); the migration's view then."""
    seen = ask(vid, OWNER, **args)  # the outcome, when the driver ended within the action's wait

    def ended():
        seen.update(admin.migration(vid))
        return seen[key] != "running"

    assert wait_until(ended, timeout, 0.5), seen
    return seen


def source_step(admin, vid):
    return ask_step(admin.source_migrate, admin, vid, "source_step")


def target_step(admin, vid, **args):
    return ask_step(admin.target_migrate, admin, vid, "target_step", **args)


def test_each_backend_says_what_its_driver_offers(admin):
    alpha = Features.from_json(admin.backend_features(f"{CINDER_HOST}@alpha"))
    ceph = Features.from_json(admin.backend_features(f"{CINDER_HOST}@ceph-hdd"))
    stock = Features.from_json(admin.backend_features(f"{CINDER_HOST}@ceph-stock"))
    assert (alpha.backend, alpha.driver, alpha.migrate_volume) == (f"{CINDER_HOST}@alpha", "ReferenceArrayDriver", True)
    assert (ceph.backend, ceph.driver, ceph.migrate_volume) == (f"{CINDER_HOST}@ceph-hdd", "AsyncRBDDriver", True)
    assert ceph.migrate_volume_target and ceph.complete_migration_target and ceph.abandon and ceph.abort
    assert not (ceph.pause or ceph.resume or ceph.speed)  # Ceph's live migration cannot honour them
    assert (stock.driver, stock.migrate_volume) == ("RBDDriver", True)
    assert not (stock.migrate_volume_target or stock.pause or stock.speed or stock.abandon)  # Cinder's own driver
    with pytest.raises(CinderError) as refused:
        admin.backend_features(f"{CINDER_HOST}@nowhere")
    assert refused.value.status == 400 and "no enabled volume service is up for lab@nowhere" in str(refused.value)


def test_cinders_own_rbd_driver_moves_a_locked_volume_between_ceph_pools_in_its_cinder_volume(admin, ceph, volume):
    """Step 1 on ceph-stock (Cinder's unmodified RBDDriver): its own synchronous move, toward ceph-hdd."""
    vol = volume("ceph-stock")
    vid, image = vol["id"], f"volume-{vol['id']}"
    for offset in (0, GiB // 2, GiB - MiB):
        ceph.write_image(POOLS["ceph-stock"], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS["ceph-stock"], image)
    dest = f"{CINDER_HOST}@ceph-hdd#ceph-hdd"
    with pytest.raises(CinderError) as refused:  # not locked: nothing is asked of any driver
        admin.source_migrate(vid, OWNER)
    assert refused.value.status == 409 and "lock it first" in str(refused.value)
    admin.begin_migration(vid, dest, OWNER)
    seen = source_step(admin, vid)
    assert (seen["source_step"], seen["host"], seen["status"], seen["migration_status"]) == (
        SourceStep.MOVED, dest, "maintenance", "starting")  # fmt: skip
    assert admin.source_migrate(vid, OWNER)["source_step"] == SourceStep.MOVED  # again: nothing is asked again
    assert ceph.image_digest(POOLS["ceph-hdd"], image) == before
    assert image not in ceph.images(POOLS["ceph-stock"])
    admin.finish_migration(vid, dest)
    done = admin.migration(vid)
    assert (done["migration_status"], done["host"], done["source_step"], done["dest_host"]) == (
        "success", dest, None, None)  # fmt: skip
    assert admin.get_volume(vid)["availability_zone"] == DEFAULT_ZONE  # every Ceph pool serves it


def test_between_ceph_pools_the_rbd_source_defers_to_the_targets_live_migration(admin, ceph, volume):
    """Step 1: Cinder's RBD copy is not run (the destination takes it over next); step 2: RBD live migration,
    attachable at once; the copy's looks end in a commit; finish: the source image is gone."""
    vol = volume("ceph-hdd")
    vid, image = vol["id"], f"volume-{vol['id']}"
    for offset in (0, GiB // 2, GiB - MiB):
        ceph.write_image(POOLS["ceph-hdd"], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS["ceph-hdd"], image)
    source, dest = f"{CINDER_HOST}@ceph-hdd#ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
    with pytest.raises(CinderError) as refused:  # not locked: nothing is asked of any driver
        admin.source_migrate(vid, OWNER)
    assert refused.value.status == 409 and "lock it first" in str(refused.value)
    admin.begin_migration(vid, dest, OWNER)
    seen = source_step(admin, vid)
    assert (seen["source_step"], seen["host"], seen["migration_status"]) == (SourceStep.NOT_MOVED, source, "starting")
    assert image in ceph.images(POOLS["ceph-hdd"]) and image not in ceph.images(POOLS["ceph-ssd"])
    seen = target_step(admin, vid)
    assert (seen["target_step"], seen["host"], seen["status"], seen["migration_status"]) == (
        TargetStep.ATTACHABLE, dest, "available", "migrating_attachable")  # fmt: skip
    assert admin.target_migrate(vid, OWNER)["target_step"] == TargetStep.ATTACHABLE  # again: nothing new
    copy = {}

    def copied():
        copy.update(admin.migration(vid).get("copy") or {})
        return copy.get("state") == MigrationState.DONE.value

    assert wait_until(copied, 120, 1.0), copy
    assert ceph.migration_state(POOLS["ceph-ssd"], image) is None  # committed by the look that saw it executed
    admin.finish_migration(vid, dest)
    done = admin.migration(vid)
    assert (done["migration_status"], done["host"], done["target_step"], done["dest_host"]) == (
        "success", dest, None, None)  # fmt: skip
    assert ceph.image_digest(POOLS["ceph-ssd"], image) == before
    assert image not in ceph.images(POOLS["ceph-hdd"])
    assert admin.get_volume(vid)["availability_zone"] == DEFAULT_ZONE  # both Ceph pools serve it


def test_the_lab_arrays_drivers_move_between_pools_or_say_they_cannot(lab, admin, volume):
    moved, kept = volume("alpha"), volume("gamma")
    admin.begin_migration(moved["id"], f"{CINDER_HOST}@alpha#pool2", OWNER)
    assert source_step(admin, moved["id"])["source_step"] == SourceStep.MOVED
    assert lab.backend("alpha").get_lun(f"volume-{moved['id']}")["pool"] == "pool2"
    admin.finish_migration(moved["id"], f"{CINDER_HOST}@alpha#pool2")

    admin.begin_migration(kept["id"], f"{CINDER_HOST}@alpha#pool1", OWNER)
    seen = source_step(admin, kept["id"])
    assert (seen["source_step"], seen["host"]) == (SourceStep.NOT_MOVED, f"{CINDER_HOST}@gamma#pool1")
    admin.fail_migration(kept["id"], "the source driver cannot move it", OWNER)
    assert admin.migration(kept["id"])["migration_status"] == "error"
    assert lab.backend("gamma").get_lun(f"volume-{kept['id']}")["pool"] == "pool1"


def lun_digest(array, name, size=GiB):
    return hashlib.sha256(verify.read_lun(array, name, size)).hexdigest()


def write_lun(array, name, chunks):
    handle = verify.connect(array.export_lun(name).uri)
    try:
        for offset in chunks:
            handle.pwrite(os.urandom(MiB), offset)
        handle.flush()
    finally:
        handle.shutdown()
        array.unexport_lun(name)


def test_alphas_driver_takes_a_beta_volume_over_in_its_cinder_volume_then_finishes(lab, admin, volume):
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    vid = volume("beta")["id"]
    name, dest = f"volume-{vid}", f"{CINDER_HOST}@alpha#pool2"
    write_lun(beta, name, (0, GiB // 2, GiB - MiB))
    before = lun_digest(beta, name)
    with pytest.raises(CinderError) as refused:  # not locked: nothing is asked of any driver
        admin.target_migrate(vid, OWNER)
    assert refused.value.status == 409 and "lock it first" in str(refused.value)
    admin.begin_migration(vid, dest, OWNER)
    seen = target_step(admin, vid, speed_mib=64)
    assert (seen["target_step"], seen["host"], seen["status"], seen["migration_status"]) == (
        TargetStep.ATTACHABLE, dest, "available", "migrating_attachable")  # fmt: skip
    assert admin.target_migrate(vid, OWNER)["target_step"] == TargetStep.ATTACHABLE  # again: nothing new
    assert admin.get_volume(vid)["availability_zone"] == "alpha"
    assert MigrationState(seen["copy"]["state"]) in (MigrationState.COPYING, MigrationState.DONE), seen
    with pytest.raises(CinderError) as refused:
        admin.copy_control(vid, "rewind")
    assert refused.value.status == 400 and "pause, resume, speed" in str(refused.value)
    paused = admin.copy_control(vid, "pause")
    assert MigrationState(paused["state"]) is MigrationState.PAUSED, paused
    with pytest.raises(CinderError) as early:  # the source is kept until the copy is complete
        admin.finish_migration(vid)
    assert early.value.status == 409 and "not finished" in str(early.value), early.value
    assert MigrationState(admin.copy_control(vid, "resume")["state"]) is not MigrationState.PAUSED
    admin.copy_control(vid, "speed", 0)

    def copied():
        return MigrationState(admin.migration(vid)["copy"]["state"]) is MigrationState.DONE

    assert wait_until(copied, 120, 0.5)
    assert name in {lun["name"] for lun in beta.list_luns()}  # complete, not finished: the source is still there
    admin.finish_migration(vid)
    done = admin.migration(vid)
    assert (done["migration_status"], done["host"], done["target_step"], done.get("copy")) == (
        "success", dest, None, None)  # fmt: skip
    assert name not in {lun["name"] for lun in beta.list_luns()}
    assert lun_digest(alpha, name) == before


def test_a_takeover_is_abandoned_through_cinder_and_the_volume_is_back_on_its_source(lab, admin, volume):
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    made = volume("beta")  # in either of beta's pools: the scheduler chooses
    vid, source = made["id"], made["os-vol-host-attr:host"]
    name = f"volume-{vid}"
    write_lun(beta, name, range(0, 32 * MiB, MiB))  # data to copy: 32 s at 1 MiB/s, so the mirror is not in sync
    admin.begin_migration(vid, f"{CINDER_HOST}@alpha#pool1", OWNER)
    seen = target_step(admin, vid, speed_mib=1, mode="mirror")
    assert seen["target_step"] == TargetStep.ATTACHABLE
    admin.abandon_migration(vid, "test: given up", OWNER)
    back = admin.migration(vid)
    assert (back["migration_status"], back["host"], back["target_step"]) == ("error", source, None)
    assert name not in {lun["name"] for lun in alpha.list_luns()}
    assert not beta.get_lun(name).get("takeover_export"), beta.get_lun(name)


def test_a_target_that_cannot_open_the_source_answers_not_moved_and_changes_nothing(lab, admin, ceph, volume):
    to_ceph = volume("gamma")
    admin.begin_migration(to_ceph["id"], f"{CINDER_HOST}@ceph-ssd#ceph-ssd", OWNER)  # NBD: no RBD live migration
    seen = target_step(admin, to_ceph["id"])
    assert (seen["target_step"], seen["host"], seen["migration_status"]) == (
        TargetStep.NOT_MOVED, f"{CINDER_HOST}@gamma#pool1", "starting")  # fmt: skip
    admin.fail_migration(to_ceph["id"], "test: not moved", OWNER)
    assert not lab.backend("gamma").get_lun(f"volume-{to_ceph['id']}").get("takeover_export")
    assert f"volume-{to_ceph['id']}" not in ceph.images(POOLS["ceph-ssd"])


def test_a_takeover_cut_short_by_a_killed_cinder_volume_is_run_again_when_it_starts(lab, admin, cinder, volume):
    """alpha's cinder-volume dies inside step 2 (its call to alpha's frozen API); started again, it runs the step
    again: one takeover, attachable, then finished with the data intact."""
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    vid = volume("beta")["id"]
    name, dest = f"volume-{vid}", f"{CINDER_HOST}@alpha#pool1"
    write_lun(beta, name, (0, GiB - MiB))
    before = lun_digest(beta, name)
    admin.begin_migration(vid, dest, OWNER)
    alpha_api = lab.pid("alpha")
    os.kill(alpha_api, signal.SIGSTOP)
    try:
        admin.target_migrate(vid, OWNER, speed_mib=64)
        time.sleep(3)  # alpha's cinder-volume is inside its call to alpha by now
        tree = process_tree(cinder.pid("cinder-volume"))
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not any(pid_alive(p) for p in tree), 20)
        assert admin.migration(vid)["target_step"] == TargetStep.RUNNING
    finally:
        os.kill(alpha_api, signal.SIGCONT)
    cinder.up()  # lab up: cinder-volume starts again, and asks step 2 again
    seen = {}

    def ended():
        seen.update(admin.migration(vid))
        return seen["target_step"] != TargetStep.RUNNING

    assert wait_until(ended, 180, 1.0), seen
    assert (seen["target_step"], seen["migration_status"], seen["host"]) == (
        TargetStep.ATTACHABLE, "migrating_attachable", dest)  # fmt: skip
    created = alpha.get_lun(name)["created"]
    admin.copy_control(vid, "speed", 0)
    assert wait_until(lambda: MigrationState(admin.migration(vid)["copy"]["state"]) is MigrationState.DONE, 120, 0.5)
    admin.finish_migration(vid)
    assert alpha.get_lun(name)["created"] == created  # one takeover, never redone
    assert name not in {lun["name"] for lun in beta.list_luns()}
    assert lun_digest(alpha, name) == before
