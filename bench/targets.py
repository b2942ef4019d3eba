#!/usr/bin/env python3
"""Every speed target of the README in one run: time to attachable, client I/O during a copy, many at once.

Runs, one after the other, each on a fresh lab of its own (stopped at the end):

* ``bench/attachable.py``: time to attachable for 1 and 8 runs (1 GiB) and 1 run
  of 16 GiB, against Airflow's floor (the lab's empty DAG of the same shape);
* ``bench/dataplane.py --only plain_iops,takeover_iops,hot_set_iops --throttles 50
  --pairs 5``: client IOPS on a plain export and during a takeover (whole LUN,
  hot set), each setting the median of five runs, each after a plain run of its own;
* ``bench/bulk.py``: 8 and 32 migrations at once against ``qemu-img
  convert``, and 1,000 deferred waits in one triggerer.

then prints one table: each target, what was measured, met or not. The raw
figures stay in each bench's own file under ``bench/results/``.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/targets.py [--quick]`` (about 55 minutes;
``--quick``: each bench's quick mode, about 15 minutes; the figures are then rougher). ``--report-only``
runs nothing and prints the table from what the three benches last wrote (each run on its own, say).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench import attachable, bulk, dataplane
from bench.client_iops import TARGET_COPY_MIBS, TARGET_RATIO
from bench.measure import log

RESULTS = Path(__file__).resolve().parent / "results"
ATTACHABLE_P50_1_RUN_S = 3.0  # one run triggered alone
ATTACHABLE_P95_8_RUNS_S = 10.0  # eight runs triggered together
WHOLE_LUN_SHARE_BEFORE = 0.40  # the whole-LUN client share at the default copy speed, before (README, 2026-12-02)


def iops_rows(table: list[dict[str, Any]], section: str) -> list[tuple[str, float, float]]:
    """(setting, client share, copy MiB/s) of dataplane's rows of ``section`` (2: whole LUN, 2h: hot set)."""
    return [(row["setting"], row["share"], row["copy_mibs"]) for row in table
            if row["sec"] == section and row.get("share") is not None]  # fmt: skip


def iops_verdict(rows: list[tuple[str, float, float]]) -> tuple[str, tuple[float, float] | None]:
    """What the default setting kept, with the best client share among the settings whose copy moved at least
    TARGET_COPY_MIBS; returns the text and the default's (share, copy MiB/s), which the target is judged on."""
    fast = [r for r in rows if r[2] >= TARGET_COPY_MIBS]
    default = next((r for r in rows if r[0].startswith("default")), None)
    parts = []
    if default:
        parts.append(f"{default[0]}: {default[1]:.0%} at {default[2]:.0f} MiB/s")
    best = max(fast, key=lambda r: r[1]) if fast else None
    if best and best is not default:
        parts.append(f"best at >= {TARGET_COPY_MIBS:.0f} MiB/s: {best[1]:.0%} ({best[0]}, {best[2]:.0f} MiB/s)")
    return "; ".join(parts) or "no row", (default[1], default[2]) if default else None


