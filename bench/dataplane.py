#!/usr/bin/env python3
"""Data-plane benchmark of the lab: client IOPS, takeover copy rates, fabric IOPS, host copy.

Starts its own lab (alpha, beta, gamma) in a temporary folder on free ports of
127.0.0.1, measures everything side by side in one run, prints a Markdown
table and writes the details to ``bench/results/dataplane.json``. The lab is
always stopped at the end.

Measurements (``--only``; the table's # column in brackets), in run order:

* ``plain_iops`` [1]: client IOPS on a plain export (fio 4 KiB randrw 70/30 QD16; also randread);
* ``takeover_iops`` [2]: the same fio job on a LUN while it is being taken over
  (default throttle and fixed throttles), with the copy rate achieved meanwhile;
* ``copy_rate`` [3]: background copy rate without clients (takeover) versus
  ``qemu-img convert``, ``nbdcopy`` and the project's host copy between the same two arrays;
* ``fabric_iops`` [4]: 4 KiB random reads through alpha's remote node of a
  paused takeover, versus reads straight from the source export;
* ``sparse_host_copy`` [5]: host copy of a LUN with holes: rate and allocated bytes on both sides;
* ``hot_set_iops`` [2h]: ``takeover_iops`` with the client on a hot set (last: the first to go
  when the time budget runs short).

``client_iops`` stands for plain_iops, takeover_iops and hot_set_iops (bench/client_iops.py).

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/dataplane.py [--quick] [--only copy_rate,...]``;
each measurement module also runs alone (``bench/copy_rate.py [--quick]``, results in ``<module>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import client_iops, copy_rate, fabric_iops, sparse_host_copy
from bench.harness import Bench
from bench.measure import log
from include.backends.base import MiB
from lab.lab import Lab

RESULTS = Path(__file__).resolve().parent / "results" / "dataplane.json"
MEASUREMENTS: dict[str, Callable[[Bench], None]] = {  # run order
    "plain_iops": client_iops.plain_iops,
    "takeover_iops": client_iops.takeover_iops,
    "copy_rate": copy_rate.copy_rate,
    "fabric_iops": fabric_iops.fabric_iops,
    "sparse_host_copy": sparse_host_copy.sparse_host_copy,
    "hot_set_iops": client_iops.hot_set_iops,  # last: it is the first to go when time runs short
}
GROUPS = {"client_iops": ("plain_iops", "takeover_iops", "hot_set_iops")}  # a module: what it measures
TABLE_ORDER = ("1", "2", "2h", "3", "4", "5")  # the # column of the rows, in table order
COLUMNS = [
    ("sec", "#"),
    ("what", "measurement"),
    ("path", "path"),
    ("setting", "setting"),
    ("iops", "IOPS"),
    ("pct", "vs plain"),
    ("mibs", "copy MiB/s"),
    ("notes", "notes"),
]


def markdown(table: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in sorted(table, key=lambda r: TABLE_ORDER.index(r["sec"])):
        lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for cmd in (["fio", "--version"], ["qemu-img", "--version"], ["nbdkit", "--version"], ["nbdcopy", "--version"]):
        try:
            out[cmd[0]] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[cmd[0]] = "?"
    return out


def measurements(text: str) -> set[str]:
    """``--only``: comma-separated names of measurements or of modules (GROUPS)."""
    out: set[str] = set()
    for name in (x.strip() for x in text.split(",")):
        if name in GROUPS:
            out.update(GROUPS[name])
        elif name in MEASUREMENTS:
            out.add(name)
        elif name:
            raise argparse.ArgumentTypeError(f"unknown measurement {name!r}: one of {', '.join(MEASUREMENTS)}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=None, help="LUN size in MiB (default 2048; 512 with --quick)")
    ap.add_argument("--runtime", type=int, default=None, help="seconds per time-based fio job (default 20; 5 quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 MiB LUNs, 5 s fio jobs")
    ap.add_argument(
        "--throttles",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[50, 100, 200, 0],
        help="fixed copy throttles in MiB/s for takeover_iops, comma-separated; 0 = unlimited (default 50,100,200,0)",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="client runs during a copy: each setting N times, each after a plain run of its own; the table "
        "shows the median share (default 1: one run against the plain figure of #1)",
    )
    ap.add_argument(
        "--buffered-io",
        action="store_true",
        help="the arrays open their images with buffered I/O (direct_io off), as before 2026-12-03",
    )
    ap.add_argument(
        "--default-speed-mib",
        type=int,
        default=None,
        help="override the arrays' default_speed_bps, MiB/s (default: the arrays' own; 0 = unlimited)",
    )
    ap.add_argument(
        "--only",
        type=measurements,
        default=set(MEASUREMENTS),
        help=f"measurements to run, comma-separated (default all: {','.join(MEASUREMENTS)}; "
        f"client_iops = {','.join(GROUPS['client_iops'])})",
    )
    ap.add_argument("--budget-minutes", type=float, default=13.0, help="skip measurements that would start later")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary lab folder (LUN images, logs)")
    args = ap.parse_args(argv)
    args.size_mib = args.size_mib or (512 if args.quick else 2048)
    args.runtime = args.runtime or (5 if args.quick else 20)
    return args


def run_bench(args: argparse.Namespace) -> Bench:
    """Start a lab, fill its LUNs, run the chosen measurements in order; the lab is always stopped."""
    work = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    lab = Lab(work / "lab")
    settings = {} if args.default_speed_mib is None else {"default_speed_bps": args.default_speed_mib * MiB}
    lab.configure(**settings, **({"direct_io": False} if args.buffered_io else {}))
    try:
        log(f"starting lab in {work}")
        lab.up()
        bench = Bench(lab, args, work)
        bench.setup()
        for name, measure in MEASUREMENTS.items():
            if name in args.only:
                measure(bench)
    finally:
        down = lab.down()
        log(f"lab stopped: {down}")
        if all(down.values()) and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return bench


def report(args: argparse.Namespace, bench: Bench, elapsed: float) -> None:
    """Print the Markdown table and write the JSON details to ``args.output``."""
    header = [
        f"# Data-plane benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"LUN size {args.size_mib} MiB, fio runtime {args.runtime} s, 4 KiB blocks, QD16, nbd engine; "
        f"total {elapsed / 60:.1f} min. Host: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        f"**Caveat:** fio, the qemu-storage-daemons (alpha, beta) and nbdkit (gamma) all share these "
        f"{os.cpu_count()} cores on 127.0.0.1; the arrays' images are opened "
        + (
            "with buffered I/O, and every LUN fits in the page cache"
            if args.buffered_io
            else "with O_DIRECT on this machine's virtual disk"
        )
        + ": the numbers show relative costs, not what real arrays on a network would do. A "
        "qemu-storage-daemon has no iothread here, so one daemon serves NBD clients and the copy job on one "
        "main-loop thread."
        + (
            f" Client runs during a copy: median of {args.pairs} pairs, each after a plain run of its own."
            if args.pairs > 1
            else ""
        ),
        "",
    ]
    table = markdown(bench.table)
    fills = ", ".join(f"{k} {v} MiB/s" for k, v in bench.fills.items())
    print("\n".join(header))
    print(table)
    print(f"\nFills (nbdcopy from nbdkit random): {fills}")
    print(
        f"Target check: client IOPS during a copy >= {client_iops.TARGET_RATIO:.0%} of plain while the copy moves >= "
        f"{client_iops.TARGET_COPY_MIBS:.0f} MiB/s; fabric >= {fabric_iops.TARGET_FABRIC_IOPS} IOPS."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": {
            k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
            for k, v in vars(args).items()
        },
        "elapsed_s": round(elapsed, 1),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "versions": versions()},
        "table": bench.table,
        "details": bench.details,
        "fills_mibs": bench.fills,
        "markdown": "\n".join(header) + "\n" + table,
    }
    args.output.write_text(json.dumps(out, indent=1, default=str))
    log(f"wrote {args.output}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    bench = run_bench(args)
    report(args, bench, time.time() - started)
    return 0


def main_alone(module: str) -> int:
    """A measurement module run as a script: its measurements only, results in ``results/<module>.json``."""
    return main(["--only", module, "--output", str(RESULTS.with_name(f"{module}.json")), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
