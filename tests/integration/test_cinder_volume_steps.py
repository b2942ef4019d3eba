"""The blueprint's steps run in cinder-volume (include/cinder_plugin/manager.py), asked through the extension.

Step 1, the source driver's own ``migrate_volume``, on three drivers: Cinder's RBD driver moves a volume between
its two Ceph pools, the lab's reference driver moves one between alpha's pools, and the plain array's driver
answers "not moved". What each backend's driver offers comes from its own cinder-volume.
"""

from __future__ import annotations

import os

import pytest

from include.backends.base import GiB, MiB
from include.backends.features import Features
from include.cinder_plugin.names import SourceStep
from include.migration.errors import CinderError
from lab.procutil import wait_until
from lab.services.ceph import POOLS
from lab.services.cinder import CINDER_HOST

pytestmark = pytest.mark.integration

OWNER = "test:cinder-volume-steps"


def source_step(admin, vid, timeout=120):
    """Ask for step 1, then wait until cinder-volume says what became of it; the migration's view then."""
    assert admin.source_migrate(vid, OWNER)["source_step"] in (SourceStep.RUNNING, None)
    seen = {}

    def ended():
        seen.update(admin.migration(vid))
        return seen["source_step"] != SourceStep.RUNNING

    assert wait_until(ended, timeout, 0.5), seen
    return seen


def test_each_backend_says_what_its_driver_offers(admin):
    alpha = Features.from_json(admin.backend_features(f"{CINDER_HOST}@alpha"))
    ceph = Features.from_json(admin.backend_features(f"{CINDER_HOST}@ceph-hdd"))
    assert (alpha.backend, alpha.driver, alpha.migrate_volume) == (f"{CINDER_HOST}@alpha", "ReferenceArrayDriver", True)
    assert (ceph.backend, ceph.driver, ceph.migrate_volume) == (f"{CINDER_HOST}@ceph-hdd", "RBDDriver", True)
    assert not (ceph.migrate_volume_target or ceph.pause or ceph.speed or ceph.abandon)  # Cinder's stock driver
    with pytest.raises(CinderError) as refused:
        admin.backend_features(f"{CINDER_HOST}@nowhere")
    assert refused.value.status == 400 and "no enabled volume service is up for lab@nowhere" in str(refused.value)


def test_cinders_rbd_driver_moves_a_locked_volume_between_ceph_pools_in_its_cinder_volume(admin, ceph, volume):
    vol = volume("ceph-hdd")
    vid, image = vol["id"], f"volume-{vol['id']}"
    for offset in (0, GiB // 2, GiB - MiB):
        ceph.write_image(POOLS["ceph-hdd"], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS["ceph-hdd"], image)
    dest = f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
    with pytest.raises(CinderError) as refused:  # not locked: nothing is asked of any driver
        admin.source_migrate(vid, OWNER)
    assert refused.value.status == 409 and "lock it first" in str(refused.value)
    admin.begin_migration(vid, dest, OWNER)
    seen = source_step(admin, vid)
    assert (seen["source_step"], seen["host"], seen["status"], seen["migration_status"]) == (
        SourceStep.MOVED, dest, "maintenance", "starting")  # fmt: skip
    assert admin.source_migrate(vid, OWNER)["source_step"] == SourceStep.MOVED  # again: nothing is asked again
    assert ceph.image_digest(POOLS["ceph-ssd"], image) == before
    assert image not in ceph.images(POOLS["ceph-hdd"])
    admin.finish_migration(vid, dest)
    done = admin.migration(vid)
    assert (done["migration_status"], done["host"], done["source_step"], done["dest_host"]) == (
        "success", dest, None, None)  # fmt: skip
    assert admin.get_volume(vid)["availability_zone"] == "ceph-ssd"


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
