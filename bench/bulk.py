#!/usr/bin/env python3
"""Many migrations at once, and many deferred waits in one triggerer, on the lab.

* ``bulk`` (``--runs``, each ``N``): N volumes of 1 GiB on beta, filled with
  random data. First the machine's own copy rate for that data: ``qemu-img
  convert -n`` from each source export into a fresh LUN on alpha, N processes
  at once. Then N ``volume_migration`` runs to alpha, triggered together,
  unthrottled (``speed_mib`` 0): the time each took to be attachable (seen
  through Cinder), the aggregate copy rate (N GiB over the time from the
  first volume attachable to the last copy seen done by alpha, polled every
  second), the end-to-end rate (trigger to every run ended), and the
  triggerer's memory (its process tree's peak RSS while it holds the waits).
  Both copies read the sources as the fill left them (in the page cache as
  far as it holds them), and every target is checked against 16 sampled MiB
  of its source.
* ``waits`` (``--waits M``): one takeover beta -> alpha through Cinder, paused; one run of the
  lab's ``bench_waits`` DAG maps the project's ``TargetCopySensor`` M times
  on it. Once all M are deferred: the triggerer's RSS and CPU over 30 s,
  against the same triggerer idle before; then the copy is resumed and every
  wait ends.

Prints one table; raw figures go to ``bench/results/bulk.json``.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/bulk.py [--runs 8,32] [--waits 1000]
[--quick] [--keep]`` (a fresh lab in a temporary folder; about 15 minutes with the defaults, 4 with ``--quick``:
8 runs, 100 waits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.attachable import DEST, look_for_attachable, percentile, trigger_together, whole_lab
from bench.measure import fill_random, log, mibs
from include.backends.base import GiB, MiB, MigrationState
from include.migration.errors import CinderError
from include.migration.steps import MIGRATION_DAG
from lab import verify
from lab.dags.bench_waits import WAIT_TASK, WAITS_DAG
from lab.fill import create_volumes, delete_volumes
from lab.lab import Lab
from lab.procutil import cpu_ticks, process_tree, tree_rss_kib, wait_until

RESULTS = Path(__file__).resolve().parent / "results" / "bulk.json"
QEMU_IMG_CONVERT = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw"]
SAMPLES = 16  # MiB blocks compared per volume


def sample_digests(uri: str, size: int, seed: int) -> dict[int, str]:
    rng = random.Random(seed)
    offsets = sorted({rng.randrange(0, size // MiB) * MiB for _ in range(SAMPLES)})
    handle = verify.connect(uri)
    try:
        return {off: hashlib.sha256(handle.pread(MiB, off)).hexdigest() for off in offsets}
    finally:
        handle.shutdown()


def convert_all(lab: Lab, luns: list[str]) -> float:
    """``qemu-img convert -n`` of every source LUN (beta) into a new LUN on alpha, all at once; returns MiB/s."""
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    pairs = []
    for lun in luns:
        alpha.create_lun(f"base-{lun}", GiB, "pool1")
        pairs.append((beta.export_lun(lun).uri, alpha.export_lun(f"base-{lun}").uri))
    started = time.monotonic()
    procs = [subprocess.Popen([*QEMU_IMG_CONVERT, s, d], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for s, d in pairs]  # fmt: skip
    failed = [p.stderr.read().decode()[-300:] for p in procs if p.wait(timeout=1800)]  # type: ignore[union-attr]
    wall = time.monotonic() - started
    for lun in luns:
        alpha.unexport_lun(f"base-{lun}")
        alpha.delete_lun(f"base-{lun}")
        beta.unexport_lun(lun)
    if failed:
        raise RuntimeError(f"qemu-img convert failed: {failed[0]}")
    return mibs(len(luns) * GiB, wall)


def bulk(lab: Lab, api: Any, cinder: Any, runs: int, triggerer: int | None) -> dict[str, Any]:
    """``runs`` migrations of filled 1 GiB volumes at once, against ``qemu-img convert`` of the same data;
    ``triggerer``: the PID of the triggerer whose memory is sampled."""
    log(f"bulk {runs}: {runs} volumes of 1 GiB on beta, filled with random data")
    volumes = create_volumes(cinder, runs, "beta", 1, prefix="bulk")
    ids = [v["id"] for v in volumes]
    luns = [f"volume-{vid}" for vid in ids]
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    digests = {}
    for i, lun in enumerate(luns):  # lun i: data seeded 100 + i, sampled at offsets seeded i
        uri = beta.export_lun(lun).uri
        fill_random(uri, GiB, seed=100 + i)
        digests[lun] = sample_digests(uri, GiB, seed=i)
    log(f"bulk {runs}: qemu-img convert of the {runs} LUNs to alpha, all at once")
    convert_mibs = convert_all(lab, luns)
    log(f"bulk {runs}: {runs} volume_migration runs to {DEST}, unthrottled")
    triggered = trigger_together(api, MIGRATION_DAG, [{"volume_id": v, "dest_host": DEST, "speed_mib": 0}
                                                       for v in ids])  # fmt: skip
    first = min(at for _, at in triggered)
    attachable: dict[str, float] = {}
    copied: dict[str, float] = {}
    peak_rss = 0
    deadline = time.monotonic() + 1800
    while len(copied) < runs and time.monotonic() < deadline:
        look_for_attachable(cinder, ids, attachable)
        for vid, lun in zip(ids, luns, strict=True):
            if vid in attachable and vid not in copied:
                state = alpha.request("GET", f"/v1/luns/{lun}/migration")["state"]
                if state == MigrationState.DONE.value:
                    copied[vid] = time.time()
        peak_rss = max(peak_rss, tree_rss_kib(triggerer) if triggerer else 0)
        time.sleep(1.0)
    ended = [api.wait_run(MIGRATION_DAG, run_id, 1800, interval=2.0) for run_id, _ in triggered]
    all_ended = time.time()
    states = [r["state"] for r in ended]
    mismatched = []
    for i, lun in enumerate(luns):
        if sample_digests(alpha.export_lun(lun).uri, GiB, seed=i) != digests[lun]:
            mismatched.append(lun)
        alpha.unexport_lun(lun)
    refused = delete_volumes(cinder, ids)
    if refused:
        log(f"volumes not deleted: {refused}")
    times = [attachable[v] - at for v, (_, at) in zip(ids, triggered, strict=True) if v in attachable]
    window = max(copied.values()) - min(attachable.values()) if len(copied) == runs else None
    return {
        "runs": runs,
        "succeeded": states.count("success"),
        "data_verified": not mismatched and len(copied) == runs,
        "mismatched": mismatched,
        "attachable_p50_s": round(percentile(times, 50), 2) if times else None,
        "attachable_p95_s": round(percentile(times, 95), 2) if times else None,
        "copy_mibs": round(mibs(runs * GiB, window), 1) if window else None,
        "end_to_end_mibs": round(mibs(runs * GiB, all_ended - first), 1),
        "qemu_img_convert_mibs": round(convert_mibs, 1),
        "triggerer_peak_rss_mib": round(peak_rss / 1024, 1),
    }


def cpu_share(pid: int, seconds: float) -> float:
    """Percent of one core that ``pid`` and its descendants used over the next ``seconds``."""

    def ticks() -> int:
        return sum(cpu_ticks(p) for p in process_tree(pid))

    busy, started = ticks(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (ticks() - busy) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - started)


def waits(lab: Lab, api: Any, cinder: Any, count: int, triggerer: int, sample_s: float = 30.0) -> dict[str, Any]:
    """``count`` deferred waits on one paused takeover: the triggerer's (PID ``triggerer``) memory, and its CPU
    over ``sample_s`` seconds, against the same before. The takeover is made, paused and ended through Cinder
    (``cinder``: an admin ``CinderApi``), as a migration's is; every wait reads the migration's view in Cinder."""
    log(f"waits {count}: one paused takeover beta -> alpha, {count} deferred waits on it")
    (volume,) = create_volumes(cinder, 1, "beta", 1, prefix="waits")
    vid, owner = volume["id"], "bench:waits"
    cinder.begin_migration(vid, DEST, owner)
    cinder.target_migrate(vid, owner, speed_mib=1)
    if not wait_until(lambda: cinder.migration(vid).get("target_step") != "running", 120, 0.5):
        raise RuntimeError(f"volume {vid} was not taken over within 120 s")
    cinder.copy_control(vid, "pause")
    idle_rss, idle_cpu = tree_rss_kib(triggerer), cpu_share(triggerer, sample_s / 3)
    conf = {"volume_id": vid, "backend": "alpha", "count": count, "timeout_s": 3600}
    started = time.monotonic()
    ((run_id, _),) = trigger_together(api, WAITS_DAG, [conf])
    deferred = 0
    deadline = time.monotonic() + 120 + count
    while time.monotonic() < deadline:
        deferred = api.count_task_instances(WAITS_DAG, run_id, WAIT_TASK, "deferred")
        if deferred == count:
            break
        time.sleep(5.0)
    all_deferred_s = time.monotonic() - started
    rss, busy = tree_rss_kib(triggerer), cpu_share(triggerer, sample_s)
    log(f"waits {count}: {deferred} deferred after {all_deferred_s:.0f} s; resuming the copy")
    cinder.copy_control(vid, "resume")
    cinder.copy_control(vid, "speed", 0)
    run = api.wait_run(WAITS_DAG, run_id, 600 + count, interval=5.0)
    try:
        cinder.finish_migration(vid)
        delete_volumes(cinder, [vid])
    except CinderError as exc:
        log(f"waits cleanup: {exc}")
    return {
        "waits": count,
        "deferred": deferred,
        "all_deferred_s": round(all_deferred_s, 1),
        "run_state": run["state"],
        "triggerer_rss_mib": round(rss / 1024, 1),
        "triggerer_idle_rss_mib": round(idle_rss / 1024, 1),
        "per_wait_kib": round((rss - idle_rss) / max(count, 1), 1),
        "triggerer_cpu_pct": round(busy, 1),
        "triggerer_idle_cpu_pct": round(idle_cpu, 1),
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | setting | result |", "|---|---|---|"]
    for b in results["bulk"]:
        lines.append(
            f"| {b['runs']} migrations at once, 1 GiB each, beta -> alpha | unthrottled | time to attachable p50 "
            f"{b['attachable_p50_s']} s, p95 {b['attachable_p95_s']} s; copy {b['copy_mibs']} MiB/s aggregate vs "
            f"`qemu-img convert` x{b['runs']} {b['qemu_img_convert_mibs']} MiB/s "
            f"({b['copy_mibs'] / b['qemu_img_convert_mibs']:.0%}); trigger to all ended {b['end_to_end_mibs']} MiB/s; "
            f"{b['succeeded']}/{b['runs']} runs succeeded, data {'verified' if b['data_verified'] else 'MISMATCHED'}; "
            f"triggerer peak RSS {b['triggerer_peak_rss_mib']} MiB |"
            if b["copy_mibs"] else f"| {b['runs']} migrations at once | unthrottled | incomplete: {b} |"
        )  # fmt: skip
    w = results.get("waits")
    if w:
        lines.append(
            f"| {w['waits']} deferred waits (TargetCopyTrigger, poll 5 s) in one triggerer | paused copy | RSS "
            f"{w['triggerer_rss_mib']} MiB (idle {w['triggerer_idle_rss_mib']} MiB: {w['per_wait_kib']} KiB per wait), "
            f"CPU {w['triggerer_cpu_pct']}% of a core (idle {w['triggerer_idle_cpu_pct']}%); all deferred after "
            f"{w['all_deferred_s']} s; run {w['run_state']} |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="8,32", help="comma-separated numbers of migrations at once")
    parser.add_argument("--waits", type=int, default=1000, help="deferred waits in one triggerer (0: none)")
    parser.add_argument("--quick", action="store_true", help="8 migrations and 100 waits")
    parser.add_argument("--root", type=Path, help="the lab's folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.waits = "8", 100
    results: dict[str, Any] = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "bulk": []}
    try:
        with whole_lab(args.root, "bulk-lab-", "local", (WAITS_DAG,), args.keep) as (lab, airflow, cinder):
            triggerer = airflow.pid("triggerer")
            if not triggerer:
                raise RuntimeError("the lab's triggerer is not running")
            for runs in (int(n) for n in args.runs.split(",") if n):
                results["bulk"].append(bulk(lab, airflow.api, cinder, runs, triggerer))
            if args.waits:
                results["waits"] = waits(lab, airflow.api, cinder, args.waits, triggerer)
            print(table(results), flush=True)
    finally:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
