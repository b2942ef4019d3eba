"""The volume_migration DAG with Ceph: from ``ceph-stock`` (Cinder's unmodified RBD driver) the source driver's own
move as step 1; Ceph's volumes taken over: between ceph-hdd and ceph-ssd the destination's driver
(``AsyncRBDDriver``) takes the volume over by RBD live migration, so it is attachable on ``ceph-ssd`` at once
while the Ceph manager copies; from Ceph to alpha, the array opens the RBD image with QEMU's rbd driver and
serves it at once while it copies.

Between the pools, the manager runs the copy (``rbd task add migration execute``); each test stops it once the
volume is attachable, which holds the copy where it is for as long as the test uses the volume: the client's I/O
is during the copy whatever this machine's speed, and the copy must go on when the manager is back. (The host
copy between Ceph and a lab array: test_volume_migration.py's test_host_copy.)
"""

from __future__ import annotations

import os
import signal
import urllib.parse

import pytest

from include.backends.base import GiB, MiB, MigrationState, Volume
from include.cinder_plugin.names import ERROR_KEY
from include.migration.operator_rows import CopyPath
from include.migration.steps import MIGRATION_DAG, Step
from lab.procutil import wait_until
from lab.services.ceph import MGR, POOLS
from lab.services.cinder import CINDER_HOST
from plugins.operator_view import URL_PREFIX
from tests.integration.migration_runs import (
    RUN_TIMEOUT,
    assert_migrated,
    assert_progress_in_cinder,
    run_and_wait,
    seed,
    state_of,
    states,
    use_through_cinder,
)

pytestmark = pytest.mark.integration

HDD, SSD = f"{CINDER_HOST}@ceph-hdd#ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
STILL_COPYING = ("prepared", "executing")


def attachable_with_the_manager_stopped(admin, ceph, api, volume):
    """A 1 GiB volume on ceph-hdd, written in every MiB (a copy of seconds, not of a blink), migrated to ceph-ssd;
    once attachable there, the Ceph manager is killed: the copy holds. Returns (volume id, image, model, run)."""
    vol = volume("ceph-hdd")
    vid, image = vol["id"], f"volume-{vol['id']}"
    model = seed(None, "ceph-hdd", image, ceph=ceph, every=MiB)
    run_id = api.trigger(MIGRATION_DAG, {"volume_id": vid, "dest_host": SSD})
    assert wait_until(lambda: state_of(admin, vid)[1] == "migrating_attachable", 120, 0.1), state_of(admin, vid)
    pid = ceph.pid(MGR)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: ceph.pid(MGR) is None, 30, 0.2), "the manager did not die"
    copy = ceph.migration_state(POOLS["ceph-ssd"], image)
    assert copy in STILL_COPYING, f"the copy was {copy} when the manager was killed: 1 GiB went too fast"
    assert state_of(admin, vid) == ("available", "migrating_attachable", SSD)
    return vid, image, model, run_id


