"""What the volume_migration tests share: a run triggered and waited for, data seeded on a lab array's LUN or a Ceph
image and read back, and the checks of a migrated volume (data, progress in Cinder, the source gone)."""

from __future__ import annotations

import random
import re

from include.backends.base import GiB, MiB
from include.backends.errors import NotFound
from include.cinder_plugin.names import PROGRESS_KEY
from include.migration.flow import lun_of
from lab import fill, verify
from lab.procutil import wait_until
from lab.services.ceph import POOLS as CEPH_POOLS
from tests.integration.conftest import CONNECTOR, cinder_cli, wait_status

DAG = "volume_migration"
RUN_TIMEOUT = 300


# ---- helpers ------------------------------------------------------------------------------------
def host_of(pool_host):
    """lab@alpha#pool1 -> alpha."""
    return pool_host.split("@")[1].split("#")[0]


def seed(lab, array, lun, size=GiB, seed=7, ceph=None, every=8 * MiB):
    """Random data in one MiB of each ``every`` bytes of the LUN (the rest stays holes); returns the model of its
    content (``lab.fill.seed``). ``array`` may be a Ceph backend (``ceph``: the lab's cluster), whose LUN is an RBD
    image."""
    return fill.seed(lab, ceph, array, lun, random.Random(seed), size, every)


def content_on(lab, array, lun, size=GiB, ceph=None):
    if array in CEPH_POOLS:
        return ceph.read_image(CEPH_POOLS[array], lun, 0, size)
    backend = lab.backend(array)
    handle = verify.connect(backend.export_lun(lun).uri)
    try:
        return verify.read_all(handle, size)
    finally:
        handle.shutdown()
        backend.unexport_lun(lun)


def gone_from_cinder(admin, vid):
    assert wait_until(lambda: vid not in {v["id"] for v in admin.list_volumes()}, 120, 0.5), vid


def leftover_name(admin, backend):
    """The LUN name of a volume this Cinder made on ``backend`` and deleted: a LUN of that name, made again by
    hand, is a leftover of this Cinder's (as a delete that never reached the array leaves)."""
    (made,) = fill.create_volumes(admin, 1, backend, 1, prefix="test-leftover", timeout=120)
    admin.request("DELETE", f"/volumes/{made['id']}")
    gone_from_cinder(admin, made["id"])
    return f"volume-{made['id']}"


def luns(lab):
    """Every array's LUNs as (name, pool, size): what "the arrays are unchanged" compares."""
    return {a: sorted((x["name"], x["pool"], x["size"]) for x in lab.backend(a).list_luns()) for a in lab.names()}


def state_of(admin, vid):
    v = admin.get_volume(vid)
    return (v["status"], v["migration_status"], v["os-vol-host-attr:host"])


def run_and_wait(api, conf, timeout=RUN_TIMEOUT):
    run_id = api.trigger(DAG, conf)
    return run_id, api.wait_run(DAG, run_id, timeout)["state"], api.task_instances(DAG, run_id)


def use_through_cinder(admin, vid, model, rng_seed, ops=300):
    """Attach through Cinder, read and write what the attachment names (an NBD export, an RBD image: a client's
    own handle on it), flush, detach; every read checked against ``model``. The attachment's connection_info."""
    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR}})
    info = att["attachment"]["connection_info"]
    handle = verify.open_connection(info)
    try:
        stats = verify.random_io(handle, model, ops, random.Random(rng_seed), max_size=256 * 1024)
        handle.flush()
        model.flushed()
    finally:
        handle.shutdown()
    assert not stats.errors and not stats.mismatches and stats.writes > 50 and stats.reads > 50, stats
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    wait_status(admin, vid, "in-use")
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    wait_status(admin, vid, "available")
    return info


def logs_of(api, run_id, task_id, tis):
    ti = tis[task_id]
    return "\n".join(api.task_log(DAG, run_id, task_id, n) for n in range(1, max(ti["try_number"], 1) + 1))


def states(tis):
    return {task_id: ti["state"] for task_id, ti in tis.items()}


def assert_progress_in_cinder(admin, services, vid):
    """The copy's progress is in the volume's metadata (reported every 15 s at most), and cinder show shows it."""
    meta = {}

    def reported():
        meta.update(admin.get_volume(vid)["metadata"])
        return PROGRESS_KEY in meta

    assert wait_until(reported, 30, 0.5), meta
    assert re.match(r"(copying|paused): +[\d.]+% \(\d+/1024 MiB\) at [\d.]+ MiB/s, ETA", meta[PROGRESS_KEY]), meta
    code, out = cinder_cli(services, "admin", "show", vid)
    assert code == 0 and PROGRESS_KEY in out, out


def has_lun(lab, array, lun, ceph=None):
    if array in CEPH_POOLS:
        return lun in ceph.images(CEPH_POOLS[array])
    try:
        lab.backend(array).get_lun(lun)
    except NotFound:
        return False
    return True


def assert_migrated(lab, admin, services, vid, dest, model, source_array, ceph=None):
    source_lun = f"volume-{vid}"
    lun = lun_of(admin.get_volume(vid))  # after a host copy: the destination volume's LUN (Cinder's name id)
    assert state_of(admin, vid) == ("available", "success", dest)
    code, out = cinder_cli(services, "admin", "show", vid)
    assert code == 0 and dest in out and "success" in out, out
    assert PROGRESS_KEY not in admin.get_volume(vid)["metadata"]  # the migration ended: its progress line too
    assert model.mismatches(content_on(lab, host_of(dest), lun, ceph=ceph)) == []
    if source_array != host_of(dest):  # deleted by its driver (Cinder's completion asks for it without waiting)
        assert wait_until(lambda: not has_lun(lab, source_array, source_lun, ceph), 60, 0.5), source_lun
    else:
        assert lab.backend(source_array).get_lun(lun)["pool"] == dest.split("#")[1]
