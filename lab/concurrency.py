"""How many migrations run at once, measured from outside: Cinder and the arrays sampled every second.

``MigrationSampler(cinder, lab)`` runs in a thread while a rebalance (or
anything) runs: each sample counts Cinder's migrations in flight (by the
extension's lock: per source pool, per destination pool, in all, whoever
started them) and the copies the arrays report running. ``peaks`` is the
most seen at once for each; a failed sample is counted, not hidden.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping

from include.backends.errors import BackendError
from include.migration.cinder_api import CinderApi
from include.migration.inventory import in_flight_from, volumes_and_locks
from include.migration.rebalance import load
from lab.lab import Lab


def highest(counts: Mapping[str, int], prefix: str) -> int:
    """The highest count among keys starting with ``prefix`` (``off:``, ``onto:``, ``total``)."""
    return max((n for key, n in counts.items() if key.startswith(prefix)), default=0)


class MigrationSampler:
    def __init__(self, cinder: CinderApi, lab: Lab | None = None, interval: float = 1.0,
                 max_seconds: float = 4 * 3600) -> None:  # fmt: skip
        self.cinder, self.lab, self.interval, self.max_seconds = cinder, lab, interval, max_seconds
        self.peaks = Counter[str]()
        self.samples = 0
        self.failures: list[str] = []
        self.array_misses = 0
        self.volume_ids: set[str] = set()  # every volume seen migrating
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migration-sampler", daemon=True)

    def sample(self) -> Counter[str]:
        flights = in_flight_from(*volumes_and_locks(self.cinder))
        now = load((f.source, f.destination) for f in flights)
        self.volume_ids |= {f.volume_id for f in flights}
        if self.lab is not None:
            for name in self.lab.names():
                try:
                    copies = [lun for lun in self.lab.backend(name).list_luns() if lun.get("copy")]
                except BackendError:  # a stopped array: its copies are not counted in this sample
                    self.array_misses += 1
                    continue
                now[f"copies:{name}"] = len(copies)
        return now

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                now = self.sample()
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                self.samples += 1
                for key, n in now.items():
                    self.peaks[key] = max(self.peaks[key], n)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> MigrationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def peak(self, prefix: str) -> int:
        """The most seen at once among keys starting with ``prefix`` (``off:``, ``onto:``, ``total``)."""
        return highest(self.peaks, prefix)

    def table(self) -> str:
        rows = [f"  {key:<40} {n}" for key, n in sorted(self.peaks.items())]
        head = f"most at once over {self.samples} samples ({len(self.failures)} failed):"
        return "\n".join([head, *rows])
