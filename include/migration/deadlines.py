"""How long a migration's copy may take: one deadline per copy, derived from the volume's size and speed.

The deadline is fixed once, when ``validate_and_lock`` first locks the
volume, and kept with the lock in Cinder (``os-async_migration_begin``
records it; a retry or a cleared run that locks again gets the same one
back). Every wait after it works to that instant: the driver steps, a
takeover's deferred wait (its retries included) and each slice of a host
copy. So no retry restarts the clock, and a copy of any size gets time in
proportion to it.

Unless the run gives ``copy_timeout_s``, the time allowed is
``SLACK_FACTOR`` times the copy at ``speed_mib`` (``ASSUMED_RATE_MIB_S``
when the run leaves the speed to the array or unlimited), plus
``START_ALLOWANCE_S`` for the steps before the copy, and at least
``MIN_COPY_TIMEOUT_S``. A copy that would need more than
``MAX_TIMEOUT_S`` is refused before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from include.backends.base import GiB, MiB

ASSUMED_RATE_MIB_S = 25  # a copy left at the array's own speed, or unlimited: at least this fast, even on a busy array
SLACK_FACTOR = 2  # the time the copy would take at its speed, this many times over
START_ALLOWANCE_S = 15 * 60  # the steps before the copy starts (lock, a driver's own move, the target's creation)
MIN_COPY_TIMEOUT_S = 2 * 3600
# a plan made before deadlines were kept with the lock has none: its copy was given this long, as it always was
LEGACY_COPY_TIMEOUT_S = 24 * 3600
MAX_TIMEOUT_S = 30 * 24 * 3600  # the longest copy_timeout_s a run may give, or be given
# a host copy's try copies for task_timeout_s at most (one slice), and may take this much longer around it: the
# destination volume's creation (flow.TARGET_CREATE_TIMEOUT_S), the connections, the last flush and checkpoint
HOST_COPY_GRACE_S = 15 * 60


@dataclass(frozen=True)
class CopyTimeout:
    """How long the copy may take (``seconds``) and why (``basis``, one line for the plan's log)."""

    seconds: int
    basis: str


def _span(seconds: float) -> str:
    """``131972`` -> ``36 h 40 min``; ``900`` -> ``15 min``; ``41`` -> ``41 s``; ``604800`` -> ``7 d 0 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if hours >= 72:
        return f"{hours // 24} d {hours % 24} h"
    return f"{hours} h {minutes} min" if hours and minutes else f"{hours} h" if hours else f"{minutes} min"


def copy_timeout(size_bytes: int, speed_mib: int | None, given: int | None = None) -> CopyTimeout:
    """The time a copy of ``size_bytes`` may take: ``given`` (the run's ``copy_timeout_s``) when set, else derived.

    Raises ValueError, naming the size and speed, when the derived time is above ``MAX_TIMEOUT_S``.
    """
    if given is not None:
        return CopyTimeout(given, f"copy_timeout_s={given} as given ({_span(given)})")
    rate = speed_mib if speed_mib else ASSUMED_RATE_MIB_S
    how = f"at speed_mib={speed_mib}" if speed_mib else f"at an assumed {ASSUMED_RATE_MIB_S} MiB/s (no speed_mib)"
    at_rate = size_bytes / (rate * MiB)
    with_margin = math.ceil(SLACK_FACTOR * at_rate + START_ALLOWANCE_S)
    seconds = max(MIN_COPY_TIMEOUT_S, with_margin)
    size = f"{size_bytes / GiB:g} GiB"
    if seconds > MAX_TIMEOUT_S:
        raise ValueError(
            f"a copy of {size} {how} would need {_span(seconds)} with its margin, more than the "
            f"{MAX_TIMEOUT_S // 86400}-day limit: give a higher speed_mib"
        )
    basis = f"derived: {size} {how} is {_span(at_rate)}, x{SLACK_FACTOR} + {_span(START_ALLOWANCE_S)}"
    basis += f" = {_span(with_margin)}"
    if with_margin < MIN_COPY_TIMEOUT_S:
        basis += f", raised to the {_span(MIN_COPY_TIMEOUT_S)} minimum"
    return CopyTimeout(seconds, basis)


def deadline_text(deadline: float) -> str:
    """An epoch time as the plan's log shows it: ``2026-12-09 02:14:05 UTC``."""
    return datetime.fromtimestamp(deadline, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds_left(deadline: float, now: float) -> float:
    """Seconds from ``now`` to ``deadline`` (both epoch), never below 0."""
    return max(0.0, deadline - now)


def rebalance_timeout(sizes: Iterable[int], speed_mib: int | None, at_once: int) -> int:
    """How long a rebalance follows its moves: each at its derived copy time (``MAX_TIMEOUT_S`` for one refused as
    too long), ``at_once`` at a time: the longest, plus the others shared out. At most ``MAX_TIMEOUT_S``."""
    spans = []
    for size in sizes:
        try:
            spans.append(copy_timeout(size, speed_mib).seconds)
        except ValueError:  # its run refuses it at once
            spans.append(MIN_COPY_TIMEOUT_S)
    if not spans:
        return 0
    spans.sort()
    return min(MAX_TIMEOUT_S, spans[-1] + math.ceil(sum(spans[:-1]) / max(1, at_once)))
