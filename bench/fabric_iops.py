#!/usr/bin/env python3
"""Fabric IOPS (table #4): 4 KiB random reads through alpha's remote node of a paused takeover
of a LUN of beta and of gamma, versus reads straight from the source export.

Per source: a) cold, one read per 64 KiB cluster so that every read misses; b) time-based
randread over the whole LUN, as a client would do; c) the source export directly.

Run alone: ``PYTHONPATH=. .venv/bin/python bench/fabric_iops.py [--quick]``.
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path
from typing import Any

from bench.harness import SOURCES, Bench
from bench.measure import cpu_note, file_allocated, fio, log
from include.backends.base import MiB
from lab.arrays.images import CLUSTER

TARGET_FABRIC_IOPS = 10_000


def fabric_iops(bench: Bench) -> None:
    for source, name in reversed(SOURCES):  # beta first
        bench.attempt("4", "fabric IOPS", source, name, functools.partial(_fabric, bench, source, name))


def _through_remote_node(bench: Bench, source: str, lun: str, **fio_args: Any) -> tuple[dict[str, Any], dict]:
    """fio on alpha's export of a paused takeover of ``lun``; then the copy ends at full speed.

    Returns fio's result and its details: CPU use, what the copy job and alpha's overlay did meanwhile.
    """
    overlay = bench.overlay_path(lun)
    vol, uri = bench.take_over(source, lun, None)
    done0 = bench.alpha.pause_migration(vol).bytes_done
    alloc0 = file_allocated(overlay)
    with bench.cpu() as cpu:
        res = fio(uri, size=bench.size, **fio_args)
    alloc1 = file_allocated(overlay)
    p = bench.alpha.complete_migration_target(vol)
    bench.finish_takeover(source, vol)
    return res, {
        **res,
        "cpu": cpu.result,
        "copied_before_pause": done0,
        "overlay_alloc_before": alloc0,
        "overlay_alloc_after": alloc1,
        "job_bytes_done_after": p.bytes_done,
        "state_after": p.state.value,
    }


def _cold_iolog(bench: Bench, source: str) -> Path:
    """One 4 KiB read in each 64 KiB cluster, clusters in random order, as an fio iolog (v2).

    fio's random map does not give unique clusters with bs < blockalign: replayed, every read misses.
    """
    replay = bench.work / f"cold-{source}.iolog"
    rng = random.Random(11)
    clusters = list(range(bench.size // CLUSTER))
    rng.shuffle(clusters)
    lines = [f"nbd read {c * CLUSTER + rng.randrange(CLUSTER // 4096) * 4096} 4096" for c in clusters]
    replay.write_text("\n".join(["fio version 2 iolog", "nbd add", "nbd open", *lines, "nbd close", ""]))
    return replay


def _fabric(bench: Bench, source: str, name: str) -> None:
    log(f"4: fabric IOPS through alpha's remote node of {source}")
    log_dir = bench.fio_log_dir()
    path = f"alpha remote node->{source}"
    # a) cold: every read misses
    replay = _cold_iolog(bench, source)
    runtime = max(bench.runtime, 60)
    cold, details = _through_remote_node(
        bench, source, name, name="fabric-cold", rw="randread", runtime=runtime, time_based=False, replay=replay
    )
    bench.details[f"4_{source}_cold"] = details
    grew = (details["overlay_alloc_after"] or 0) - (details["overlay_alloc_before"] or 0)
    bench.row(
        "4",
        "fabric IOPS, cold (every read misses)",
        path,
        "paused takeover; random 4k reads QD16, 1 per 64 KiB cluster (iolog replay)",
        iops=str(cold["iops"]),
        pct=f"{'>=' if cold['iops'] >= TARGET_FABRIC_IOPS else '<'}10k",
        notes=f"{cold['ios']} reads in {cold['job_runtime_s']:.1f} s, p99 {cold['read_p99_ms']} ms; "
        f"overlay grew {grew / MiB:.0f} MiB while the copy job was PAUSED "
        f"(job progress {details['job_bytes_done_after'] / MiB:.0f} MiB, state {details['state_after']}); "
        + cpu_note(details["cpu"]),
    )
    # b) time-based randread over the whole LUN, as a client would do
    timed, details = _through_remote_node(
        bench, source, name, name="fabric-timed", rw="randread", runtime=bench.runtime, log_dir=log_dir
    )
    keep = ("cpu", "overlay_alloc_before", "overlay_alloc_after")
    bench.details[f"4_{source}_timed"] = {**timed, **{k: details[k] for k in keep}}
    series = timed.get("series") or []
    first = series[0][1] if series else None
    grew = (details["overlay_alloc_after"] or 0) - (details["overlay_alloc_before"] or 0)
    bench.row(
        "4",
        "fabric IOPS, time-based",
        path,
        f"paused takeover; randread 4k QD16, {bench.runtime} s",
        iops=str(timed["iops"]),
        notes=f"1st second {first} IOPS; overlay grew {grew / MiB:.0f} MiB of {bench.size / MiB:.0f}, "
        f"p99 {timed['read_p99_ms']} ms; " + cpu_note(details["cpu"], timed["fio_cpu_pct"]),
    )
    # c) the source export directly
    src_uri = bench.lab.backend(source).export_lun(name).uri
    with bench.cpu() as cpu:
        direct = fio(src_uri, name="source-direct", rw="randread", size=bench.size, runtime=bench.runtime)
    bench.lab.backend(source).unexport_lun(name)
    bench.details[f"4_{source}_direct"] = {**direct, "cpu": cpu.result}
    bench.row(
        "4",
        "source export directly",
        f"{source}",
        f"randread 4k QD16, {bench.runtime} s",
        iops=str(direct["iops"]),
        notes=f"p99 {direct['read_p99_ms']} ms; " + cpu_note(cpu.result, direct["fio_cpu_pct"]),
    )


if __name__ == "__main__":
    from bench.dataplane import main_alone

    sys.exit(main_alone("fabric_iops"))