def test_ceph_takeover_is_attachable_at_once_and_its_copy_survives_the_manager_killed(
    lab, admin, services, ceph, api, volume
):
    vid, image, model, run_id = attachable_with_the_manager_stopped(admin, ceph, api, volume)
    try:
        info = use_through_cinder(admin, vid, model, 31)
        assert info["name"].split("/", 1)[0] == POOLS["ceph-ssd"], info  # served by the destination's pool
        assert ceph.migration_state(POOLS["ceph-ssd"], image) in STILL_COPYING  # the I/O was during the copy
        assert_progress_in_cinder(admin, services, vid)  # the live migration's percent, in cinder show
    finally:
        ceph.up()  # the manager again: its task, or the driver's next look, takes the copy up
    assert api.wait_run(MIGRATION_DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    tis = api.task_instances(MIGRATION_DAG, run_id)
    assert states(tis) == {
        Step.VALIDATE_AND_LOCK: "success",
        Step.SOURCE_DRIVER: "success",  # Cinder's RBD copy deferred to the takeover: not moved
        Step.TARGET_TAKEOVER: "success",
        Step.WAIT_FOR_COPY: "success",
        Step.DRIVERS_SKIPPED: "skipped",
        Step.HOST_COPY: "skipped",
        Step.COMMIT: "success",
        Step.ROLLBACK: "skipped",
    }
    assert ceph.migration_state(POOLS["ceph-ssd"], image) is None  # committed
    assert_migrated(lab, admin, services, vid, SSD, model, "ceph-hdd", ceph=ceph)


def test_abandoning_a_ceph_takeover_mid_copy_puts_every_write_back_on_the_source(admin, ceph, api, volume):
    vid, image, model, run_id = attachable_with_the_manager_stopped(admin, ceph, api, volume)
    try:
        use_through_cinder(admin, vid, model, 37)
        rows = {row["run_id"]: row for row in api.request("GET", "/api/migrations", under=URL_PREFIX)["migrations"]}
        row = rows[run_id]  # the operator view offers what Ceph honours: abandon, not pause nor speed
        assert (row["path"], row["copy_state"], row["controls"]) == (CopyPath.TAKEOVER, "copying", ["abandon"]), row
        run = urllib.parse.quote(run_id, safe="")
        answer = api.request("POST", f"/api/migrations/{run}/abandon", {}, under=URL_PREFIX)
    finally:
        ceph.up()
    assert answer["done"] == f"abandoned: copy given up on ceph-ssd, volume back on {HDD}", answer
    v = admin.get_volume(vid)
    assert (v["status"], v["migration_status"], v["os-vol-host-attr:host"]) == ("available", "error", HDD)
    assert v["metadata"][ERROR_KEY].startswith("abandoned by admin"), v["metadata"]
    assert image not in ceph.images(POOLS["ceph-ssd"]) and ceph.migration_state(POOLS["ceph-hdd"], image) is None
    # every write the client made through the destination is in the source image
    assert model.mismatches(ceph.read_image(POOLS["ceph-hdd"], image, 0, GiB)) == []
    ended = api.wait_run(MIGRATION_DAG, run_id, 60)
    assert ended["state"] == "failed" and "abandoned by admin" in ended["note"], ended


def test_alpha_takes_a_ceph_volume_over_with_qemus_rbd_driver(lab, admin, services, ceph, api, volume):
    """ceph-hdd -> alpha: attachable on alpha at once (an NBD export of its overlay over the RBD image), used
    through Cinder during the copy, verified after; the source image deleted by Cinder's RBD driver."""
    vol = volume("ceph-hdd")
    vid, image, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@alpha#pool1"
    model = seed(lab, "ceph-hdd", image, ceph=ceph)
    run_id = api.trigger(MIGRATION_DAG, {"volume_id": vid, "dest_host": dest, "speed_mib": 32})
    assert wait_until(lambda: state_of(admin, vid)[1] == "migrating_attachable", 120, 0.2), state_of(admin, vid)
    alpha = lab.backend("alpha")
    assert alpha.complete_migration_target(Volume(image, GiB)).state is MigrationState.COPYING
    info = use_through_cinder(admin, vid, model, 41)
    assert info["port"] == lab.config("alpha").nbd_port  # served by the target
    assert alpha.complete_migration_target(Volume(image, GiB)).state is MigrationState.COPYING  # I/O during it
    assert api.wait_run(MIGRATION_DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    tis = api.task_instances(MIGRATION_DAG, run_id)
    assert (states(tis)[Step.TARGET_TAKEOVER], states(tis)[Step.WAIT_FOR_COPY], states(tis)[Step.HOST_COPY]) == (
        "success", "success", "skipped")  # fmt: skip
    assert_migrated(lab, admin, services, vid, dest, model, "ceph-hdd", ceph=ceph)


def test_cinders_own_rbd_driver_moves_a_volume_between_ceph_pools_as_step_one_of_the_dag(admin, ceph, api, volume):
    vol = volume("ceph-stock")
    vid, image = vol["id"], f"volume-{vol['id']}"
    for offset in (0, GiB // 3, GiB - MiB):
        ceph.write_image(POOLS["ceph-stock"], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS["ceph-stock"], image)
    run_id, state, tis = run_and_wait(api, {"volume_id": vid, "dest_host": HDD})
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
    assert state_of(admin, vid) == ("available", "success", HDD)
    assert ceph.image_digest(POOLS["ceph-hdd"], image) == before
    assert image not in ceph.images(POOLS["ceph-stock"])
    assert admin.migration(vid)["source_step"] is None  # the migration's record ends with it
