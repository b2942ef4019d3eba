#!/usr/bin/env python3
"""Data-plane benchmark of the lab: client IOPS, takeover copy rates, fabric IOPS, host copy.

Starts its own lab (alpha, beta, gamma) in a temporary folder on free ports of
127.0.0.1, measures everything side by side in one run, prints a Markdown
table and writes the details to ``bench/results/dataplane.json``. The lab is
always stopped at the end.

Sections:

1. client IOPS on a plain export (fio 4 KiB randrw 70/30 QD16; also randread);
2. the same fio job on a LUN while it is being taken over (default throttle
   and fixed throttles), with the copy rate achieved meanwhile;
3. background copy rate without clients (takeover) versus ``qemu-img convert``,
   ``nbdcopy`` and the project's host copy between the same two arrays;
4. fabric IOPS: 4 KiB random reads through alpha's remote node of a paused
   takeover, versus reads straight from the source export;
5. host copy of a LUN with holes: rate and allocated bytes on both sides.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/bench_dataplane.py [--quick]``
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from include.backends.base import MiB, MigrationState, Volume
from include.backends.errors import BackendError
from include.host_copy import host_copy
from lab import verify
from lab.lab import Lab

RESULTS = Path(__file__).resolve().parent / "results" / "dataplane.json"
CLUSTER = 64 * 1024  # qcow2 cluster size of the reference arrays (copy-on-read/-write granularity)
POLL = 0.5  # seconds between looks at a background copy
TARGET_RATIO = 0.85  # client IOPS during a copy, as a share of the plain export's
TARGET_COPY_MIBS = 50.0  # ... while the copy moves at least this many MiB/s
TARGET_FABRIC_IOPS = 10_000
SECTIONS = ("1", "2", "3", "4", "5", "2h")  # run order; 2h last: it is the first to go when time runs short
QEMU_IMG_CONVERT = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mibs(nbytes: float, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else 0.0


# ---- processes and CPU -------------------------------------------------------------------


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def _children(pid: int) -> list[int]:
    out = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(x) for x in Path(path).read_text().split()]
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def server_pids(lab: Lab) -> dict[str, int]:
    """The data-plane server of each array: qemu-storage-daemon or nbdkit (child of arrayd)."""
    out = {}
    for name in lab.names():
        arrayd = lab.pid(name)
        if arrayd is None:
            continue
        for child in _children(arrayd):
            if _comm(child).startswith(("qemu-storage", "nbdkit")):
                out[name] = child
    return out


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def _host_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """CPU use of the array data-plane servers and of the whole host over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.ticks0 = {n: _cpu_ticks(p) for n, p in self.pids.items()}
        self.host0 = _host_ticks()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        dt = max(time.monotonic() - self.t0, 1e-6)
        for name, pid in self.pids.items():
            self.result[f"{name}_pct"] = round(100.0 * (_cpu_ticks(pid) - self.ticks0[name]) / self.hz / dt, 1)
        busy1, total1 = _host_ticks()
        busy = busy1 - self.host0[0]
        total = max(total1 - self.host0[1], 1)
        self.result["host_busy_pct"] = round(100.0 * busy / total, 1)


def cpu_note(cpu: dict[str, float], fio_cpu: float | None = None) -> str:
    parts = [f"{k.removesuffix('_pct')} {v:.0f}%" for k, v in cpu.items() if k != "host_busy_pct" and v >= 1]
    if fio_cpu is not None:
        parts.append(f"fio {fio_cpu:.0f}%")
    return f"CPU (100% = 1 core): {', '.join(parts)}; host {cpu.get('host_busy_pct', 0):.0f}% of all cores busy"


# ---- data helpers ------------------------------------------------------------------------


def fill_random(uri: str, size: int, seed: int) -> float:
    """Write random data over the whole LUN with nbdcopy from nbdkit's random plugin; returns MiB/s."""
    t0 = time.monotonic()
    cmd = ["nbdcopy", "--flush", "--", "[", "nbdkit", "--exit-with-parent", "random", f"size={size}"]
    run([*cmd, f"seed={seed}", "]", uri], timeout=120 + size / (20 * MiB))
    return mibs(size, time.monotonic() - t0)


