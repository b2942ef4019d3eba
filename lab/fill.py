"""Fill the lab's Cinder with volumes, quickly, for rebalancing tests and benches.

``lift_quotas`` removes the admin project's volume and GiB quotas (Cinder's
default allows 10 volumes); ``create_volumes`` makes many volumes on one
backend (a lab array or a Ceph pool) a few at a time and waits until each is
available; ``delete_volumes`` removes them. ``seed`` writes random data into a
volume's LUN or RBD image and answers the model of its content.
"""

from __future__ import annotations

import concurrent.futures
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

from include.backends.base import MiB
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError
from lab import verify
from lab.errors import LabError
from lab.procutil import wait_until
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import DEFAULT_TYPE


def lift_quotas(cinder: Any) -> None:
    """No volume or GiB quota for the project ``cinder`` (a CinderHook) works in."""
    project = cinder.session.get_project_id()
    cinder.request("PUT", f"/os-quota-sets/{project}", {"quota_set": {"volumes": -1, "gigabytes": -1}})


def _available(cinder: CinderApi, volume_id: str, timeout: float, volume_type: str | None = None) -> dict[str, Any]:
    """The volume once available (and of ``volume_type``, if given: a retype ended)."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.update(cinder.get_volume(volume_id))
        if found["status"] == "error":
            raise LabError(f"volume {volume_id} went to error while being created")
        return found["status"] == "available" and volume_type in (None, found.get("volume_type"))

    if not wait_until(ready, timeout, 0.5):
        raise LabError(f"volume {volume_id} is still {found.get('status')} after {timeout:.0f} s")
    return found


def create_volumes(cinder: CinderApi, count: int, backend: str, size_gib: int = 1, *, prefix: str = "fill",
                   workers: int = 6, timeout: float = 600.0) -> list[dict[str, Any]]:  # fmt: skip
    """``count`` available volumes on ``backend``, of Cinder's default type, as Cinder shows them.

    A lab array is chosen by its availability zone (its name). Both Ceph pools serve the default zone, so a pool
    is chosen by its volume type (``lab.services.cinder``), which a retype that moves nothing then changes to the
    default: the volume's type pins no backend, so Cinder's own migrate may move it, as it may the arrays' volumes.
    """
    tag = uuid.uuid4().hex[:6]
    deadline = time.monotonic() + timeout
    ceph = backend in CEPH_POOLS

    def one(i: int) -> dict[str, Any]:
        body = {"size": size_gib, "name": f"{prefix}-{tag}-{i:04d}"}
        body.update({"volume_type": backend} if ceph else {"availability_zone": backend})
        vid = cinder.request("POST", "/volumes", {"volume": body})["volume"]["id"]
        volume = _available(cinder, vid, max(deadline - time.monotonic(), 1.0))
        if not ceph:
            return volume
        retype = {"os-retype": {"new_type": DEFAULT_TYPE, "migration_policy": "never"}}
        cinder.request("POST", f"/volumes/{vid}/action", retype)
        return _available(cinder, vid, max(deadline - time.monotonic(), 1.0), DEFAULT_TYPE)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(count)))


def delete_volumes(cinder: CinderApi, volume_ids: Iterable[str]) -> list[str]:
    """Delete each volume; returns the ones Cinder refused (with why)."""
    refused = []
    for vid in volume_ids:
        try:
            cinder.request("DELETE", f"/volumes/{vid}")
        except CinderError as exc:
            if exc.status != 404:
                refused.append(f"{vid}: {exc}")
    return refused


def seed(lab: Any, ceph: Any, backend: str, lun: str, rng: random.Random, size: int, every: int) -> verify.DataModel:
    """Random data (drawn from ``rng``) in one MiB of each ``every`` bytes of ``lun``, the rest left as it is
    (holes on a new volume); the model of its ``size`` bytes. ``backend`` is a lab array (``lab``: its LUN through
    an NBD export made for it) or a Ceph pool (``ceph``: the lab's cluster, its RBD image)."""
    content = bytearray(size)
    blocks = {off: rng.randbytes(MiB) for off in range(0, size, every)}
    for off, block in blocks.items():
        content[off : off + MiB] = block
    if backend in CEPH_POOLS:
        with ceph.open_image(CEPH_POOLS[backend], lun) as handle:
            verify.write_blocks(handle, blocks)
    else:
        array = lab.backend(backend)
        handle = verify.connect(array.export_lun(lun).uri)
        verify.write_blocks(handle, blocks)
        handle.shutdown()
        array.unexport_lun(lun)
    return verify.DataModel(size, bytes(content))
