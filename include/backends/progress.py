"""Rate and ETA of a growing byte counter, shared by the copy paths."""

from __future__ import annotations

import collections

RATE_WINDOW = 5.0  # seconds of history for a rate


class RateMeter:
    """Rate of a growing counter over the last ``window`` seconds, and the ETA to ``total``."""

    def __init__(self, total: int, window: float = RATE_WINDOW) -> None:
        self.total = total
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, done: int) -> None:
        self._samples.append((now, done))
        # keep one sample at or before the window start so the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self) -> float | None:
        if not self._samples:
            return None
        left = self.total - self._samples[-1][1]
        if left <= 0:
            return 0.0
        rate = self.rate()
        return left / rate if rate > 0 else None
