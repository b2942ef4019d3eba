"""The volume_migration DAG with Ceph: Cinder's RBD driver moves a volume between its two pools as blueprint step 1,
run in the source's cinder-volume. (Between Ceph and a lab array the host copy runs through Cinder:
test_volume_migration.py's test_host_copy.)
"""

from __future__ import annotations

import os

import pytest

from include.backends.base import GiB, MiB
from include.migration.steps import Step
from lab.services.ceph import POOLS
from lab.services.cinder import CINDER_HOST
from tests.integration.migration_runs import run_and_wait, state_of, states

pytestmark = pytest.mark.integration

HDD, SSD = f"{CINDER_HOST}@ceph-hdd#ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"


def test_cinders_rbd_driver_moves_a_volume_between_the_ceph_pools_as_step_one_of_the_dag(admin, ceph, api, volume):
    vol = volume("ceph-hdd")
    vid, image = vol["id"], f"volume-{vol['id']}"
    for offset in (0, GiB // 3, GiB - MiB):
        ceph.write_image(POOLS["ceph-hdd"], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS["ceph-hdd"], image)
    run_id, state, tis = run_and_wait(api, {"volume_id": vid, "dest_host": SSD})
    assert state == "success", states(tis)
    assert states(tis) == {
        Step.VALIDATE_AND_LOCK: "success",
        Step.SOURCE_DRIVER: "success",
        Step.TARGET_TAKEOVER: "skipped",
        Step.WAIT_FOR_COPY: "skipped",
        Step.DRIVERS_SKIPPED: "skipped",
        Step.HOST_COPY: "skipped",
        Step.COMMIT: "success",
        Step.ROLLBACK: "skipped",
    }
    assert state_of(admin, vid) == ("available", "success", SSD)
    assert ceph.image_digest(POOLS["ceph-ssd"], image) == before
    assert image not in ceph.images(POOLS["ceph-hdd"])
    assert admin.migration(vid)["source_step"] is None  # the migration's record ends with it
