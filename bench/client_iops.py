#!/usr/bin/env python3
"""Client IOPS: on a plain export, and on a LUN while alpha takes it over.

* ``plain_iops`` (table #1): fio 4 KiB randrw 70/30 QD16 and randread on
  alpha's fully written LUN; the randrw IOPS are the baseline of the others.
* ``takeover_iops`` (#2): the same randrw job on the LUN alpha is taking over
  from gamma and from beta, at the default throttle, in mirror mode and at
  fixed throttles (``--throttles``), with the copy rate achieved meanwhile.
* ``hot_set_iops`` (#2h): as #2 from gamma with the client on a hot set (the
  last eighth of the LUN): the throttle then governs the copy.

Run alone: ``PYTHONPATH=. .venv/bin/python bench/client_iops.py [--quick]`` (all three).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from bench.harness import SOURCES, Bench, Poller
from bench.measure import cpu_note, fio, log, mibs
from include.backends.base import MiB

TARGET_RATIO = 0.85  # client IOPS during a copy, as a share of the plain export's
TARGET_COPY_MIBS = 50.0  # ... while the copy moves at least this many MiB/s


def hot_region(bench: Bench) -> tuple[int, int]:
    """The hot-set variant's fio region: the last eighth of the LUN (offset, size)."""
    hot = max(bench.size // 8 // MiB, 1) * MiB
    return bench.size - hot, hot


def plain_iops(bench: Bench) -> None:
    log("1: plain export IOPS on alpha")
    hot_off, hot = hot_region(bench)
    jobs = [
        ("randrw", "randrw 70/30 4k QD16", 0, bench.size),
        ("randread", "randread 4k QD16", 0, bench.size),
    ]
    if "hot_set_iops" in bench.args.only:
        jobs.append(("randrw", f"randrw 70/30, hot set = last {hot // MiB} MiB", hot_off, hot))
    for rw, setting, offset, size in jobs:
        key = f"1_plain_{rw}" + ("_hot" if offset else "")
        with bench.cpu() as cpu:
            res = fio(bench.base_uri, name=key, rw=rw, size=size, offset=offset, runtime=bench.runtime)
        bench.details[key] = {**res, "cpu": cpu.result}
        if rw == "randrw":
            bench.baseline["hot" if offset else "full"] = res["iops"]
        split = f" ({res['read_iops']} r + {res['write_iops']} w)" if rw == "randrw" else ""
        bench.row(
            "1",
            "client IOPS, plain export",
            "alpha (qcow2, fully written)",
            setting,
            iops=f"{res['iops']}{split}",
            pct="100%" if rw == "randrw" else "",
            notes=f"p99 r {res['read_p99_ms']} ms; " + cpu_note(cpu.result, res["fio_cpu_pct"]),
        )


def throttles(bench: Bench) -> list[tuple[str, int | None, str | None]]:
    """(label, speed_bps, mode) of each takeover run: the defaults, then fixed throttles."""
    default = bench.lab.config("alpha").default_speed_bps
    label = "default (unlimited)" if not default else f"default ({default / MiB:.0f} MiB/s)"
    out: list[tuple[str, int | None, str | None]] = [(label, None, None), (f"mirror mode, {label}", None, "mirror")]
    for t in bench.args.throttles:
        if t == 0 and not default:
            continue  # the default already is unlimited
        out.append(("unlimited" if t == 0 else f"{t} MiB/s", int(t * MiB), None))
    return out


def takeover_iops(bench: Bench, hot: bool = False) -> None:
    sec, what = _labels(hot)
    for source, name in SOURCES[:1] if hot else SOURCES:
        for label, speed, mode in throttles(bench):
            key = f"{sec}_{source}_{mode or 'stream'}_{speed if speed is not None else 'default'}"
            measure = functools.partial(_takeover_run, bench, key, source, name, label, speed, mode, hot)
            error = bench.attempt(sec, what, source, name, measure, setting=label)
            if error is not None:
                bench.details[key] = {"error": str(error)}


def hot_set_iops(bench: Bench) -> None:
    """``takeover_iops`` with the client on a hot set (last eighth of the LUN): the throttle then governs the copy."""
    takeover_iops(bench, hot=True)


def _labels(hot: bool) -> tuple[str, str]:
    """The table's # and measurement columns of a takeover run."""
    return ("2h", "client IOPS during takeover, hot set") if hot else ("2", "client IOPS during takeover")


def _takeover_run(
    bench: Bench, key: str, source: str, name: str, label: str, speed: int | None, mode: str | None, hot: bool
) -> None:
    """One fio run during a takeover: its details and its table row."""
    sec, what = _labels(hot)
    pairs = bench.args.pairs
    runs = []
    for i in range(pairs):
        pair = f" (pair {i + 1}/{pairs})" if pairs > 1 else ""
        log(f"{sec}: fio during takeover {source}->alpha at {label}{pair}")
        plain = bench.baseline.get("hot" if hot else "full") if pairs == 1 else _plain_now(bench, hot)
        runs.append(_during_copy(bench, source, name, speed, hot, mode, plain))
    bench.details[key] = d = median_run(runs)
    finished = d["copy_done_after_s"]
    note = (
        f"copy finished {finished:.1f} s after fio started ({bench.runtime} s run)"
        if finished is not None
        else f"copy still running at fio end ({d['copy_percent_at_end']:.0f}% done)"
    )
    if speed and d["copy_mibs_during_fio"] > 1.5 * speed / MiB:
        note += " (throttle not binding: client writes copied whole clusters up from the source)"
    window = "seconds 3.. while copying" if hot else "while copying"
    bench.row(
        sec,
        what,
        f"{source}->alpha",
        label,
        iops=f"{d['iops_while_copying'] or '-'} {window} (whole run {d['fio']['iops']})",
        pct=_share(d),
        mibs=f"{d['copy_mibs_during_fio']:.0f}",
        share=d["ratio"],  # the two figures as numbers, for bench/targets.py (the table's columns are text)
        copy_mibs=d["copy_mibs_during_fio"],
        notes=f"{note}; 85% at >=50 MiB/s: {'YES' if d['meets_target'] else 'no'}; "
        f"p99 r {d['fio']['read_p99_ms']} ms w {d['fio']['write_p99_ms']} ms; "
        + cpu_note(d["cpu"], d["fio"]["fio_cpu_pct"]),
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose client share is the median (the lower one of an even count), with every pair's figures:
    on a shared machine one pair can be off by 20%, the median of several is what the table shows."""
    ranked = sorted(runs, key=lambda r: -1.0 if r["ratio"] is None else r["ratio"])
    mid = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        mid["pairs"] = [
            {k: r[k] for k in ("plain_iops", "iops_while_copying", "ratio", "copy_mibs_during_fio")} for r in runs
        ]
    return mid


def _share(d: dict[str, Any]) -> str:
    """The table's "vs plain" cell: the share, and with pairs the range of the pairs' shares."""
    if d["ratio"] is None:
        return "-"
    shares = [p["ratio"] for p in d.get("pairs", ()) if p["ratio"] is not None]
    spread = f" (median of {len(shares)}: {100 * min(shares):.0f}-{100 * max(shares):.0f}%)" if len(shares) > 1 else ""
    return f"{100 * d['ratio']:.0f}%{spread}"


def _plain_now(bench: Bench, hot: bool) -> int:
    """The plain export's randrw IOPS on the same region, measured just before a run it is compared with."""
    offset, size = hot_region(bench) if hot else (0, bench.size)
    return fio(bench.base_uri, name="plain-pair", rw="randrw", size=size, offset=offset, runtime=bench.runtime)["iops"]


def _during_copy(
    bench: Bench, source: str, name: str, speed: int | None, hot: bool, mode: str | None, plain: int | None
) -> dict[str, Any]:
    log_dir = bench.fio_log_dir()
    offset, size = hot_region(bench) if hot else (0, bench.size)
    vol, uri = bench.take_over(source, name, speed, mode)
    poller = Poller(bench.alpha, vol, limit=bench.runtime + 60 + bench.size / (5 * MiB))
    poller.start()
    try:
        with bench.cpu() as cpu:
            res = fio(
                uri, name="takeover", rw="randrw", size=size, offset=offset, runtime=bench.runtime, log_dir=log_dir
            )
    finally:
        poller.stop()
    done_at = poller.done_at()
    start, end = res["started"], res["ended"]
    copy_end = min(end, done_at) if done_at is not None else end
    moved = poller.bytes_at(copy_end) - poller.bytes_at(start)
    copy_rate = mibs(moved, copy_end - start)
    # mean of the per-second IOPS of the seconds that ended before the copy did
    # (hot set: from second 3 on, once the client's hot set has been pulled in)
    first = 3 if hot else 1
    during = [v for t, v in res.get("series") or [] if first <= t <= copy_end - start]
    iops_copy = round(sum(during) / len(during)) if during else None
    ratio = iops_copy / plain if iops_copy is not None and plain else None
    at_end = poller.bytes_at(end)
    finish = bench.finish_takeover(source, vol)
    return {
        "source": source,
        "speed_bps": speed,
        "mode": mode or "stream",
        "region": [offset, size],
        "fio": res,
        "cpu": cpu.result,
        "plain_iops": plain,
        "iops_while_copying": iops_copy,
        "ratio": ratio,
        "copy_mibs_during_fio": copy_rate,
        "copy_done_after_s": None if done_at is None or done_at >= end else done_at - start,
        "copy_percent_at_end": 100.0 * at_end / bench.size,
        "meets_target": bool(ratio is not None and ratio >= TARGET_RATIO and copy_rate >= TARGET_COPY_MIBS),
        "samples": [[round(t - start, 2), s, d] for t, s, d, _ in poller.samples],
        "migration_record": finish,
        "poll_errors": poller.errors[:5],
    }


if __name__ == "__main__":
    from bench.dataplane import main_alone

    sys.exit(main_alone("client_iops"))
