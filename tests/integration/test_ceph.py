"""Ceph in the lab, behind Cinder's own, unmodified RBD driver: the backends reach Cinder's scheduler, a
volume is an RBD image in its backend's pool, and Cinder's own migrate moves it between the two pools
(the RBD driver's migrate_volume), data intact and the source image gone.

(The cluster's ``down`` / ``up`` on kept data is checked at the end of the session, by the ``ceph`` fixture.)
"""

from __future__ import annotations

import os
import time

import pytest

from include.backends.base import GiB, MiB
from lab.procutil import wait_until
from lab.services.ceph import POOLS
from lab.services.cinder import CINDER_HOST

pytestmark = pytest.mark.integration

HDD, SSD = "ceph-hdd", "ceph-ssd"


def pool_host(backend):
    """The RBD driver reports one pool, named after its backend."""
    return f"{CINDER_HOST}@{backend}#{backend}"


def test_the_ceph_backends_reach_the_scheduler_through_cinders_rbd_driver(admin, ceph):
    pools = {p["name"]: p["capabilities"] for p in admin.pool_details()}
    fsid = ceph.fsid
    for backend, rbd_pool in POOLS.items():
        caps = pools[pool_host(backend)]
        assert caps["storage_protocol"] == "ceph" and caps["volume_backend_name"] == backend, caps
        # cluster:conf:fsid:user:pool, no rbd_user in the lab (no cephx): Cinder writes None
        assert caps["location_info"].split(":")[2:] == [fsid, "None", rbd_pool], caps["location_info"]
        assert float(caps["total_capacity_gb"]) > 0 and caps["backend_state"] == "up", caps
    services = {s["host"]: s for s in admin.volume_services()}
    assert all(services[f"{CINDER_HOST}@{b}"]["state"] == "up" for b in POOLS), services


def test_a_volume_on_ceph_is_an_image_in_its_pool_that_extends_and_goes_with_it(admin, ceph, volume):
    vol = volume(HDD)
    image = f"volume-{vol['id']}"
    assert vol["os-vol-host-attr:host"] == pool_host(HDD)
    assert image in ceph.images(POOLS[HDD]) and image not in ceph.images(POOLS[SSD])
    admin.action(vol["id"], "os-extend", {"new_size": 2})
    assert wait_until(lambda: admin.get_volume(vol["id"])["size"] == 2, 60, 0.5)
    assert ceph.image_digest(POOLS[HDD], image)[0] == 2 * GiB
    admin.request("DELETE", f"/volumes/{vol['id']}")
    assert wait_until(lambda: image not in ceph.images(POOLS[HDD]), 60, 0.5)


def test_cinders_own_migrate_moves_a_volume_between_the_ceph_pools_with_its_data(admin, ceph, volume):
    vol = volume(HDD)
    image = f"volume-{vol['id']}"
    for offset in (0, 300 * MiB, GiB - MiB):  # data at the start, the middle and the last MiB; holes between
        ceph.write_image(POOLS[HDD], image, os.urandom(MiB), offset)
    before = ceph.image_digest(POOLS[HDD], image)
    started = time.monotonic()
    admin.action(vol["id"], "os-migrate_volume", {"host": pool_host(SSD), "force_host_copy": False})
    moved = {}

    def ended():
        moved.update(admin.get_volume(vol["id"]))
        return moved["migration_status"] in ("success", "error")

    assert wait_until(ended, 300, 0.5), moved
    print(f"\ncinder migrate {HDD} -> {SSD} (the RBD driver's copy) took {time.monotonic() - started:.1f} s")
    assert (moved["migration_status"], moved["os-vol-host-attr:host"]) == ("success", pool_host(SSD))
    assert moved["status"] == "available"
    assert ceph.image_digest(POOLS[SSD], image) == before
    assert image not in ceph.images(POOLS[HDD])
