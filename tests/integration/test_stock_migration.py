"""Cinder's own migration between the lab's backends, as on a cloud with the plugin loaded (issue 24, item 3):
``cinder migrate`` (the source driver asked first, then Cinder's generic copy) and ``--force-host-copy``, between
lab arrays, between the Ceph pools and across the two. (``cinder retype --migration-policy on-demand`` to Ceph does
not end yet: issue 24.) Cinder's generic copy runs in cinder-volume and opens the lab arrays' NBD volumes with
the project's connector (``AsyncMigrationManager._connect_device``), Ceph's through os-brick. Data written before,
read back after, byte for byte; the source LUN or image gone.
"""

from __future__ import annotations

import time

import pytest

from include.backends.base import GiB
from include.migration.flow import backend_of, lun_of
from lab.procutil import wait_until
from lab.services.cinder import CINDER_HOST
from tests.integration.migration_runs import content_on, has_lun, seed

pytestmark = pytest.mark.integration


def pool(backend, name=None):
    return f"{CINDER_HOST}@{backend}#{name or backend}"


@pytest.mark.parametrize(
    ("source", "dest", "how"),
    [
        ("alpha", pool("beta", "pool1"), "migrate"),  # lab array -> lab array: the generic copy, NBD to NBD
        ("alpha", pool("alpha", "pool2"), "host-copy"),  # within one array, --force-host-copy
        ("ceph-hdd", pool("ceph-ssd"), "host-copy"),  # between the Ceph pools through os-brick's RBD handles
        ("ceph-ssd", pool("beta", "pool2"), "host-copy"),  # Ceph -> lab array: RBD to NBD
        ("gamma", pool("ceph-ssd"), "migrate"),  # lab array -> Ceph: gamma's driver moves nothing; NBD to RBD
    ],
    ids=[
        "migrate-alpha-beta",
        "force-host-copy-alpha-pools",
        "force-host-copy-ceph-pools",
        "force-host-copy-ceph-beta",
        "migrate-gamma-ceph",
    ],  # fmt: skip
)
def test_cinders_own_migration_moves_the_volume_with_its_data(lab, ceph, admin, volume, source, dest, how):
    vol = volume(source)
    vid, lun = vol["id"], lun_of(vol)
    if dest == vol["os-vol-host-attr:host"]:  # Cinder placed it on that very pool: the array's other pool
        dest = dest[:-1] + {"1": "2", "2": "1"}[dest[-1]]
    model = seed(lab, source, lun, GiB, seed=len(how), ceph=ceph)
    started = time.monotonic()
    admin.action(vid, "os-migrate_volume", {"host": dest, "force_host_copy": how == "host-copy"})
    moved = {}

    def ended():
        moved.update(admin.get_volume(vid))
        return moved["migration_status"] in ("success", "error") and moved["status"] == "available"

    assert wait_until(ended, 300, 0.5), moved
    print(f"\n{how} {source} -> {dest}: {time.monotonic() - started:.1f} s")
    assert (moved["migration_status"], moved["os-vol-host-attr:host"]) == ("success", dest), moved
    assert model.mismatches(content_on(lab, backend_of(dest), lun_of(moved), GiB, ceph)) == []
    if backend_of(dest) != source or lun_of(moved) != lun:
        # deleted by its driver (Cinder's completion asks for it without waiting)
        assert wait_until(lambda: not has_lun(lab, source, lun, ceph), 60, 0.5), "the source is deleted"
