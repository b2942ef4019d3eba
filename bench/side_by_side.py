#!/usr/bin/env python3
"""Cinder's own migration side by side with the project's paths, one lab, one run, one table (issues 24 and 21).

Each path moves a fresh volume of the same size (``--sizes``, GiB, default 1) filled with random data; a client
attached through Cinder first works on it idle for ``IDLE_S`` seconds (its idle rate), then reads and writes it
from the first moment Cinder lets it attach during the move until the move ends; the destination is read back
whole against the fill and the model of every write (the client works in the first GiB). Two sets (``--set``):

``beta`` (beta -> alpha#pool1, lab arrays):
* ``cinder migrate --force-host-copy``: Cinder's generic copy in cinder-volume (the lab arrays' NBD volumes opened
  with the project's connector); the volume is ``maintenance`` until the migration ends, and Cinder attaches only
  an ``available`` one;
* ``host copy``: the project's ``volume_migration`` DAG with ``force_host_copy`` (the copy through Cinder's
  attachments on the Airflow worker);
* ``takeover``: the same DAG, its default path: alpha takes the volume over and copies it in the background.

``ceph`` (from ceph-hdd):
* ``cinder migrate`` to ceph-ssd: Cinder's RBD driver, a synchronous ``image.copy()`` between the pools;
* ``live migration`` to ceph-ssd: the DAG, its default path: ceph-ssd's ``AsyncRBDDriver`` takes the volume over
  by RBD live migration (the Ceph manager copies);
* ``host copy`` to alpha#pool1: the DAG with ``force_host_copy``;
* ``takeover`` to alpha#pool1: the DAG, its default path: alpha opens the RBD image with QEMU's rbd driver.

Before the paths, one run of the lab's empty DAG of the same shape warms Airflow's worker up. Per path: the time
until the volume is usable (attachable) and until the move ends (``success``), from the
request; the copy's MiB/s (the size over the time to the end); the client's operations per second while the move
lasted after it attached (0: it could not attach before the end), and as a share of its idle rate; data verified.
The paths run interleaved, ``--repeat`` rounds per size; the table shows medians. Raw figures go to
``bench/results/side_by_side[_ceph].json``.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/side_by_side.py [--set beta|ceph] [--sizes 1,10]
[--repeat 1] [--paths live,takeover] [--keep]`` (a fresh lab in a temporary folder; about 6 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.attachable import BEFORE_ATTACHABLE, floor_case, task_times, whole_lab
from bench.measure import log
from include.backends.base import GiB, MiB
from include.cinder_plugin.names import MIGRATING_ATTACHABLE
from include.migration.flow import lun_of
from include.migration.steps import MIGRATION_DAG, Step
from lab import verify
from lab.attached_client import AttachedClient
from lab.cli import ceph_of
from lab.dags.migration_floor import FLOOR_DAG
from lab.fill import create_volumes
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import CINDER_HOST

RESULTS = Path(__file__).resolve().parent / "results"
ALPHA, SSD = f"{CINDER_HOST}@alpha#pool1", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
POLL_S = 0.2
IDLE_S = 8.0  # the client's idle rate: this long on the volume before its move
BLOCK = 4 * MiB  # the fill's unit (within QEMU's NBD server's largest request, 32 MiB)
HOT = GiB  # the client reads and writes the volume's first GiB (its model is that big, not the volume)


@dataclass(frozen=True)
class MovePath:
    name: str
    source: str  # the source backend
    dest: str  # the destination pool
    how: str  # "cinder", "host copy" or "dag"


SETS = {
    "beta": (
        MovePath("cinder migrate --force-host-copy", "beta", ALPHA, "cinder host copy"),
        MovePath("host copy", "beta", ALPHA, "host copy"),
        MovePath("takeover", "beta", ALPHA, "dag"),
    ),
    "ceph": (
        MovePath("cinder migrate (RBD image.copy)", "ceph-hdd", SSD, "cinder"),
        MovePath("live migration (AsyncRBDDriver)", "ceph-hdd", SSD, "dag"),
        MovePath("host copy to alpha", "ceph-hdd", ALPHA, "host copy"),
        MovePath("takeover by alpha (QEMU rbd)", "ceph-hdd", ALPHA, "dag"),
    ),
}


def fill_block(seed: int, index: int) -> bytes:
    """Block ``index`` of a fill: regenerated to check a volume too big to keep its model in memory."""
    return random.Random(seed * 1_000_003 + index).randbytes(BLOCK)


@contextlib.contextmanager
def opened(lab: Any, backend: str, lun: str) -> Iterator[Any]:
    """A handle on LUN ``lun`` of a lab array (an NBD export made for it) or a Ceph backend (librbd)."""
    if backend in CEPH_POOLS:
        with ceph_of(lab).open_image(CEPH_POOLS[backend], lun) as handle:
            yield handle
        return
    array = lab.backend(backend)
    handle = verify.connect(array.export_lun(lun).uri)
    try:
        yield handle
    finally:
        handle.shutdown()
        array.unexport_lun(lun)


def fill(lab: Any, backend: str, lun: str, size: int, seed: int) -> verify.DataModel:
    """Random data over the whole volume; the model of its first ``HOT`` bytes."""
    with opened(lab, backend, lun) as handle:
        for index in range(size // BLOCK):
            handle.pwrite(fill_block(seed, index), index * BLOCK)
        handle.flush()
    hot = min(size, HOT)
    return verify.DataModel(hot, b"".join(fill_block(seed, i) for i in range(hot // BLOCK)))


def mismatched(lab: Any, backend: str, lun: str, size: int, seed: int, model: verify.DataModel) -> int:
    """Blocks of the volume that differ from the model (its hot part) or from the fill (the rest)."""
    bad = 0
    with opened(lab, backend, lun) as handle:
        for index in range(size // BLOCK):
            got = handle.pread(BLOCK, index * BLOCK)
            if index * BLOCK < model.size:
                bad += bool(model.mismatches(got, index * BLOCK))
            else:
                bad += got != fill_block(seed, index)
    return bad


def start(path: MovePath, vid: str, cinder: Any, api: Any) -> str | None:
    """Ask for the move; the DAG run's id (None: Cinder's own)."""
    if path.how.startswith("cinder"):
        cinder.action(vid, "os-migrate_volume", {"host": path.dest, "force_host_copy": path.how == "cinder host copy"})
        return None
    conf = {"volume_id": vid, "dest_host": path.dest, "speed_mib": 0,
            **({"force_host_copy": True} if path.how == "host copy" else {})}  # fmt: skip
    return api.trigger(MIGRATION_DAG, conf)


def idle_rate(cinder: Any, vid: str, model: verify.DataModel, rng: random.Random) -> float:
    """The client's operations per second on the volume before its move (nothing else runs on it)."""
    client = AttachedClient(cinder, vid, model, rng, timeout=120, usable=(None,))
    client.start()
    if not client.wait_attached(60):
        client.detach()
        return 0.0
    time.sleep(IDLE_S)
    ops, since = client.ops, time.monotonic() - (client.io_started or time.monotonic())
    client.detach()
    return ops / since if since > 0 else 0.0