def fill_holes(uri: str, size: int, seed: int) -> int:
    """Random data in every other MiB (the others stay holes); returns the bytes written."""
    rng = random.Random(seed)
    handle = verify.connect(uri)
    written = 0
    try:
        for off in range(0, size, 2 * MiB):
            n = min(MiB, size - off)
            handle.pwrite(rng.randbytes(n), off)
            written += n
        handle.flush()
    finally:
        handle.shutdown()
    return written


def spot_check(src_uri: str, dst_uri: str, size: int, samples: int = 24, seed: int = 7) -> bool:
    """Compare ``samples`` random 1 MiB blocks (and the first and last) of two exports."""
    rng = random.Random(seed)
    offsets = {0, max(size - MiB, 0)} | {rng.randrange(0, max(size // MiB, 1)) * MiB for _ in range(samples)}
    a, b = verify.connect(src_uri), verify.connect(dst_uri)
    try:
        for off in sorted(offsets):
            n = min(MiB, size - off)
            if a.pread(n, off) != b.pread(n, off):
                return False
        return True
    finally:
        a.shutdown()
        b.shutdown()


def allocated_bytes(uri: str) -> int:
    """Bytes the export reports as data (NBD block status through ``qemu-img map``)."""
    out = run(["qemu-img", "map", "--output=json", "-f", "raw", uri], timeout=120).stdout
    return sum(int(e["length"]) for e in json.loads(out) if e.get("data"))


def file_allocated(path: Path) -> int | None:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return None


# ---- fio -----------------------------------------------------------------------------


def fio(
    uri: str,
    *,
    name: str,
    rw: str,
    size: int,
    runtime: int,
    offset: int = 0,
    time_based: bool = True,
    log_dir: Path | None = None,
    replay: Path | None = None,
) -> dict[str, Any]:
    """One fio job with the nbd engine: 4 KiB, QD16. Returns IOPS, latency, CPU and a per-second series.

    ``size``/``offset`` select the region; ``replay`` replays an iolog (v2) instead of ``rw``.
    """
    cmd = [
        "fio",
        f"--name={name}",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--bs=4k",
        "--iodepth=16",
        "--direct=1",
        f"--size={size}",
        f"--offset={offset}",
        f"--runtime={runtime}",
        "--output-format=json",
    ]
    if replay is not None:
        cmd += [f"--read_iolog={replay}", "--replay_no_stall=1"]
    else:
        cmd.append(f"--rw={rw}")
    if rw == "randrw":
        cmd.append("--rwmixread=70")
    if time_based:
        cmd.append("--time_based")
    if log_dir is not None:
        cmd += [f"--write_iops_log={log_dir / name}", "--log_avg_msec=1000"]
    started = time.monotonic()
    proc = run(cmd, timeout=runtime + 120)
    ended = time.monotonic()
    data = json.loads(proc.stdout[proc.stdout.index("{") :])
    job = data["jobs"][0]
    read, write = job["read"], job["write"]

    def p99_ms(d: dict[str, Any]) -> float | None:
        pct = (d.get("clat_ns") or {}).get("percentile") or {}
        return round(pct["99.000000"] / 1e6, 3) if "99.000000" in pct else None

    out: dict[str, Any] = {
        "cmd": " ".join(cmd),
        "read_iops": round(read["iops"]),
        "write_iops": round(write["iops"]),
        "iops": round(read["iops"] + write["iops"]),
        "ios": int(read["total_ios"] + write["total_ios"]),
        "read_p99_ms": p99_ms(read),
        "write_p99_ms": p99_ms(write),
        "fio_cpu_pct": round(float(job["usr_cpu"]) + float(job["sys_cpu"]), 1),
        "job_runtime_s": job["job_runtime"] / 1000.0,
        "iodepth_level": job.get("iodepth_level"),
        "started": started,
        "ended": ended,
    }
    if log_dir is not None:
        series: dict[int, float] = {}
        for path in glob.glob(f"{log_dir / name}_iops*.log"):
            for line in Path(path).read_text().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 2:
                    second = round(int(parts[0]) / 1000)
                    series[second] = series.get(second, 0.0) + float(parts[1])
                    # ddir 0 read, 1 write: summed
        out["series"] = [[t, round(v)] for t, v in sorted(series.items())]
    return out


# ---- background copy observation -----------------------------------------------------------


class Poller(threading.Thread):
    """Looks at a takeover's progress every POLL seconds until it ends, is stopped or ``limit`` passes."""

    def __init__(self, backend: Any, volume: Volume, limit: float) -> None:
        super().__init__(name=f"poll-{volume.name}", daemon=True)
        self.backend, self.volume, self.limit = backend, volume, limit
        self.samples: list[tuple[float, str, int, int]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        try:
            p = self.backend.complete_migration_target(self.volume)
            self.samples.append((time.monotonic(), p.state.value, p.bytes_done, p.bytes_total))
        except BackendError as exc:
            self.errors.append(str(exc))

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        self.sample()
        while time.monotonic() < deadline and not self.halt.wait(POLL):
            self.sample()
            if self.samples and self.samples[-1][1] in ("done", "failed"):
                return

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def done_at(self) -> float | None:
        return next((t for t, state, _, _ in self.samples if state == "done"), None)

    def bytes_at(self, when: float) -> int:
        """bytes_done at ``when``, interpolated between samples."""
        pts = [(t, done) for t, _, done, _ in self.samples]
        if not pts:
            return 0
        if when <= pts[0][0]:
            return pts[0][1]
        for (t0, d0), (t1, d1) in zip(pts, pts[1:], strict=False):
            if t0 <= when <= t1:
                return int(d0 + (d1 - d0) * (when - t0) / max(t1 - t0, 1e-9))
        return pts[-1][1]


# ---- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace, work: Path) -> None:
        self.lab, self.args, self.work = lab, args, work
        self.size = args.size_mib * MiB
        self.runtime = args.runtime
        self.alpha = lab.backend("alpha")
        self.began = time.monotonic()
        self.table: list[dict[str, str]] = []
        self.details: dict[str, Any] = {}
        self.baseline: dict[str, Any] = {}
        self.pids = server_pids(lab)
        self.fills: dict[str, float] = {}

    # -- plumbing
    def over_budget(self) -> bool:
        return time.monotonic() - self.began > self.args.budget_minutes * 60

    def row(self, sec: str, what: str, path: str, setting: str, **cols: str) -> None:
        self.table.append({"sec": sec, "what": what, "path": path, "setting": setting, **cols})

    def cpu(self) -> CpuMeter:
        return CpuMeter(self.pids)

    def make_lun(self, array: str, name: str, *, seed: int | None = None) -> str:
        backend = self.lab.backend(array)
        backend.create_lun(name, self.size, "pool1")
        uri = backend.export_lun(name).uri
        if seed is not None:
            self.fills[f"{array}/{name}"] = round(fill_random(uri, self.size, seed), 1)
        return uri

    def drop_lun(self, array: str, name: str) -> None:
        backend = self.lab.backend(array)
        try:
            backend.unexport_lun(name)
            backend.delete_lun(name)
        except BackendError as exc:
            log(f"could not delete {array}/{name}: {exc}")

    def take_over(
        self, source: str, name: str, speed_bps: int | None = None, mode: str | None = None
    ) -> tuple[Volume, str]:
        vol = Volume(name, self.size)
        self.lab.backend(source).unexport_lun(name)  # the server export is not needed by a takeover
        moved, is_async, _ = self.alpha.migrate_volume_target(
            vol, self.lab.backend(source), pool="pool1", speed_bps=speed_bps, mode=mode
        )
        if not (moved and is_async):
            raise RuntimeError(f"takeover of {source}/{name} answered moved={moved} async={is_async}")
        return vol, self.alpha.export_lun(name).uri

    def finish_takeover(self, source: str, vol: Volume) -> dict[str, Any]:
        """Let the copy end at full speed, then drop alpha's LUN and the source's takeover export."""
        p = self.alpha.complete_migration_target(vol)
        if not p.state.terminal:
            try:
                if p.state is MigrationState.PAUSED:
                    self.alpha.resume_migration(vol)
                self.alpha.set_migration_speed(vol, 0)
            except BackendError as exc:  # it may have ended in between
                log(f"resume/speed of {vol.name}: {exc}")
        deadline = time.monotonic() + 60 + self.size / (10 * MiB)
        while not p.state.terminal and time.monotonic() < deadline:
            time.sleep(0.25)
            p = self.alpha.complete_migration_target(vol)
        if p.state is not MigrationState.DONE:
            raise RuntimeError(f"copy of {vol.name} did not finish: {p.describe()}")
        raw = self.alpha.request("GET", f"/v1/luns/{vol.name}/migration")
        self.drop_lun("alpha", vol.name)
        self.lab.backend(source).release_takeover(vol.name)
        return raw

    def reset(self, source: str, name: str) -> None:
        """After a failure: end a takeover of ``name`` if any, drop it from alpha and unexport the source."""
        vol = Volume(name, self.size)
        try:
            self.finish_takeover(source, vol)
        except Exception as exc:
            log(f"reset of {name}: {exc}")
        for step in (
            lambda: self.drop_lun("alpha", name),
            lambda: self.lab.backend(source).release_takeover(name),
            lambda: self.lab.backend(source).unexport_lun(name),
        ):
            try:
                step()
            except Exception as exc:
                log(f"reset of {name}: {exc}")

    def overlay_path(self, name: str) -> Path:
        return self.lab.array_dir("alpha") / "pools" / "pool1" / f"{name}.0.qcow2"

    # -- sections
    def setup(self) -> None:
        log(f"filling LUNs of {self.args.size_mib} MiB (alpha/base, gamma/src-g, beta/src-b)")
        self.base_uri = self.make_lun("alpha", "base", seed=1)
        self.make_lun("gamma", "src-g", seed=2)
        self.make_lun("beta", "src-b", seed=3)
        for array, name in (("gamma", "src-g"), ("beta", "src-b")):
            self.lab.backend(array).unexport_lun(name)

    def hot_region(self) -> tuple[int, int]:
        """The hot-set variant's fio region: the last eighth of the LUN (offset, size)."""
        hot = max(self.size // 8 // MiB, 1) * MiB
        return self.size - hot, hot

    def section1(self) -> None:
        log("1: plain export IOPS on alpha")
        hot_off, hot = self.hot_region()
        jobs = [
            ("randrw", "randrw 70/30 4k QD16", 0, self.size),
            ("randread", "randread 4k QD16", 0, self.size),
        ]
        if "2h" in self.args.sections:
            jobs.append(("randrw", f"randrw 70/30, hot set = last {hot // MiB} MiB", hot_off, hot))
        for rw, setting, offset, size in jobs:
            key = f"1_plain_{rw}" + ("_hot" if offset else "")
            with self.cpu() as cpu:
                res = fio(self.base_uri, name=key, rw=rw, size=size, offset=offset, runtime=self.runtime)
            self.details[key] = {**res, "cpu": cpu.result}
            if rw == "randrw":
                self.baseline["hot" if offset else "full"] = res["iops"]
            split = f" ({res['read_iops']} r + {res['write_iops']} w)" if rw == "randrw" else ""
            self.row(
                "1",
                "client IOPS, plain export",
                "alpha (qcow2, fully written)",
                setting,
                iops=f"{res['iops']}{split}",
                pct="100%" if rw == "randrw" else "",
                notes=f"p99 r {res['read_p99_ms']} ms; " + cpu_note(cpu.result, res["fio_cpu_pct"]),
            )

    def throttles(self) -> list[tuple[str, int | None, str | None]]:
        """(label, speed_bps, mode) of each run of section 2: the defaults, then fixed throttles."""
        default = self.lab.config("alpha").default_speed_bps
        label = "default (unlimited)" if not default else f"default ({default / MiB:.0f} MiB/s)"
        out: list[tuple[str, int | None, str | None]] = [(label, None, None), (f"mirror mode, {label}", None, "mirror")]
        for t in self.args.throttles:
            if t == 0 and not default:
                continue  # the default already is unlimited
            out.append(("unlimited" if t == 0 else f"{t} MiB/s", int(t * MiB), None))
        return out

    def section2(self, hot: bool = False) -> None:
        sec = "2h" if hot else "2"
        what = "client IOPS during takeover" + (", hot set" if hot else "")
        sources = [("gamma", "src-g")] if hot else [("gamma", "src-g"), ("beta", "src-b")]
        for source, name in sources:
            for label, speed, mode in self.throttles():
                if self.over_budget():
                    self.row(sec, what, f"{source}->alpha", label, notes="skipped: time budget")
                    continue
                log(f"{sec}: fio during takeover {source}->alpha at {label}")
                key = f"{sec}_{source}_{mode or 'stream'}_{speed if speed is not None else 'default'}"
                try:
                    self.details[key] = d = self._during_copy(source, name, speed, hot, mode)
                except Exception as exc:
                    log(traceback.format_exc())
                    self.details[key] = {"error": str(exc)}
                    self.row(sec, what, f"{source}->alpha", label, notes=f"ERROR: {exc}")
                    self.reset(source, name)
                    continue
                finished = d["copy_done_after_s"]
                note = (
                    f"copy finished {finished:.1f} s after fio started ({self.runtime} s run)"
                    if finished is not None
                    else f"copy still running at fio end ({d['copy_percent_at_end']:.0f}% done)"
                )
                if speed and d["copy_mibs_during_fio"] > 1.5 * speed / MiB:
                    note += " (throttle not binding: client writes copied whole clusters up from the source)"
                window = "seconds 3.. while copying" if hot else "while copying"
                self.row(
                    sec,
                    what,
                    f"{source}->alpha",
                    label,
                    iops=f"{d['iops_while_copying'] or '-'} {window} (whole run {d['fio']['iops']})",
                    pct=f"{100 * d['ratio']:.0f}%" if d["ratio"] is not None else "-",
                    mibs=f"{d['copy_mibs_during_fio']:.0f}",
                    notes=f"{note}; 85% at >=50 MiB/s: {'YES' if d['meets_target'] else 'no'}; "
                    f"p99 r {d['fio']['read_p99_ms']} ms w {d['fio']['write_p99_ms']} ms; "
                    + cpu_note(d["cpu"], d["fio"]["fio_cpu_pct"]),
                )

    def section2h(self) -> None:
        """Section 2 with the client on a hot set (last eighth of the LUN): the throttle then governs the copy."""
        self.section2(hot=True)

    def _during_copy(
        self, source: str, name: str, speed: int | None, hot: bool, mode: str | None = None
    ) -> dict[str, Any]:
        log_dir = Path(tempfile.mkdtemp(prefix="fio-", dir=self.work))
        offset, size = self.hot_region() if hot else (0, self.size)
        plain = self.baseline.get("hot" if hot else "full")
        vol, uri = self.take_over(source, name, speed, mode)
        poller = Poller(self.alpha, vol, limit=self.runtime + 60 + self.size / (5 * MiB))
        poller.start()
        try:
            with self.cpu() as cpu:
                res = fio(
                    uri, name="takeover", rw="randrw", size=size, offset=offset, runtime=self.runtime, log_dir=log_dir
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
        limit = copy_end - start
        first = 3 if hot else 1
        during = [v for t, v in res.get("series") or [] if first <= t <= limit]
        iops_copy = round(sum(during) / len(during)) if during else None
        ratio = iops_copy / plain if iops_copy is not None and plain else None
        at_end = poller.bytes_at(end)
        finish = self.finish_takeover(source, vol)
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
            "copy_percent_at_end": 100.0 * at_end / self.size,
            "meets_target": bool(ratio is not None and ratio >= TARGET_RATIO and copy_rate >= TARGET_COPY_MIBS),
            "samples": [[round(t - start, 2), s, d] for t, s, d, _ in poller.samples],
            "migration_record": finish,
            "poll_errors": poller.errors[:5],
        }

    def _each_source(self, sec: str, what: str, sources: tuple[tuple[str, str], ...], run: Any) -> None:
        """Run ``run(source, name)`` per source LUN; a skip or an error becomes a row and the LUN is reset."""
        for source, name in sources:
            if self.over_budget():
                self.row(sec, what, f"{source}->alpha", "-", notes="skipped: time budget")
                continue
            try:
                run(source, name)
            except Exception as exc:
                log(traceback.format_exc())
                self.row(sec, what, f"{source}->alpha", "-", notes=f"ERROR: {exc}")
                self.reset(source, name)

    def section3(self) -> None:
        self._each_source("3", "background copy, no clients", (("gamma", "src-g"), ("beta", "src-b")), self._copy_rates)

    def _copy_rates(self, source: str, name: str) -> None:
        log(f"3: takeover {source}->alpha without clients")
        src_backend = self.lab.backend(source)
        with self.cpu() as cpu:
            t0 = time.monotonic()
            vol, uri = self.take_over(source, name, 0)
            p = self.alpha.complete_migration_target(vol)
            deadline = time.monotonic() + 60 + self.size / (5 * MiB)
            while not p.state.terminal and time.monotonic() < deadline:
                time.sleep(0.1)
                p = self.alpha.complete_migration_target(vol)
            wall = time.monotonic() - t0
        if p.state is not MigrationState.DONE:
            raise RuntimeError(f"takeover did not finish: {p.describe()}")
        raw = self.alpha.request("GET", f"/v1/luns/{name}/migration")
        # a server export of the source is refused while alpha holds its takeover export: read that one
        ok = spot_check(src_backend.export_for_takeover(name, initiator="alpha").uri, uri, self.size)
        array_s = float(raw.get("seconds") or wall)
        self.details[f"3_{source}_takeover"] = {"wall_s": wall, "array_s": array_s, "cpu": cpu.result, "ok": ok}
        self.row(
            "3",
            "background copy, no clients",
            f"{source}->alpha",
            "takeover (block-stream, unlimited)",
            mibs=f"{mibs(self.size, array_s):.0f}",
            notes=f"{array_s:.1f} s by the array's clock, {wall:.1f} s to DONE seen by the API "
            f"(monitor polls every 0.5 s); data {'verified' if ok else 'MISMATCH'}; " + cpu_note(cpu.result),
        )
        self.drop_lun("alpha", name)
        src_backend.release_takeover(name)
        src_uri = src_backend.export_lun(name).uri

        tools: list[tuple[str, Any]] = [
            ("qemu-img convert -n", lambda s, d: run([*QEMU_IMG_CONVERT, s, d], 900)),
            ("nbdcopy --flush", lambda s, d: run(["nbdcopy", "--flush", s, d], 600)),
            ("host_copy", lambda s, d: host_copy(s, d)),
        ]
        for i, (tool, fn) in enumerate(tools):
            target = f"copy-{source[0]}{i}"
            dst_uri = self.make_lun("alpha", target)
            try:
                with self.cpu() as cpu:
                    t0 = time.monotonic()
                    fn(src_uri, dst_uri)
                    secs = time.monotonic() - t0
                ok = spot_check(src_uri, dst_uri, self.size)
                self.details[f"3_{source}_{tool.split()[0]}"] = {"seconds": secs, "cpu": cpu.result, "ok": ok}
                self.row(
                    "3",
                    "host-side copy for comparison",
                    f"{source}->alpha",
                    tool,
                    mibs=f"{mibs(self.size, secs):.0f}",
                    notes=f"{secs:.1f} s into a new alpha LUN; data {'verified' if ok else 'MISMATCH'}; "
                    + cpu_note(cpu.result),
                )
            finally:
                self.drop_lun("alpha", target)
        src_backend.unexport_lun(name)

    def section4(self) -> None:
        self._each_source("4", "fabric IOPS", (("beta", "src-b"), ("gamma", "src-g")), self._fabric)

    def _paused_takeover(self, source: str, name: str) -> tuple[Volume, str, int]:
        vol, uri = self.take_over(source, name, None)
        p = self.alpha.pause_migration(vol)
        return vol, uri, p.bytes_done

    def _fabric(self, source: str, name: str) -> None:
        log(f"4: fabric IOPS through alpha's remote node of {source}")
        log_dir = Path(tempfile.mkdtemp(prefix="fio-", dir=self.work))
        overlay = self.overlay_path(name)
        # a) cold: one 4 KiB read in each 64 KiB cluster, clusters in random order, replayed from an
        # iolog (fio's random map does not give unique clusters with bs < blockalign): every read misses
        vol, uri, done0 = self._paused_takeover(source, name)
        replay = self.work / f"cold-{source}.iolog"
        rng = random.Random(11)
        clusters = list(range(self.size // CLUSTER))
        rng.shuffle(clusters)
        lines = [f"nbd read {c * CLUSTER + rng.randrange(CLUSTER // 4096) * 4096} 4096" for c in clusters]
        replay.write_text("\n".join(["fio version 2 iolog", "nbd add", "nbd open", *lines, "nbd close", ""]))
        alloc0 = file_allocated(overlay)
        with self.cpu() as cpu:
            cold = fio(
                uri,
                name="fabric-cold",
                rw="randread",
                size=self.size,
                runtime=max(self.runtime, 60),
                time_based=False,
                replay=replay,
            )
        alloc1 = file_allocated(overlay)
        p = self.alpha.complete_migration_target(vol)
        self.finish_takeover(source, vol)
        grew = (alloc1 or 0) - (alloc0 or 0)
        self.details[f"4_{source}_cold"] = {
            **cold,
            "cpu": cpu.result,
            "copied_before_pause": done0,
            "overlay_alloc_before": alloc0,
            "overlay_alloc_after": alloc1,
            "job_bytes_done_after": p.bytes_done,
            "state_after": p.state.value,
        }
        self.row(
            "4",
            "fabric IOPS, cold (every read misses)",
            f"alpha remote node->{source}",
            "paused takeover; random 4k reads QD16, 1 per 64 KiB cluster (iolog replay)",
            iops=str(cold["iops"]),
            pct=f"{'>=' if cold['iops'] >= TARGET_FABRIC_IOPS else '<'}10k",
            notes=f"{cold['ios']} reads in {cold['job_runtime_s']:.1f} s, p99 {cold['read_p99_ms']} ms; "
            f"overlay grew {grew / MiB:.0f} MiB while the copy job was PAUSED "
            f"(job progress {p.bytes_done / MiB:.0f} MiB, state {p.state.value}); " + cpu_note(cpu.result),
        )
        # b) time-based randread over the whole LUN, as a client would do
        vol, uri, done0 = self._paused_takeover(source, name)
        alloc0 = file_allocated(overlay)
        with self.cpu() as cpu:
            timed = fio(uri, name="fabric-timed", rw="randread", size=self.size, runtime=self.runtime, log_dir=log_dir)
        alloc1 = file_allocated(overlay)
        self.finish_takeover(source, vol)
        series = timed.get("series") or []
        first = series[0][1] if series else None
        grew = (alloc1 or 0) - (alloc0 or 0)
        self.details[f"4_{source}_timed"] = {
            **timed,
            "cpu": cpu.result,
            "overlay_alloc_before": alloc0,
            "overlay_alloc_after": alloc1,
        }
        self.row(
            "4",
            "fabric IOPS, time-based",
            f"alpha remote node->{source}",
            f"paused takeover; randread 4k QD16, {self.runtime} s",
            iops=str(timed["iops"]),
            notes=f"1st second {first} IOPS; overlay grew {grew / MiB:.0f} MiB of {self.size / MiB:.0f}, "
            f"p99 {timed['read_p99_ms']} ms; " + cpu_note(cpu.result, timed["fio_cpu_pct"]),
        )
        # c) the source export directly
        src_uri = self.lab.backend(source).export_lun(name).uri
        with self.cpu() as cpu:
            direct = fio(src_uri, name="source-direct", rw="randread", size=self.size, runtime=self.runtime)
        self.lab.backend(source).unexport_lun(name)
        self.details[f"4_{source}_direct"] = {**direct, "cpu": cpu.result}
        self.row(
            "4",
            "source export directly",
            f"{source}",
            f"randread 4k QD16, {self.runtime} s",
            iops=str(direct["iops"]),
            notes=f"p99 {direct['read_p99_ms']} ms; " + cpu_note(cpu.result, direct["fio_cpu_pct"]),
        )

    def section5(self) -> None:
        if self.over_budget():
            self.row("5", "host copy", "gamma<->alpha", "-", notes="skipped: time budget")
            return
        log("5: host copy of a LUN with holes")
        try:
            src = self.make_lun("gamma", "holes")
            written = fill_holes(src, self.size, seed=5)
            hops = [("gamma", "holes", src, "alpha", "hc-a"), ("alpha", "hc-a", None, "gamma", "hc-g")]
            for s_arr, s_name, s_uri, d_arr, d_name in hops:
                s_uri = s_uri or self.lab.backend(s_arr).export_lun(s_name).uri
                d_uri = self.make_lun(d_arr, d_name)
                src_alloc = allocated_bytes(s_uri)
                with self.cpu() as cpu:
                    res = host_copy(s_uri, d_uri)
                dst_alloc = allocated_bytes(d_uri)
                ok = spot_check(s_uri, d_uri, self.size)
                self.details[f"5_{s_arr}_{d_arr}"] = {
                    "result": {k: getattr(res, k) for k in res.__dataclass_fields__},
                    "source_allocated": src_alloc,
                    "target_allocated": dst_alloc,
                    "data_written_by_fill": written,
                    "cpu": cpu.result,
                    "ok": ok,
                }
                self.row(
                    "5",
                    "host copy, LUN with holes",
                    f"{s_arr}->{d_arr}",
                    "every other MiB data",
                    mibs=f"{mibs(res.bytes_total, res.seconds):.0f} ({mibs(res.bytes_written, res.seconds):.0f} data)",
                    notes=f"{res.seconds:.1f} s, written {res.bytes_written / MiB:.0f} MiB, skipped "
                    f"{res.bytes_skipped / MiB:.0f} MiB; allocated src {src_alloc / MiB:.0f} MiB -> dst "
                    f"{dst_alloc / MiB:.0f} MiB; data {'verified' if ok else 'MISMATCH'}; " + cpu_note(cpu.result),
                )
        except Exception as exc:
            log(traceback.format_exc())
            self.row("5", "host copy, LUN with holes", "gamma<->alpha", "-", notes=f"ERROR: {exc}")


def markdown(table: list[dict[str, str]]) -> str:
    cols = [
        ("sec", "#"),
        ("what", "measurement"),
        ("path", "path"),
        ("setting", "setting"),
        ("iops", "IOPS"),
        ("pct", "vs plain"),
        ("mibs", "copy MiB/s"),
        ("notes", "notes"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in sorted(table, key=lambda r: ("1", "2", "2h", "3", "4", "5").index(r["sec"])):
        lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k, _ in cols) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for cmd in (["fio", "--version"], ["qemu-img", "--version"], ["nbdkit", "--version"], ["nbdcopy", "--version"]):
        try:
            out[cmd[0]] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[cmd[0]] = "?"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=None, help="LUN size in MiB (default 2048; 512 with --quick)")
    ap.add_argument("--runtime", type=int, default=None, help="seconds per time-based fio job (default 20; 5 quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 MiB LUNs, 5 s fio jobs")
    ap.add_argument(
        "--throttles",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[50, 100, 200, 0],
        help="fixed copy throttles in MiB/s for section 2, comma-separated; 0 = unlimited (default 50,100,200,0)",
    )
    ap.add_argument(
        "--default-speed-mib",
        type=int,
        default=None,
        help="override the arrays' default_speed_bps, MiB/s (default: the arrays' own; 0 = unlimited)",
    )
    ap.add_argument(
        "--sections",
        type=lambda s: {x.strip() for x in s.split(",") if x.strip()},
        default=set(SECTIONS),
        help=f"sections to run, comma-separated (default {','.join(SECTIONS)}; 2h = section 2 on a hot set)",
    )
    ap.add_argument("--budget-minutes", type=float, default=13.0, help="skip sections that would start later")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary lab folder (LUN images, logs)")
    args = ap.parse_args()
    args.size_mib = args.size_mib or (512 if args.quick else 2048)
    args.runtime = args.runtime or (5 if args.quick else 20)

    work = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    lab = Lab(work / "lab")
    lab.configure(**({} if args.default_speed_mib is None else {"default_speed_bps": args.default_speed_mib * MiB}))
    started = time.time()
    bench: Bench | None = None
    try:
        log(f"starting lab in {work}")
        lab.up()
        bench = Bench(lab, args, work)
        bench.setup()
        for sec in SECTIONS:
            if sec in args.sections:
                getattr(bench, f"section{sec}")()
    finally:
        down = lab.down()
        log(f"lab stopped: {down}")
        if all(down.values()) and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    header = [
        f"# Data-plane benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"LUN size {args.size_mib} MiB, fio runtime {args.runtime} s, 4 KiB blocks, QD16, nbd engine; "
        f"total {elapsed / 60:.1f} min. Host: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        f"**Caveat:** fio, the qemu-storage-daemons (alpha, beta) and nbdkit (gamma) all share these "
        f"{os.cpu_count()} cores on 127.0.0.1, and every LUN fits in the page cache: the numbers are CPU-bound "
        "and show relative costs, not what real arrays on a network would do. A qemu-storage-daemon has no "
        "iothread here, so one daemon serves NBD clients and the copy job on one main-loop thread.",
        "",
    ]
    table = markdown(bench.table if bench else [])
    fills = ", ".join(f"{k} {v} MiB/s" for k, v in (bench.fills if bench else {}).items())
    print("\n".join(header))
    print(table)
    print(f"\nFills (nbdcopy from nbdkit random): {fills}")
    print(
        f"Target check: client IOPS during a copy >= {TARGET_RATIO:.0%} of plain while the copy moves >= "
        f"{TARGET_COPY_MIBS:.0f} MiB/s; fabric >= {TARGET_FABRIC_IOPS} IOPS."
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
        "table": bench.table if bench else [],
        "details": bench.details if bench else {},
        "fills_mibs": bench.fills if bench else {},
        "markdown": "\n".join(header) + "\n" + table,
    }
    args.output.write_text(json.dumps(out, indent=1, default=str))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
