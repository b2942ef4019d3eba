"""A monotonic clock for the unit tests: time moves only when ``sleep`` (or the test) moves it, so loops run at once."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
