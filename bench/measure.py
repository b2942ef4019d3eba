"""How the benchmark measures: fio with the nbd engine, CPU use over an interval, test data and its checks."""

from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from include.backends.base import MiB
from lab import procutil, verify


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mibs(nbytes: float, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else 0.0


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


# ---- CPU -----------------------------------------------------------------------------------


class CpuMeter:
    """CPU use of the array data-plane servers and of the whole host over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.ticks0 = {n: procutil.cpu_ticks(p) for n, p in self.pids.items()}
        self.host0 = procutil.host_cpu_ticks()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        dt = max(time.monotonic() - self.t0, 1e-6)
        for name, pid in self.pids.items():
            used = procutil.cpu_ticks(pid) - self.ticks0[name]
            self.result[f"{name}_pct"] = round(100.0 * used / self.hz / dt, 1)
        busy1, total1 = procutil.host_cpu_ticks()
        busy = busy1 - self.host0[0]
        total = max(total1 - self.host0[1], 1)
        self.result["host_busy_pct"] = round(100.0 * busy / total, 1)


def cpu_note(cpu: dict[str, float], fio_cpu: float | None = None) -> str:
    parts = [f"{k.removesuffix('_pct')} {v:.0f}%" for k, v in cpu.items() if k != "host_busy_pct" and v >= 1]
    if fio_cpu is not None:
        parts.append(f"fio {fio_cpu:.0f}%")
    return f"CPU (100% = 1 core): {', '.join(parts)}; host {cpu.get('host_busy_pct', 0):.0f}% of all cores busy"


# ---- data ----------------------------------------------------------------------------------


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


def verified(ok: bool) -> str:
    return "verified" if ok else "MISMATCH"


def allocated_bytes(uri: str) -> int:
    """Bytes the export reports as data (NBD block status through ``qemu-img map``)."""
    out = run(["qemu-img", "map", "--output=json", "-f", "raw", uri], timeout=120).stdout
    return sum(int(e["length"]) for e in json.loads(out) if e.get("data"))


def file_allocated(path: Path) -> int | None:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return None


# ---- fio -----------------------------------------------------------------------------------


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

    ``size``/``offset`` select the region; ``replay`` replays an iolog (v2) instead of ``rw``;
    ``log_dir`` asks for the per-second series (an IOPS log written there).
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
    out: dict[str, Any] = {
        "cmd": " ".join(cmd),
        "read_iops": round(read["iops"]),
        "write_iops": round(write["iops"]),
        "iops": round(read["iops"] + write["iops"]),
        "ios": int(read["total_ios"] + write["total_ios"]),
        "read_p99_ms": _p99_ms(read),
        "write_p99_ms": _p99_ms(write),
        "fio_cpu_pct": round(float(job["usr_cpu"]) + float(job["sys_cpu"]), 1),
        "job_runtime_s": job["job_runtime"] / 1000.0,
        "iodepth_level": job.get("iodepth_level"),
        "started": started,
        "ended": ended,
    }
    if log_dir is not None:
        out["series"] = _iops_series(log_dir, name)
    return out


def _p99_ms(d: dict[str, Any]) -> float | None:
    pct = (d.get("clat_ns") or {}).get("percentile") or {}
    return round(pct["99.000000"] / 1e6, 3) if "99.000000" in pct else None


def _iops_series(log_dir: Path, name: str) -> list[list[int]]:
    """[second, IOPS] pairs from fio's IOPS logs of job ``name`` (reads and writes summed)."""
    series: dict[int, float] = {}
    for path in glob.glob(f"{log_dir / name}_iops*.log"):
        for line in Path(path).read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                second = round(int(parts[0]) / 1000)
                series[second] = series.get(second, 0.0) + float(parts[1])
    return [[t, round(v)] for t, v in sorted(series.items())]
