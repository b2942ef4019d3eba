"""The generic host copy through Cinder (``flow.host_copy``), its faults: an interrupted copy resumes from its
checkpoint, and a rollback deletes the destination volume and leaves the source as it was.

(The DAG's host copy between a lab array and Ceph both ways, data byte for byte and the source gone:
test_volume_migration.py's test_host_copy.)
"""

from __future__ import annotations

import pathlib

import pytest

from include.backends.base import MiB
from include.migration import flow, validation
from include.migration.errors import CinderError
from include.migration.flow import lun_of
from lab.procutil import wait_until
from lab.services.cinder import CINDER_HOST
from tests.integration.test_cinder_volume_steps import lun_digest, write_lun

pytestmark = pytest.mark.integration

OWNER = "test:host-copy-through-cinder"
SPREAD = tuple(i * 128 * MiB for i in range(8))  # 1 MiB of data at each: sparse, and long enough to throttle


class Interrupted(Exception):
    """Raised by a progress callback to stop a copy midway."""


def lock(admin, vid, dest, **conf):
    """validate_and_lock with a forced host copy (the drivers are not asked): the run's plan."""
    return validation.validate_and_lock({"volume_id": vid, "dest_host": dest, "force_host_copy": True, **conf},
                                        OWNER, admin)  # fmt: skip


def gone(admin, volume_id):
    try:
        admin.get_volume(volume_id)
    except CinderError as exc:
        return exc.status == 404
    return False


def moved(admin, vid, dest, target):
    """After commit: the volume is ``success`` on ``dest`` and the destination volume's record is gone."""
    vol = admin.get_volume(vid)
    assert (vol["status"], vol["migration_status"], vol["os-vol-host-attr:host"]) == ("available", "success", dest)
    assert wait_until(lambda: gone(admin, target), 60, 0.5), f"destination volume {target} still listed"
    return vol


def interrupted_copy(admin, plan, state_dir: pathlib.Path):
    """A throttled host copy stopped by its progress callback after two seconds; the checkpoint it left."""

    def stop(progress):
        if progress.bytes_done:  # not the first report (offset 0): two seconds in
            raise Interrupted(f"stopped at {progress.bytes_done}")

    with pytest.raises(Interrupted):
        flow.host_copy(plan, admin, state_dir, stop)
    checkpoints = list(state_dir.glob("*.checkpoint"))
    assert len(checkpoints) == 1
    return checkpoints[0]


def test_an_interrupted_host_copy_resumes_from_its_checkpoint_and_commits(tmp_path, lab, admin, volume):
    gamma = lab.backend("gamma")
    vid = volume("gamma")["id"]
    write_lun(gamma, f"volume-{vid}", SPREAD)
    before = lun_digest(gamma, f"volume-{vid}")
    dest = f"{CINDER_HOST}@alpha#pool2"

    checkpoint = interrupted_copy(admin, lock(admin, vid, dest, speed_mib=1), tmp_path)
    assert admin.migration(vid)["copied"] is False
    plan = lock(admin, vid, dest)  # the same run again (a retry): the same lock and destination volume
    result = flow.host_copy(plan, admin, tmp_path)
    assert 0 < result["bytes_copied"] < len(SPREAD) * MiB  # resumed: what was before the checkpoint is not copied
    assert not checkpoint.exists()
    flow.commit(plan, admin)

    vol = moved(admin, vid, dest, result["copy_target"])
    assert lun_digest(lab.backend("alpha"), lun_of(vol)) == before


def test_a_rollback_deletes_the_destination_volume_and_leaves_the_source_as_it_was(tmp_path, lab, admin, volume):
    gamma = lab.backend("gamma")
    vid = volume("gamma")["id"]
    write_lun(gamma, f"volume-{vid}", SPREAD)
    before = lun_digest(gamma, f"volume-{vid}")
    plan = lock(admin, vid, f"{CINDER_HOST}@ceph-ssd#ceph-ssd", speed_mib=1)
    interrupted_copy(admin, plan, tmp_path)
    target = admin.migration(vid)["copy_target"]

    done = flow.rollback(plan, admin, "test: given up")
    assert target in done
    assert wait_until(lambda: gone(admin, target), 60, 0.5), f"destination volume {target} still listed"
    vol = admin.get_volume(vid)
    assert (vol["status"], vol["migration_status"], vol["os-vol-host-attr:host"]) == (
        "available", "error", f"{CINDER_HOST}@gamma#pool1")  # fmt: skip
    assert not gamma.get_lun(f"volume-{vid}").get("exported")  # the copy's connection was closed
    assert lun_digest(gamma, f"volume-{vid}") == before
