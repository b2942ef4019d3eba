"""Cinder's own migration between the lab's backends, as on a cloud with the plugin loaded (issue 24, item 3):
``cinder migrate`` (the source driver asked first, then Cinder's generic copy), ``--force-host-copy`` and ``cinder
retype --migration-policy on-demand`` (to a backend's volume type, across zones), between lab arrays, between the
Ceph pools and across the two. Cinder's generic copy runs in cinder-volume and opens the lab arrays' NBD volumes
with the project's connector (``AsyncMigrationManager._connect_device``), Ceph's through os-brick. Data written
before, read back after, byte for byte; the source LUN or image gone.
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
        ("beta", "gamma", "retype"),  # to gamma's type, zone beta -> zone gamma
        ("ceph-ssd", "ceph-hdd", "retype"),  # between the Ceph pools (RBD's own migrate_volume, one cluster)
        ("gamma", "ceph-ssd", "retype"),  # lab array -> Ceph, zone gamma -> the default zone
    ],
    ids=[
        "migrate-alpha-beta",
        "force-host-copy-alpha-pools",
        "force-host-copy-ceph-pools",
        "force-host-copy-ceph-beta",
        "migrate-gamma-ceph",
        "retype-beta-gamma",
        "retype-ceph-pools",
        "retype-gamma-ceph",
    ],  # fmt: skip
)
def test_cinders_own_migration_moves_the_volume_with_its_data(lab, ceph, admin, volume, source, dest, how):
    vol = volume(source)
    vid, lun = vol["id"], lun_of(vol)
    if dest == vol["os-vol-host-attr:host"]:  # Cinder placed it on that very pool: the array's other pool
        dest = dest[:-1] + {"1": "2", "2": "1"}[dest[-1]]
    model = seed(lab, source, lun, GiB, seed=len(how), ceph=ceph)
    started = time.monotonic()
    if how == "retype":  # dest: a volume type, named like the backend it pins
        admin.action(vid, "os-retype", {"new_type": dest, "migration_policy": "on-demand"})
    else:
        admin.action(vid, "os-migrate_volume", {"host": dest, "force_host_copy": how == "host-copy"})
    moved = {}

    def ended():  # a retype the scheduler refused ends available with no migration (the API set 'retyping')
        moved.update(admin.get_volume(vid))
        ends = ("success", "error", None) if how == "retype" else ("success", "error")
        return moved["status"] == "available" and moved["migration_status"] in ends

    assert wait_until(ended, 300, 0.5), moved
    print(f"\n{how} {source} -> {dest}: {time.monotonic() - started:.1f} s")
    assert moved["migration_status"] == "success", moved
    if how == "retype":
        assert (moved["volume_type"], backend_of(moved["os-vol-host-attr:host"])) == (dest, dest), moved
        dest = moved["os-vol-host-attr:host"]
    assert moved["os-vol-host-attr:host"] == dest, moved
    assert model.mismatches(content_on(lab, backend_of(dest), lun_of(moved), GiB, ceph)) == []
    if backend_of(dest) != source or lun_of(moved) != lun:
        # deleted by its driver (Cinder's completion asks for it without waiting)
        assert wait_until(lambda: not has_lun(lab, source, lun, ceph), 60, 0.5), "the source is deleted"
