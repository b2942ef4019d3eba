#!/usr/bin/env python3
"""Copy rate without clients (table #3): alpha's takeover of a LUN of gamma and of beta (block-stream,
unlimited) versus ``qemu-img convert``, ``nbdcopy`` and the project's host copy between the same arrays.

Run alone: ``PYTHONPATH=. .venv/bin/python bench/copy_rate.py [--quick]``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.harness import SOURCES, Bench
from bench.measure import cpu_note, log, mibs, run, spot_check, verified
from include.backends.base import MiB, MigrationState
from include.host_copy import host_copy

QEMU_IMG_CONVERT = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw"]
TOOLS: list[tuple[str, Callable[[str, str], Any]]] = [  # host-side copies: (name, copy(source_uri, target_uri))
    ("qemu-img convert -n", lambda s, d: run([*QEMU_IMG_CONVERT, s, d], 900)),
    ("nbdcopy --flush", lambda s, d: run(["nbdcopy", "--flush", s, d], 600)),
    ("host_copy", lambda s, d: host_copy(s, d)),
]


def copy_rate(bench: Bench) -> None:
    for source, name in SOURCES:
        run_one = functools.partial(_copy_rates, bench, source, name)
        bench.attempt("3", "background copy, no clients", source, name, run_one)


def _copy_rates(bench: Bench, source: str, name: str) -> None:
    log(f"3: takeover {source}->alpha without clients")
    src_backend = bench.lab.backend(source)
    with bench.cpu() as cpu:
        t0 = time.monotonic()
        vol, uri = bench.take_over(source, name, 0)
        p, raw = bench.wait_copy(vol, 60 + bench.size / (5 * MiB), 0.1)
        wall = time.monotonic() - t0
    if p.state is not MigrationState.DONE:
        raise RuntimeError(f"takeover did not finish: {p.describe()}")
    # a server export of the source is refused while alpha holds its takeover export: read that one
    ok = spot_check(src_backend.export_for_takeover(name, initiator="alpha").uri, uri, bench.size)
    array_s = float(raw.get("seconds") or wall)
    bench.details[f"3_{source}_takeover"] = {"wall_s": wall, "array_s": array_s, "cpu": cpu.result, "ok": ok}
    bench.row(
        "3",
        "background copy, no clients",
        f"{source}->alpha",
        "takeover (block-stream, unlimited)",
        mibs=f"{mibs(bench.size, array_s):.0f}",
        notes=f"{array_s:.1f} s by the array's clock, {wall:.1f} s to DONE seen by the API "
        f"(monitor polls every 0.5 s); data {verified(ok)}; " + cpu_note(cpu.result),
    )
    bench.end_takeover(source, name)
    src_uri = src_backend.export_lun(name).uri
    for i, (tool, copy) in enumerate(TOOLS):
        target = f"copy-{source[0]}{i}"
        dst_uri = bench.make_lun("alpha", target)
        try:
            with bench.cpu() as cpu:
                t0 = time.monotonic()
                copy(src_uri, dst_uri)
                secs = time.monotonic() - t0
            ok = spot_check(src_uri, dst_uri, bench.size)
            bench.details[f"3_{source}_{tool.split()[0]}"] = {"seconds": secs, "cpu": cpu.result, "ok": ok}
            bench.row(
                "3",
                "host-side copy for comparison",
                f"{source}->alpha",
                tool,
                mibs=f"{mibs(bench.size, secs):.0f}",
                notes=f"{secs:.1f} s into a new alpha LUN; data {verified(ok)}; " + cpu_note(cpu.result),
            )
        finally:
            bench.drop_lun("alpha", target)
    src_backend.unexport_lun(name)


if __name__ == "__main__":
    from bench.dataplane import main_alone

    sys.exit(main_alone("copy_rate"))
