"""The lab under test and the bookkeeping of one benchmark run.

``Bench`` holds the lab (alpha, beta, gamma), the three filled LUNs every
measurement starts from, the LUN and takeover plumbing, the table rows, the
details for the JSON and the time budget. ``Poller`` watches a background copy.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import CpuMeter, fill_random, log
from include.backends.base import MiB, MigrationProgress, MigrationState, Volume
from include.backends.errors import BackendError
from lab import procutil
from lab.lab import Lab

POLL = 0.5  # seconds between looks at a background copy
SOURCES = (("gamma", "src-g"), ("beta", "src-b"))  # (array, LUN) taken over by alpha, filled by setup()


def server_pids(lab: Lab) -> dict[str, int]:
    """The data-plane server of each array: qemu-storage-daemon or nbdkit (child of arrayd)."""
    out = {}
    for name in lab.names():
        arrayd = lab.pid(name)
        server = None if arrayd is None else procutil.descendant_named(arrayd, ("qemu-storage", "nbdkit"))
        if server is not None:
            out[name] = server
    return out


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


class Bench:
    """One benchmark run on a lab that is up: alpha takes LUNs over from gamma (nbdkit) and beta (qsd)."""

    def __init__(self, lab: Lab, args: argparse.Namespace, work: Path) -> None:
        self.lab, self.args, self.work = lab, args, work
        self.size = args.size_mib * MiB
        self.runtime = args.runtime
        self.alpha = lab.backend("alpha")
        self.began = time.monotonic()
        self.table: list[dict[str, str]] = []
        self.details: dict[str, Any] = {}
        self.baseline: dict[str, Any] = {}  # plain-export randrw IOPS, "full" LUN and "hot" set
        self.pids = server_pids(lab)
        self.fills: dict[str, float] = {}

    # -- bookkeeping
    def over_budget(self) -> bool:
        return time.monotonic() - self.began > self.args.budget_minutes * 60

    def row(self, sec: str, what: str, path: str, setting: str, **cols: Any) -> None:
        self.table.append({"sec": sec, "what": what, "path": path, "setting": setting, **cols})

    def cpu(self) -> CpuMeter:
        return CpuMeter(self.pids)

    def fio_log_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="fio-", dir=self.work))

    def attempt(
        self, sec: str, what: str, source: str, name: str, measure: Callable[[], None], setting: str = "-"
    ) -> Exception | None:
        """Run ``measure`` on the LUN ``name`` of ``source``; a skip or an error becomes a row.

        Skipped when the time budget is spent; after an error the LUN is reset. Returns the error.
        """
        if self.over_budget():
            self.row(sec, what, f"{source}->alpha", setting, notes="skipped: time budget")
            return None
        try:
            measure()
        except Exception as exc:
            log(traceback.format_exc())
            self.row(sec, what, f"{source}->alpha", setting, notes=f"ERROR: {exc}")
            self.reset(source, name)
            return exc
        return None

    # -- LUNs
    def setup(self) -> None:
        log(f"filling LUNs of {self.args.size_mib} MiB (alpha/base, gamma/src-g, beta/src-b)")
        self.base_uri = self.make_lun("alpha", "base", seed=1)
        for seed, (array, name) in enumerate(SOURCES, start=2):
            self.make_lun(array, name, seed=seed)
        for array, name in SOURCES:
            self.lab.backend(array).unexport_lun(name)

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

    def overlay_path(self, name: str) -> Path:
        return self.lab.array_dir("alpha") / "pools" / "pool1" / f"{name}.0.qcow2"

    # -- takeovers by alpha
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

    def wait_copy(self, vol: Volume, timeout: float, interval: float) -> tuple[MigrationProgress, dict[str, Any]]:
        """Look at alpha's copy of ``vol`` until it ends or ``timeout`` passes: the last look, parsed and raw."""
        deadline = time.monotonic() + timeout
        while True:
            raw = self.alpha.request("GET", f"/v1/luns/{vol.name}/migration")
            p = MigrationProgress.from_json(raw)
            if p.state.terminal or time.monotonic() >= deadline:
                return p, raw
            time.sleep(interval)

    def end_takeover(self, source: str, name: str) -> None:
        """Drop alpha's LUN ``name`` and the source's takeover export of it."""
        self.drop_lun("alpha", name)
        self.lab.backend(source).release_takeover(name)

    def finish_takeover(self, source: str, vol: Volume) -> dict[str, Any]:
        """Let the copy end at full speed, then ``end_takeover``. Returns alpha's record of the copy."""
        p = self.alpha.complete_migration_target(vol)
        if not p.state.terminal:
            try:
                if p.state is MigrationState.PAUSED:
                    self.alpha.resume_migration(vol)
                self.alpha.set_migration_speed(vol, 0)
            except BackendError as exc:  # it may have ended in between
                log(f"resume/speed of {vol.name}: {exc}")
        p, raw = self.wait_copy(vol, 60 + self.size / (10 * MiB), 0.25)
        if p.state is not MigrationState.DONE:
            raise RuntimeError(f"copy of {vol.name} did not finish: {p.describe()}")
        self.end_takeover(source, vol.name)
        return raw

    def reset(self, source: str, name: str) -> None:
        """After a failure: end a takeover of ``name`` if any (else drop what it left) and unexport the source."""
        try:
            self.finish_takeover(source, Volume(name, self.size))
        except Exception as exc:
            log(f"reset of {name}: {exc}")
            self._logged(name, lambda: self.end_takeover(source, name))
        self._logged(name, lambda: self.lab.backend(source).unexport_lun(name))

    @staticmethod
    def _logged(name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:
            log(f"reset of {name}: {exc}")
