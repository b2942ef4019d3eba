"""The end of a rebalance run: what happened to every volume it looked at, as a table and as data.

``summarize(plan, results, after)`` puts each planned move's result (moved,
failed with the reason, not started with the reason, still running, planned
in a dry run) beside every volume the planner left (with its skip reason),
and the pools' used ratios before the run and after it. ``format_summary``
writes it for the task log; ``RebalanceSummary.to_json`` is the extra of the
Airflow asset event that other DAGs can schedule on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from include.backends.base import GiB
from include.migration.dispatch import MoveResult, Outcome
from include.migration.planner import RebalancePlan, columns


@dataclass(frozen=True)
class RebalanceSummary:
    results: tuple[MoveResult, ...]
    skipped: tuple[dict[str, str], ...]  # volume_id, pool, reason, detail
    before: dict[str, float]
    after: dict[str, float]
    threshold: float
    dry_run: bool = False

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(str(r.outcome) for r in self.results)
        found["skipped"] = len(self.skipped)
        return dict(sorted(found.items()))

    @property
    def moved_bytes(self) -> int:
        return sum(r.size_bytes for r in self.results if r.outcome is Outcome.MOVED)

    @property
    def volumes(self) -> int:
        return len(self.results) + len(self.skipped)

    @property
    def over(self) -> list[str]:
        """Pools still above the threshold after the run."""
        # ratio > threshold / 100, not 100 * ratio > threshold: a pool the planner filled exactly to the
        # threshold (56 GiB of 100 at 56%) is not over; 100 * 0.56 is 56.00000000000001 in floats
        return sorted(p for p, ratio in self.after.items() if ratio > self.threshold / 100)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "threshold": self.threshold,
            "volumes": self.volumes,
            "counts": self.counts,
            "moved_bytes": self.moved_bytes,
            "pools": {p: {"before": self.before.get(p), "after": self.after.get(p)} for p in sorted(self.after)},
            "pools_over_threshold": self.over,
            "moves": [r.to_json() for r in self.results],
            "skipped": list(self.skipped),
        }


def summarize(
    plan: RebalancePlan, results: Iterable[MoveResult], after: Mapping[str, float], *, dry_run: bool = False
) -> RebalanceSummary:
    """``after``: each pool's used ratio read once the run ended (for a dry run: the plan's projection)."""
    skipped = tuple(
        {"volume_id": s.volume_id, "pool": s.pool, "reason": str(s.reason), "detail": s.detail} for s in plan.skipped
    )
    return RebalanceSummary(
        results=tuple(results),
        skipped=skipped,
        before=dict(plan.before),
        after={**plan.before, **after},
        threshold=plan.threshold,
        dry_run=dry_run,
    )


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def format_summary(summary: RebalanceSummary) -> str:
    """Every volume with what happened to it, then the pools before and after."""
    counts = ", ".join(f"{n} {what}" for what, n in summary.counts.items())
    lines = [
        f"rebalance {'dry run ' if summary.dry_run else ''}summary, threshold {summary.threshold}%: "
        f"{summary.volumes} volume(s): {counts}; {summary.moved_bytes / GiB:.1f} GiB moved"
    ]
    if summary.results:
        lines.append("moves:")
        rows = [("volume", "GiB", "source -> destination", "path", "result", "seconds", "reason")]
        rows += [
            (
                r.volume_id,
                f"{r.size_bytes / GiB:.1f}",
                f"{r.source} -> {r.destination}",
                r.path,
                str(r.outcome),
                "-" if r.seconds is None else f"{r.seconds:.1f}",
                r.reason,
            )  # fmt: skip
            for r in summary.results
        ]
        lines += columns(rows)
    if summary.skipped:
        lines.append("left where they are:")
        rows = [("volume", "pool", "reason", "detail")]
        rows += [(s["volume_id"], s["pool"], s["reason"], s["detail"]) for s in summary.skipped]
        lines += columns(rows)
    lines.append("pools, used before -> after:")
    rows = [("pool", "before", "after", "")]
    rows += [
        (p, _pct(summary.before.get(p)), _pct(summary.after.get(p)), "above threshold" if p in summary.over else "")
        for p in sorted(summary.after)
    ]
    lines += columns(rows)
    return "\n".join(lines)