def verdicts(att: dict[str, Any], data: dict[str, Any], many: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    cases = att["cases"]

    def stats(case: str) -> tuple[dict[str, float | None], dict[str, float | None]]:
        return attachable.summary(cases[case]["runs"]), attachable.summary(cases[case]["floor"])

    if "1x1" in cases:
        ours, floor = stats("1x1")
        met = ours["p50"] is not None and ours["p50"] <= ATTACHABLE_P50_1_RUN_S
        rows.append((f"time to attachable, 1 run: p50 <= {ATTACHABLE_P50_1_RUN_S:.0f} s",
                     f"p50 {ours['p50']} s, p95 {ours['p95']} s; Airflow's floor p50 {floor['p50']} s",
                     "met" if met else "NOT met"))  # fmt: skip
    if "8x1" in cases:
        ours, floor = stats("8x1")
        met = ours["p95"] is not None and ours["p95"] <= ATTACHABLE_P95_8_RUNS_S
        rows.append((f"time to attachable, 8 runs together: p95 <= {ATTACHABLE_P95_8_RUNS_S:.0f} s",
                     f"p50 {ours['p50']} s, p95 {ours['p95']} s; Airflow's floor p50 {floor['p50']} s, "
                     f"p95 {floor['p95']} s", "met" if met else "NOT met"))  # fmt: skip
    if "1x1" in cases and "1x16" in cases:
        small, big = stats("1x1")[0], stats("1x16")[0]
        flat = small["p50"] and big["p50"] and big["p50"] <= small["p50"] * 1.25 + 0.3
        measured = f"p50 {small['p50']} s (1 GiB) vs {big['p50']} s (16 GiB)"
        rows.append(("time to attachable flat in size: 16 GiB as 1 GiB", measured, "met" if flat else "NOT met"))
    table = data.get("table", [])
    for section, what in (("2h", "hot set"), ("2", "whole LUN")):
        text, default = iops_verdict(iops_rows(table, section))
        share, copy = default or (0.0, 0.0)
        if section == "2h":
            goal, met = f">= {TARGET_RATIO:.0%}", share >= TARGET_RATIO and copy >= TARGET_COPY_MIBS
        else:
            goal, met = f"above {WHOLE_LUN_SHARE_BEFORE:.0%} (before)", share > WHOLE_LUN_SHARE_BEFORE
        rows.append((f"client IOPS at the default copy speed (>= {TARGET_COPY_MIBS:.0f} MiB/s), {what}: {goal}", text,
                     "met" if met else "NOT met"))  # fmt: skip
    for b in many.get("bulk", []):
        ratio = b["copy_mibs"] / b["qemu_img_convert_mibs"] if b.get("copy_mibs") else None
        rows.append((f"{b['runs']} migrations at once (1 GiB each): aggregate copy vs qemu-img convert",
                     f"{b['copy_mibs']} vs {b['qemu_img_convert_mibs']} MiB/s"
                     + (f" ({ratio:.0%})" if ratio else "") + f"; attachable p50 {b['attachable_p50_s']} s, p95 "
                     f"{b['attachable_p95_s']} s; triggerer peak {b['triggerer_peak_rss_mib']} MiB; "
                     f"{b['succeeded']}/{b['runs']} succeeded, data "
                     f"{'verified' if b['data_verified'] else 'MISMATCHED'}", "measured"))  # fmt: skip
    w = many.get("waits")
    if w:
        rows.append((f"{w['waits']} deferred waits in one triggerer",
                     f"RSS {w['triggerer_rss_mib']} MiB ({w['per_wait_kib']} KiB per wait), CPU "
                     f"{w['triggerer_cpu_pct']}% of a core; {w['deferred']} deferred, run {w['run_state']}",
                     "measured"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each bench's quick mode")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the table from the results the three benches last wrote")  # fmt: skip
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    started = time.monotonic()
    if not args.report_only:
        log("1/3 time to attachable (bench/attachable.py)")
        attachable.main(quick + ([] if args.quick else ["--cases", "1x1,8x1,1x16"]))
        log("2/3 client IOPS during a copy (bench/dataplane.py)")
        pairs = ["--pairs", "3"] if args.quick else ["--pairs", "5", "--runtime", "10"]
        dataplane.main([*quick, "--only", "plain_iops,takeover_iops,hot_set_iops", "--throttles", "50", *pairs,
                        "--budget-minutes", "60"])  # its default (13) left no time for the hot set  # fmt: skip
        log("3/3 many at once (bench/bulk.py)")
        bulk.main(quick)
    att = json.loads(attachable.RESULTS.read_text())
    data = json.loads(dataplane.RESULTS.read_text())
    many = json.loads(bulk.RESULTS.read_text())
    rows = verdicts(att, data, many)
    dates = ", ".join(f"{name} {(r.get('date') or r.get('when'))}" for name, r in
                      (("attachable", att), ("dataplane", data), ("bulk", many)))  # fmt: skip
    minutes = (time.monotonic() - started) / 60
    run = "from earlier runs" if args.report_only else f"{'quick' if args.quick else 'full'} run in {minutes:.0f} min"
    print(f"\n{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}, {run}; results of {dates}\n")
    print("| target | measured | verdict |\n|---|---|---|")
    for target, measured, verdict in rows:
        print(f"| {target} | {measured} | {verdict} |")
    (RESULTS / "targets.json").write_text(json.dumps({"rows": rows, "quick": args.quick}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
