"""Fill the lab's Cinder with volumes, quickly, for rebalancing tests and benches.

``lift_quotas`` removes the admin project's volume and GiB quotas (Cinder's
default allows 10 volumes); ``create_volumes`` makes many volumes in one
availability zone (one per array in the lab) a few at a time and waits until
each is available; ``delete_volumes`` removes them.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterable
from typing import Any

from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError
from lab.errors import LabError
from lab.procutil import wait_until


def lift_quotas(cinder: Any) -> None:
    """No volume or GiB quota for the project ``cinder`` (a CinderHook) works in."""
    project = cinder.session.get_project_id()
    cinder.request("PUT", f"/os-quota-sets/{project}", {"quota_set": {"volumes": -1, "gigabytes": -1}})


def _available(cinder: CinderApi, volume_id: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.update(cinder.get_volume(volume_id))
        if found["status"] == "error":
            raise LabError(f"volume {volume_id} went to error while being created")
        return found["status"] == "available"

    if not wait_until(ready, timeout, 0.5):
        raise LabError(f"volume {volume_id} is still {found.get('status')} after {timeout:.0f} s")
    return found


def create_volumes(cinder: CinderApi, count: int, az: str, size_gib: int = 1, *, prefix: str = "fill",
                   workers: int = 6, timeout: float = 600.0) -> list[dict[str, Any]]:  # fmt: skip
    """``count`` available volumes in availability zone ``az`` (an array's name in the lab), as Cinder shows them."""
    tag = uuid.uuid4().hex[:6]
    deadline = time.monotonic() + timeout

    def one(i: int) -> dict[str, Any]:
        body = {"volume": {"size": size_gib, "availability_zone": az, "name": f"{prefix}-{tag}-{i:04d}"}}
        vid = cinder.request("POST", "/volumes", body)["volume"]["id"]
        return _available(cinder, vid, max(deadline - time.monotonic(), 1.0))

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
