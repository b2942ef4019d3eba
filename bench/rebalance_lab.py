#!/usr/bin/env python3
"""The rebalance proof on the lab: hundreds of volumes drained off alpha under the limits, watched from outside.

1. a fresh lab (``--root``) with four arrays: alpha (two pools of ``--pool-gib``,
   the source), beta (two pools) and delta (one pool), which take volumes over,
   and gamma; ``--volumes`` volumes of 1 GiB created in alpha (Cinder spreads
   them over its two pools); data written into every ``--sample-every``-th;
2. a ``volume_migration`` started by hand (gamma -> beta#pool1, throttled) just
   before the rebalance: the dispatcher must count it;
3. rebalance run 1 (``--threshold``, ``--limits``) while Cinder and the arrays
   are sampled every second (``lab.concurrency``); once ``--stop-after`` moves
   have ended, the destination array delta is stopped, and started again
   ``--down-s`` seconds later: its moves fail or are not started, with the
   reason, and the others go on;
4. rebalance run 2 with the same params finishes the job;
5. checks, printed as a table and kept in ``bench/results/rebalance_lab.json``:
   the sampled peaks per source pool, per destination pool and in total never
   above the limits; every volume in each run's summary; alpha's pools at or
   below the threshold after run 2; no volume left locked; the sample's data
   read back the same.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/rebalance_lab.py [--quick] [--keep]``
(about 15 minutes with the defaults on 2 cores; ``--quick``: 40 volumes).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.measure import log
from include.backends.base import GiB
from include.migration.inventory import read_pools
from include.migration.rebalance import TOTAL
from lab import verify
from lab.cli import airflow_of, down_all, services_of, up_all
from lab.concurrency import MigrationSampler, highest
from lab.fill import create_volumes, lift_quotas
from lab.lab import ArraySpec, Lab
from lab.procutil import wait_until
from lab.services.cinder import CINDER_HOST

RESULTS = Path(__file__).resolve().parent / "results" / "rebalance_lab.json"
REBALANCE, MIGRATION = "volume_rebalance", "volume_migration"
SOURCE, STOPPED = "alpha", "delta"
RUN_TIMEOUT = 3 * 3600


def specs(pool_gib: int) -> tuple[ArraySpec, ...]:
    size = pool_gib * GiB
    return (
        ArraySpec("alpha", "reference", {"pool1": size, "pool2": size}),
        ArraySpec("beta", "reference", {"pool1": size, "pool2": size}),
        ArraySpec("delta", "reference", {"pool1": size}),
        ArraySpec("gamma", "plain", {"pool1": 40 * GiB}),
    )


def pool(array: str, name: str = "pool1") -> str:
    return f"{CINDER_HOST}@{array}#{name}"


BLOCK, STRIDE, CHUNK = 2**20, 64 * 2**20, 8 * 2**20


def seed(lab: Lab, array: str, lun: str, rng_seed: int) -> dict[int, bytes]:
    """1 MiB of random data every 64 MiB of the LUN; returns what was written where (the rest stays zero)."""
    rng, written = random.Random(rng_seed), {}
    backend = lab.backend(array)
    handle = verify.connect(backend.export_lun(lun).uri)
    for off in range(0, GiB, STRIDE):
        written[off] = rng.randbytes(BLOCK)
        handle.pwrite(written[off], off)
    handle.flush()
    handle.shutdown()
    backend.unexport_lun(lun)
    return written


def read_back(lab: Lab, cinder: Any, volume_id: str, written: dict[int, bytes]) -> int:
    """Chunks of the whole LUN, where the volume is now, that differ from what was written (zero elsewhere)."""
    host = cinder.get_volume(volume_id)["os-vol-host-attr:host"]
    backend = lab.backend(host.split("@")[1].split("#")[0])
    lun = f"volume-{volume_id}"
    handle = verify.connect(backend.export_lun(lun).uri)
    bad = 0
    try:
        for off in range(0, GiB, CHUNK):
            expected = bytearray(CHUNK)
            for at, block in written.items():
                if off <= at < off + CHUNK:
                    expected[at - off : at - off + len(block)] = block
            bad += handle.pread(CHUNK, off) != expected
        return bad
    finally:
        handle.shutdown()
        backend.unexport_lun(lun)


def used(cinder: Any) -> dict[str, float]:
    return {p.name: round(p.used_ratio, 4) for p in read_pools(cinder)}


def stop_and_restart(lab: Lab, cinder: Any, after_moves: int, down_s: float, done: threading.Event,
                     record: dict[str, Any]) -> None:  # fmt: skip
    """Stop delta once ``after_moves`` migrations have ended (``success``), start it ``down_s`` later."""
    deadline = time.monotonic() + 3600
    while not done.is_set() and time.monotonic() < deadline:
        ended = sum(1 for v in cinder.list_volumes() if v.get("migration_status") == "success")
        if ended >= after_moves:
            record["stopped_at_moves"] = ended
            record["stopped"] = lab.stop(STOPPED)
            log(f"array {STOPPED} stopped after {ended} moves; starting it again in {down_s:.0f} s")
            done.wait(down_s)
            record["restarted_pid"] = lab.start(STOPPED)
            log(f"array {STOPPED} started again")
            return
        done.wait(2.0)


def rebalance(api: Any, conf: dict[str, Any], sampler: MigrationSampler) -> dict[str, Any]:
    started = time.monotonic()
    run_id = api.trigger(REBALANCE, conf)
    run = api.wait_run(REBALANCE, run_id, RUN_TIMEOUT, interval=5.0)
    summary = api.xcom(REBALANCE, run_id, "summarize") if run["state"] == "success" else None
    return {"run_id": run_id, "state": run["state"], "seconds": round(time.monotonic() - started, 1),
            "summary": summary, "peaks": dict(sampler.peaks), "samples": sampler.samples,
            "sample_failures": sampler.failures[:5]}  # fmt: skip


def within(peaks: dict[str, int], limits: dict[str, int]) -> bool:
    return (highest(peaks, "off:") <= limits["max_per_source"]
            and highest(peaks, "onto:") <= limits["max_per_destination"]
            and peaks.get(TOTAL, 0) <= limits["max_total"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="lab root (default: a new temporary folder)")
    parser.add_argument("--volumes", type=int, default=220)
    parser.add_argument("--pool-gib", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=60.0)
    parser.add_argument("--limits", default="2,2,3", help="max_per_source,max_per_destination,max_total")
    parser.add_argument("--sample-every", type=int, default=20, help="write data into every N-th volume")
    parser.add_argument("--stop-after", type=int, default=12, help="stop delta after this many moves ended")
    parser.add_argument("--down-s", type=float, default=45.0, help="how long delta stays stopped")
    parser.add_argument("--quick", action="store_true", help="40 volumes in 24 GiB pools")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args(argv)
    if args.quick:
        args.volumes, args.pool_gib, args.stop_after, args.down_s, args.sample_every = 40, 24, 4, 30.0, 8
    per_source, per_destination, total = (int(x) for x in args.limits.split(","))
    limits = {"max_per_source": per_source, "max_per_destination": per_destination, "max_total": total}

    lab = Lab(args.root or Path(tempfile.mkdtemp(prefix="rebalance-lab-")))
    lab.configure(specs(args.pool_gib))
    result: dict[str, Any] = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args)}
    result["args"]["root"] = str(lab.root)
    try:
        t0 = time.monotonic()
        up_all(lab)
        log(f"lab up in {time.monotonic() - t0:.0f} s at {lab.root}")
        services, api = services_of(lab), airflow_of(lab).api
        cinder = services.cinder_hook()
        lift_quotas(cinder)
        t0 = time.monotonic()
        volumes = create_volumes(cinder, args.volumes, SOURCE, prefix="rebalance")
        result["create_s"] = round(time.monotonic() - t0, 1)
        log(f"{len(volumes)} volumes created in {SOURCE} in {result['create_s']} s: "
            f"{dict(Counter(v['os-vol-host-attr:host'] for v in volumes))}")  # fmt: skip
        # plan on pool stats that count these volumes (the drivers report them every 5 s)
        wait_until(lambda: sum(used(cinder)[pool(SOURCE, p)] for p in ("pool1", "pool2")) * args.pool_gib
                   >= args.volumes - 0.5, 120, 2)  # fmt: skip
        models = {v["id"]: seed(lab, SOURCE, f"volume-{v['id']}", i)
                  for i, v in enumerate(volumes) if i % args.sample_every == 0}  # fmt: skip
        manual = create_volumes(cinder, 1, "gamma", prefix="manual")[0]
        models[manual["id"]] = seed(lab, "gamma", f"volume-{manual['id']}", 10_000)
        result["before"] = used(cinder)
        include = [pool(SOURCE), pool(SOURCE, "pool2"), pool("beta"), pool("beta", "pool2"), pool(STOPPED)]
        conf = {"threshold": args.threshold, "include_pools": include, "speed_mib": 0, **limits}
        log(f"pools before: {result['before']}; rebalance conf {conf}")

        done, record = threading.Event(), {}
        with MigrationSampler(cinder, lab) as sampler:
            manual_run = api.trigger(MIGRATION, {"volume_id": manual["id"], "dest_host": pool("beta"), "speed_mib": 8},
                                     note="by hand, during the rebalance")  # fmt: skip
            stopper = threading.Thread(target=stop_and_restart,
                                       args=(lab, cinder, args.stop_after, args.down_s, done, record))  # fmt: skip
            stopper.start()
            result["run1"] = rebalance(api, conf, sampler)
            done.set()
            stopper.join(timeout=120)
            result["manual"] = api.wait_run(MIGRATION, manual_run, 1800)["state"]
        result["run1"]["stop"] = record
        log(f"run 1: {result['run1']['state']} in {result['run1']['seconds']} s; "
            f"{(result['run1']['summary'] or {}).get('counts')}; {sampler.table()}")  # fmt: skip
        time.sleep(10)  # the pools' stats reach Cinder's scheduler every 5 s
        with MigrationSampler(cinder, lab) as sampler2:
            result["run2"] = rebalance(api, conf, sampler2)
        log(f"run 2: {result['run2']['state']} in {result['run2']['seconds']} s; "
            f"{(result['run2']['summary'] or {}).get('counts')}; {sampler2.table()}")  # fmt: skip
        time.sleep(10)
        result["after"] = used(cinder)
        ids = [v["id"] for v in volumes] + [manual["id"]]
        states = {vid: cinder.get_volume(vid) for vid in ids}
        locked = [vid for vid, v in states.items() if v.get("migration_status") not in (None, "success", "error")]
        bad = {vid: read_back(lab, cinder, vid, model) for vid, model in models.items()}
        checks = {
            "run 1 and run 2 succeeded": result["run1"]["state"] == result["run2"]["state"] == "success",
            "the manual run succeeded": result["manual"] == "success",
            "run 1 peaks within the limits (manual run included)": within(result["run1"]["peaks"], limits),
            "run 2 peaks within the limits": within(result["run2"]["peaks"], limits),
            "every volume in run 1's summary": all(
                set(ids) <= {m["volume_id"] for m in s["moves"]} | {k["volume_id"] for k in s["skipped"]}
                for s in [result["run1"]["summary"] or {"moves": [], "skipped": []}]
            ),
            "run 1 has moves failed or not started to delta, with a reason": any(
                m["destination"] == pool(STOPPED) and m["outcome"] in ("failed", "not_started") and m["reason"]
                for m in (result["run1"]["summary"] or {}).get("moves", [])
            ),
            f"{SOURCE}'s pools at or below the threshold after run 2": all(
                result["after"][p] <= args.threshold / 100 + 1e-9 for p in include[:2]
            ),
            "no volume left locked": not locked,
            "the sample's data read back the same": not any(bad.values()),
        }
        result.update(checks=checks, locked=locked, bad_sectors=bad)
        moves1 = Counter(m["outcome"] for m in (result["run1"]["summary"] or {}).get("moves", []))
        moves2 = Counter(m["outcome"] for m in (result["run2"]["summary"] or {}).get("moves", []))
        print(f"\n## rebalance in the lab ({result['date']}, {result['machine']})\n")
        print(f"{args.volumes} volumes of 1 GiB on {SOURCE} ({args.pool_gib} GiB pools), threshold "
              f"{args.threshold}%, limits {args.limits} (per source, per destination, total); "
              f"{STOPPED} stopped after {record.get('stopped_at_moves')} moves for {args.down_s:.0f} s\n")  # fmt: skip
        print("| run | state | seconds | moves | peak off one pool | peak onto one pool | peak total | samples |")
        print("|---|---|---|---|---|---|---|---|")
        for name, moves in (("run1", moves1), ("run2", moves2)):
            r = result[name]
            peaks = r["peaks"]
            off, onto = highest(peaks, "off:"), highest(peaks, "onto:")
            print(f"| {name} | {r['state']} | {r['seconds']} | {dict(moves)} | {off} | {onto} | "
                  f"{peaks.get('total', 0)} | {r['samples']} |")  # fmt: skip
        print("\n| pool | before | after |\n|---|---|---|")
        for name in sorted(result["after"]):
            print(f"| {name} | {100 * result['before'].get(name, 0):.1f}% | {100 * result['after'][name]:.1f}% |")
        print("\n| check | |\n|---|---|")
        for check, ok in checks.items():
            print(f"| {check} | {'yes' if ok else 'NO'} |")
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1, default=str))
        log(f"details in {RESULTS}")
        return 0 if all(checks.values()) else 1
    finally:
        if not args.keep:
            down_all(lab)


if __name__ == "__main__":
    sys.exit(main())
