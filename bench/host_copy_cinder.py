#!/usr/bin/env python3
"""The host copy through Cinder, side by side with Cinder's own migration, on the lab.

Each case moves one fresh 1 GiB volume whose every byte is random data (written before, through the array's NBD
export or librbd), times it from the request to ``success``, and checks the destination byte for byte (sha256 of
the whole volume) and that the source is gone:

* ``cinder migrate``: Cinder's own migration between the two Ceph pools (its RBD driver's ``migrate_volume``, a
  synchronous ``image.copy()`` in cinder-volume; the volume is not usable until it ends);
* ``host copy``: the project's ``flow.host_copy`` and ``commit`` (forced: no driver asked), through Cinder: the
  same Ceph pools (RBD to RBD, librbd on both ends), gamma -> ceph-hdd (NBD to RBD) and ceph-ssd -> alpha (RBD to
  NBD), unthrottled.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/host_copy_cinder.py [--repeat N] [--keep]``
(a fresh lab in a temporary folder; about 5 minutes). Prints one table; raw figures go to
``bench/results/host_copy_cinder.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.attachable import whole_lab
from include.backends.base import GiB, MiB
from include.migration import flow, validation
from include.migration.flow import backend_of
from lab import verify
from lab.cli import ceph_of
from lab.fill import create_volumes
from lab.procutil import wait_until
from lab.services.ceph import POOLS
from lab.services.cinder import CINDER_HOST

RESULTS = Path(__file__).parent / "results" / "host_copy_cinder.json"
CASES = [  # (path, source backend, destination pool)
    ("cinder migrate", "ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"),
    ("host copy", "ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"),
    ("host copy", "gamma", f"{CINDER_HOST}@ceph-hdd#ceph-hdd"),
    ("host copy", "ceph-ssd", f"{CINDER_HOST}@alpha#pool1"),
]


class Storage:
    """The lab's volumes as bytes: a lab array's LUN through NBD, a Ceph backend's image through librbd."""

    def __init__(self, lab: Any) -> None:
        self.lab, self.ceph = lab, ceph_of(lab)

    def fill(self, backend: str, name: str) -> str:
        """Random data over the whole volume; its sha256."""
        digest = hashlib.sha256()
        if backend in POOLS:
            for offset in range(0, GiB, 64 * MiB):
                block = os.urandom(64 * MiB)
                digest.update(block)
                self.ceph.write_image(POOLS[backend], name, block, offset)
            return digest.hexdigest()
        array = self.lab.backend(backend)
        handle = verify.connect(array.export_lun(name).uri)
        try:
            for offset in range(0, GiB, 64 * MiB):
                block = os.urandom(64 * MiB)
                digest.update(block)
                handle.pwrite(block, offset)
            handle.flush()
        finally:
            handle.shutdown()
            array.unexport_lun(name)
        return digest.hexdigest()

    def digest(self, backend: str, name: str) -> str:
        if backend in POOLS:
            return self.ceph.image_digest(POOLS[backend], name)[1]
        return hashlib.sha256(verify.read_lun(self.lab.backend(backend), name, GiB)).hexdigest()

    def holds(self, backend: str, name: str) -> bool:
        if backend in POOLS:
            return name in self.ceph.images(POOLS[backend])
        return name in {lun["name"] for lun in self.lab.backend(backend).list_luns()}


def one(path: str, source: str, dest: str, cinder: Any, storage: Storage, state: Path) -> dict[str, Any]:
    vid = create_volumes(cinder, 1, source, prefix="host-copy-bench", timeout=120)[0]["id"]
    name = f"volume-{vid}"
    before = storage.fill(source, name)
    started = time.monotonic()
    if path == "cinder migrate":
        cinder.action(vid, "os-migrate_volume", {"host": dest, "force_host_copy": False})
        seen: dict[str, Any] = {}

        def ended() -> bool:
            seen.update(cinder.get_volume(vid))
            return seen.get("migration_status") in ("success", "error")

        wait_until(ended, 1800, 0.2)
        status = seen.get("migration_status")
    else:
        plan = validation.validate_and_lock({"volume_id": vid, "dest_host": dest, "force_host_copy": True,
                                             "speed_mib": 0}, "bench:host-copy-cinder", cinder)  # fmt: skip
        flow.host_copy(plan, cinder, state)
        flow.commit(plan, cinder)
        status = cinder.get_volume(vid)["migration_status"]
    seconds = time.monotonic() - started
    volume = cinder.get_volume(vid)
    after = storage.digest(backend_of(dest), flow.lun_of(volume))
    source_gone = wait_until(lambda: not storage.holds(source, name), 60, 0.5)
    cinder.request("DELETE", f"/volumes/{vid}")
    return {"path": path, "from": source, "to": backend_of(dest), "status": status, "seconds": round(seconds, 2),
            "mib_s": round(1024 / seconds, 1), "verified": after == before, "source_gone": source_gone}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| path | from -> to | status | seconds (median) | MiB/s | data verified | source gone |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for path, source, dest in CASES:
        mine = [r for r in rows if (r["path"], r["from"], r["to"]) == (path, source, backend_of(dest))]
        seconds = statistics.median(r["seconds"] for r in mine)
        out.append(f"| {path} | {source} -> {backend_of(dest)} | {','.join(sorted({r['status'] for r in mine}))} | "
                   f"{seconds:.1f} | {1024 / seconds:.0f} | {all(r['verified'] for r in mine)} | "
                   f"{all(r['source_gone'] for r in mine)} |")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all cases, interleaved (default 1)")
    parser.add_argument("--root", type=Path, help="lab root (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with whole_lab(args.root, "host-copy-lab-", "local", (), args.keep) as (lab, _airflow, cinder):
        storage, state = Storage(lab), Path(tempfile.mkdtemp(prefix="host-copy-state-"))
        for round_ in range(args.repeat):
            for path, source, dest in CASES:
                rows.append(one(path, source, dest, cinder, storage, state))
                print(f"round {round_ + 1}: {rows[-1]}", flush=True)
    lines = table(rows)
    print("\n".join(["", *lines]))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "rows": rows,
                                   "table": lines}, indent=1) + "\n")  # fmt: skip
    return 0 if all(r["verified"] and r["source_gone"] and r["status"] == "success" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
