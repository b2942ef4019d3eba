#!/usr/bin/env python3
"""Host copy of a LUN with holes (table #5): gamma -> alpha -> gamma, data in every other MiB;
rate and allocated bytes on both sides.

Run alone: ``PYTHONPATH=. .venv/bin/python bench/sparse_host_copy.py [--quick]``.
"""

from __future__ import annotations

import sys
import traceback

from bench.harness import Bench
from bench.measure import allocated_bytes, cpu_note, fill_holes, log, mibs, spot_check, verified
from include.backends.base import MiB
from include.host_copy import host_copy


def sparse_host_copy(bench: Bench) -> None:
    if bench.over_budget():
        bench.row("5", "host copy", "gamma<->alpha", "-", notes="skipped: time budget")
        return
    log("5: host copy of a LUN with holes")
    try:
        src = bench.make_lun("gamma", "holes")
        written = fill_holes(src, bench.size, seed=5)
        hops = [("gamma", "holes", src, "alpha", "hc-a"), ("alpha", "hc-a", None, "gamma", "hc-g")]
        for s_arr, s_name, s_uri, d_arr, d_name in hops:
            s_uri = s_uri or bench.lab.backend(s_arr).export_lun(s_name).uri
            d_uri = bench.make_lun(d_arr, d_name)
            src_alloc = allocated_bytes(s_uri)
            with bench.cpu() as cpu:
                res = host_copy(s_uri, d_uri)
            dst_alloc = allocated_bytes(d_uri)
            ok = spot_check(s_uri, d_uri, bench.size)
            bench.details[f"5_{s_arr}_{d_arr}"] = {
                "result": {k: getattr(res, k) for k in res.__dataclass_fields__},
                "source_allocated": src_alloc,
                "target_allocated": dst_alloc,
                "data_written_by_fill": written,
                "cpu": cpu.result,
                "ok": ok,
            }
            bench.row(
                "5",
                "host copy, LUN with holes",
                f"{s_arr}->{d_arr}",
                "every other MiB data",
                mibs=f"{mibs(res.bytes_total, res.seconds):.0f} ({mibs(res.bytes_written, res.seconds):.0f} data)",
                notes=f"{res.seconds:.1f} s, written {res.bytes_written / MiB:.0f} MiB, skipped "
                f"{res.bytes_skipped / MiB:.0f} MiB; allocated src {src_alloc / MiB:.0f} MiB -> dst "
                f"{dst_alloc / MiB:.0f} MiB; data {verified(ok)}; " + cpu_note(cpu.result),
            )
    except Exception as exc:
        log(traceback.format_exc())
        bench.row("5", "host copy, LUN with holes", "gamma<->alpha", "-", notes=f"ERROR: {exc}")


if __name__ == "__main__":
    from bench.dataplane import main_alone

    sys.exit(main_alone("sparse_host_copy"))
