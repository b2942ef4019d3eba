#!/usr/bin/env python3
"""Cinder's own migration side by side with the project's host copy and its takeover, one lab, one run (issue 24).

Each path moves a fresh volume of the same size (``--size-gib``, default 1) from beta to alpha#pool1, every byte
random data written before; a client attached through Cinder reads and writes it from the first moment Cinder
lets it attach until the move ends, and the destination is read back whole against the model of every write:

* ``cinder migrate --force-host-copy``: Cinder's generic copy in cinder-volume (the lab arrays' NBD volumes opened
  with the project's connector); the volume is ``maintenance`` until the migration ends, and Cinder attaches only
  an ``available`` one;
* ``host copy``: the project's ``volume_migration`` DAG with ``force_host_copy`` (the copy through Cinder's
  attachments on the Airflow worker);
* ``takeover``: the same DAG, its default path: alpha takes the volume over and copies it in the background; the
  volume is attachable (``migrating_attachable``) from the takeover on.

Per path: the time until the volume is usable (attachable) and until the move ends (``success``), from the
request; the copy's MiB/s (the size over the time to the end); the client's operations per second while the move
lasted after it attached (0: it could not attach before the end); data verified. The paths run interleaved,
``--repeat`` rounds; the table shows medians. Raw figures go to ``bench/results/side_by_side.json``.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/side_by_side.py [--size-gib 1] [--repeat 1] [--keep]``
(a fresh lab in a temporary folder; about 6 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.attachable import whole_lab
from bench.measure import log
from include.backends.base import GiB, MiB
from include.cinder_plugin.names import MIGRATING_ATTACHABLE
from include.migration.flow import lun_of
from include.migration.steps import MIGRATION_DAG
from lab import verify
from lab.attached_client import AttachedClient
from lab.fill import create_volumes
from lab.services.cinder import CINDER_HOST

RESULTS = Path(__file__).resolve().parent / "results" / "side_by_side.json"
SOURCE, DEST = "beta", f"{CINDER_HOST}@alpha#pool1"
PATHS = ("cinder migrate --force-host-copy", "host copy", "takeover")
POLL_S = 0.2


def filled(lab: Any, lun: str, size: int, rng: random.Random) -> verify.DataModel:
    """Random data over the whole LUN on the source array; the model of its content."""
    content = b"".join(rng.randbytes(MiB) for _ in range(size // MiB))  # randbytes takes less than 256 MiB
    array = lab.backend(SOURCE)
    handle = verify.connect(array.export_lun(lun).uri)
    try:
        for offset in range(0, size, 4 * MiB):  # within the NBD servers' largest request (32 MiB for QEMU's)
            handle.pwrite(content[offset : offset + 4 * MiB], offset)
        handle.flush()
    finally:
        handle.shutdown()
        array.unexport_lun(lun)
    return verify.DataModel(size, content)


def start(path: str, vid: str, cinder: Any, api: Any) -> str | None:
    """Ask for the move; the DAG run's id (None: Cinder's own)."""
    if path == "cinder migrate --force-host-copy":
        cinder.action(vid, "os-migrate_volume", {"host": DEST, "force_host_copy": True})
        return None
    conf = {
        "volume_id": vid,
        "dest_host": DEST,
        "speed_mib": 0,
        **({"force_host_copy": True} if path == "host copy" else {}),
    }
    return api.trigger(MIGRATION_DAG, conf)


def one(path: str, lab: Any, cinder: Any, api: Any, size_gib: int, rng: random.Random) -> dict[str, Any]:
    size = size_gib * GiB
    volume = create_volumes(cinder, 1, SOURCE, size_gib, prefix="side-by-side", timeout=120)[0]
    vid = volume["id"]
    model = filled(lab, lun_of(volume), size, rng)
    client = AttachedClient(cinder, vid, model, random.Random(rng.random()), timeout=120,
                            usable=(MIGRATING_ATTACHABLE, "success"))  # fmt: skip
    client.start()
    started = time.monotonic()
    run_id = start(path, vid, cinder, api)
    usable_s = done_s = None
    seen: dict[str, Any] = {}
    while time.monotonic() - started < 1800:
        seen.update(cinder.get_volume(vid))
        status = seen.get("migration_status")
        if usable_s is None and status in (MIGRATING_ATTACHABLE, "success"):
            usable_s = time.monotonic() - started
        if status in ("success", "error"):
            done_s = time.monotonic() - started
            break
        time.sleep(POLL_S)
    ops_during = client.ops
    attached_s = None if client.attached_at is None else client.attached_at - started
    client.detach()
    run_state = api.wait_run(MIGRATION_DAG, run_id, 600)["state"] if run_id else None
    moved = cinder.get_volume(vid)
    content = verify.read_lun(lab.backend("alpha"), lun_of(moved), size)
    mismatches = model.mismatches(content)
    cinder.request("DELETE", f"/volumes/{vid}")
    during = None if attached_s is None or done_s is None or attached_s >= done_s else done_s - attached_s
    return {
        "path": path, "size_gib": size_gib, "status": seen.get("migration_status"), "run_state": run_state,
        "usable_s": _rounded(usable_s), "done_s": _rounded(done_s),
        "mib_s": round(size / MiB / done_s, 1) if done_s else None,
        "client_iops": round(ops_during / during, 1) if during else 0.0, "client_ops": ops_during,
        "client_errors": client.errors, "lost": client.lost, "bad_reads": client.bad_reads,
        "verified": not mismatches and moved["os-vol-host-attr:host"] == DEST,
    }  # fmt: skip


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def table(rows: list[dict[str, Any]]) -> list[str]:
    def median(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known):.1f}" if known and len(known) == len(values) else "-"

    out = ["| path | runs | usable after (s) | ended after (s) | copy MiB/s | client IOPS during the move | verified |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for path in PATHS:
        mine = [r for r in rows if r["path"] == path]
        out.append(f"| {path} | {len(mine)} | {median([r['usable_s'] for r in mine])} | "
                   f"{median([r['done_s'] for r in mine])} | {median([r['mib_s'] for r in mine])} | "
                   f"{median([r['client_iops'] for r in mine])} | {all(r['verified'] for r in mine)} |")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three paths, interleaved")
    parser.add_argument("--root", type=Path, help="lab root (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    args = parser.parse_args()
    rng, rows = random.Random(24), []
    with whole_lab(args.root, "side-by-side-", "local", (MIGRATION_DAG,), args.keep) as (lab, airflow, cinder):
        for round_ in range(args.repeat):
            for path in PATHS:
                rows.append(one(path, lab, cinder, airflow.api, args.size_gib, rng))
                log(f"round {round_ + 1}: {rows[-1]}")
    lines = table(rows)
    print(
        "\n".join(["", f"{args.size_gib} GiB, beta -> alpha#pool1, {platform.node()}, {os.cpu_count()} CPUs", *lines])
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "rows": rows,
                                   "table": lines}, indent=1) + "\n")  # fmt: skip
    ok = all(r["verified"] and r["status"] == "success" and not r["lost"] and not r["bad_reads"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