def one(path: MovePath, lab: Any, cinder: Any, api: Any, size_gib: int, rng: random.Random) -> dict[str, Any]:
    size, seed = size_gib * GiB, rng.randrange(1 << 30)
    volume = create_volumes(cinder, 1, path.source, size_gib, prefix="side-by-side", timeout=300)[0]
    vid = volume["id"]
    model = fill(lab, path.source, lun_of(volume), size, seed)
    idle = idle_rate(cinder, vid, model, random.Random(rng.random()))
    client = AttachedClient(cinder, vid, model, random.Random(rng.random()), timeout=120,
                            usable=(MIGRATING_ATTACHABLE, "success"))  # fmt: skip
    client.start()
    started, triggered = time.monotonic(), time.time()
    run_id = start(path, vid, cinder, api)
    usable_s = done_s = None
    seen: dict[str, Any] = {}
    while time.monotonic() - started < 3600:
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
    tasks = task_times(api, MIGRATION_DAG, run_id, triggered) if run_id else {}
    moved = cinder.get_volume(vid)
    where = moved["os-vol-host-attr:host"]
    bad = mismatched(lab, where.split("@")[1].split("#")[0], lun_of(moved), size, seed, model)
    cinder.request("DELETE", f"/volumes/{vid}")
    during = None if attached_s is None or done_s is None or attached_s >= done_s else done_s - attached_s
    iops = round(ops_during / during, 1) if during else 0.0
    return {
        "path": path.name, "size_gib": size_gib, "status": seen.get("migration_status"), "run_state": run_state,
        "usable_s": _rounded(usable_s), "done_s": _rounded(done_s),
        "mib_s": round(size / MiB / done_s, 1) if done_s else None,
        "client_iops": iops, "idle_iops": round(idle, 1), "iops_share": round(iops / idle, 2) if idle else None,
        "client_ops": ops_during, "client_errors": client.errors, "lost": client.lost, "bad_reads": client.bad_reads,
        "bad_blocks": bad, "verified": not bad and where == path.dest,
        # where the time to usable went: each task before it (Airflow's timestamps; bench/attachable.py)
        "tasks": {step: {k: v for k, v in times.items() if k != "end"} for step, times in tasks.items()},
    }  # fmt: skip


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def table(rows: list[dict[str, Any]], paths: tuple[MovePath, ...]) -> list[str]:
    def median(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known):.1f}" if known and len(known) == len(values) else "-"

    out = ["| path | GiB | runs | usable after (s) | ended after (s) | copy MiB/s | client IOPS during the move "
           "| share of idle IOPS | verified |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in sorted({r["size_gib"] for r in rows}):
        for path in paths:
            mine = [r for r in rows if r["path"] == path.name and r["size_gib"] == size]
            share = median([r["iops_share"] for r in mine])
            out.append(f"| {path.name} | {size} | {len(mine)} | {median([r['usable_s'] for r in mine])} | "
                       f"{median([r['done_s'] for r in mine])} | {median([r['mib_s'] for r in mine])} | "
                       f"{median([r['client_iops'] for r in mine])} | {share} | "
                       f"{all(r['verified'] for r in mine)} |")  # fmt: skip
    return out


def task_table(rows: list[dict[str, Any]], paths: tuple[MovePath, ...]) -> list[str]:
    """Where the takeovers' time to usable went: each task's run before it, and Airflow's share (the gaps and
    waits between the tasks: the scheduler and the executor), medians."""
    steps = list(BEFORE_ATTACHABLE)
    out = [f"| path | GiB | {' | '.join(f'{step} (s)' for step in steps)} | Airflow between (s) |",
           "|---|---|" + "---|" * (len(steps) + 1)]  # fmt: skip
    for size in sorted({r["size_gib"] for r in rows}):
        for path in paths:
            mine = [r for r in rows if r["path"] == path.name and r["size_gib"] == size
                    and (r.get("tasks") or {}).get(Step.TARGET_TAKEOVER, {}).get("state") == "success"]  # fmt: skip
            if not mine:
                continue
            runs = [statistics.median(r["tasks"][step]["run_s"] or 0 for r in mine) for step in steps]
            between = statistics.median(sum((t["gap_s"] or 0) + (t["wait_s"] or 0) for t in r["tasks"].values())
                                        for r in mine)  # fmt: skip
            out.append(f"| {path.name} | {size} | {' | '.join(f'{v:.2f}' for v in runs)} | {between:.2f} |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="beta", help="the paths compared (see above)")
    parser.add_argument("--sizes", default="1", help="volume sizes in GiB, comma-separated (e.g. 1,10)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the paths per size, interleaved")
    parser.add_argument("--paths", help="only the set's paths whose names contain one of these (comma-separated)")
    parser.add_argument("--root", type=Path, help="lab root (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    args = parser.parse_args()
    paths, sizes = SETS[args.set], [int(s) for s in args.sizes.split(",")]
    if args.paths:
        paths = tuple(p for p in paths if any(part in p.name for part in args.paths.split(",")))
        if not paths:
            parser.error(f"no path of set {args.set} matches --paths {args.paths}")
    rng, rows = random.Random(24), []
    dags = (MIGRATION_DAG, FLOOR_DAG)
    with whole_lab(args.root, "side-by-side-", "local", dags, args.keep) as (lab, airflow, cinder):
        # a run of the lab's empty DAG of the same shape first: the first task a fresh lab's worker runs takes
        # seconds more (measured 2026-12-07: 2.4 s before the task's own code), which the first DAG path measured
        # would carry
        floor_case(airflow.api, 1)
        for size in sizes:
            for round_ in range(args.repeat):
                for path in paths:
                    rows.append(one(path, lab, cinder, airflow.api, size, rng))
                    log(f"{size} GiB, round {round_ + 1}: {rows[-1]}")
    lines = table(rows, paths) + ["", *task_table(rows, paths)]
    moves = ", ".join(sorted({f"{p.source} -> {p.dest}" for p in paths}))
    print("\n".join(["", f"{moves}; {platform.node()}, {os.cpu_count()} CPUs", *lines]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("side_by_side.json" if args.set == "beta" else f"side_by_side_{args.set}.json")
    out.write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "rows": rows, "table": lines},
                              indent=1) + "\n")  # fmt: skip
    ok = all(r["verified"] and r["status"] == "success" and not r["lost"] and not r["bad_reads"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
