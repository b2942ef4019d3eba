"""The planner of bulk rebalancing: which volumes to move off pools above a threshold, and where to.

Plain functions on plain data (no Airflow, no I/O): the caller reads pools and
volumes from Cinder, ``plan_rebalance`` returns the moves and, for every other
volume it was given, why it stays. Rules:

* a source is an up, included pool whose used ratio is above the threshold,
  most over first; its eligible volumes leave smallest first (ties by id)
  while its projected used ratio is still above the threshold;
* a destination never ends above the threshold (``used + size <= threshold``),
  so no pool is filled to be drained by the next run, and stays within its
  over-subscription (``provisioned + size <= total * ratio``); a pool that is
  a source is never a destination in the same plan; a volume whose type pins a
  backend goes only to a pool of that backend;
* space held by migrations in flight is counted on their destination first;
* among destinations: the shortest time unusable first (a takeover is usable at
  once; a pool move inside one array is synchronous but never leaves the array;
  a host copy is synchronous through the host), then the highest free ratio
  after the move, then the name;
* a budget per run: ``max_moves`` moves, ``max_bytes`` bytes.

Sizes are bytes; the threshold is a percentage compared in whole bytes
(``floor(total * threshold / 100)``), so a pool exactly at it is not over.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from include.backends.base import GiB
from include.cinder_plugin.names import SETTLED_MIGRATION_STATUSES
from include.connectors import takes_over
from include.migration.steps import Step

# migration_status of a volume no migration holds: Cinder's settled ones, and an empty one
NOT_MIGRATING = frozenset({"", *SETTLED_MIGRATION_STATUSES})
# a destination's path, best first: the shortest time the volume is unusable
PATH_RANK = {Step.TARGET_TAKEOVER: 0, Step.SOURCE_DRIVER: 1, Step.HOST_COPY: 2}


class SkipReason(enum.StrEnum):
    """Why the planner left a volume where it is; ``meaning`` says it in one line."""

    POOL_UNKNOWN = "pool_unknown"
    POOL_EXCLUDED = "pool_excluded"
    POOL_DOWN = "pool_down"
    POOL_NOT_OVER = "pool_not_over"
    MIGRATING = "migrating"
    ATTACHED = "attached"
    NOT_AVAILABLE = "not_available"
    HAS_SNAPSHOTS = "has_snapshots"
    IN_GROUP = "in_group"
    SOURCE_BALANCED = "source_balanced"
    BUDGET = "budget"
    TYPE_PINNED = "type_pinned"
    NO_DESTINATION = "no_destination"

    @property
    def meaning(self) -> str:
        return SKIP_MEANINGS[self]


SKIP_MEANINGS = {
    SkipReason.POOL_UNKNOWN: "its pool is not among the pools Cinder reported",
    SkipReason.POOL_EXCLUDED: "its pool is excluded (exclude_pools, or not in include_pools)",
    SkipReason.POOL_DOWN: "its pool's volume service is down: nothing can move off it",
    SkipReason.POOL_NOT_OVER: "its pool is at or below the threshold",
    SkipReason.MIGRATING: "a migration of it is already in flight",
    SkipReason.ATTACHED: "it is attached (in-use): the migration flow takes available volumes only",
    SkipReason.NOT_AVAILABLE: "its status is not available (error, maintenance, ...): the flow refuses it",
    SkipReason.HAS_SNAPSHOTS: "it has snapshots: the flow refuses it",
    SkipReason.IN_GROUP: "it is in a group: the flow refuses it",
    SkipReason.SOURCE_BALANCED: "enough smaller volumes move off its pool to bring it to the threshold",
    SkipReason.BUDGET: "the run's budget (max_moves or max_bytes) is spent",
    SkipReason.TYPE_PINNED: "its type pins a backend and no other pool of that backend can take it",
    SkipReason.NO_DESTINATION: "no pool can take it and stay at or below the threshold and its over-subscription",
}


@dataclass(frozen=True)
class PoolState:
    name: str  # host@backend#pool, as Cinder names it
    total_bytes: int
    free_bytes: int
    provisioned_bytes: int
    max_over_subscription_ratio: float = 1.0
    up: bool = True
    takeover: bool = False  # takes volumes over asynchronously (usable at once)
    protocol: str = ""  # the connection type of its volumes (nbd, rbd...)
    takeover_from: tuple[str, ...] = ()  # the connection types of the sources it takes over; (): any
    volume_backend_name: str | None = None  # what a volume type pins (get-pools capabilities); None: ``backend``

    def __post_init__(self) -> None:
        if self.total_bytes <= 0:
            raise ValueError(f"pool {self.name}: total_bytes must be positive, not {self.total_bytes}")
        if not self.max_over_subscription_ratio > 0:
            raise ValueError(f"pool {self.name}: max_over_subscription_ratio must be positive")

    @property
    def backend(self) -> str:
        return self.name.partition("@")[2].partition("#")[0]

    def takes_over_from(self, source: PoolState) -> bool:
        """This pool's driver takes a volume of ``source`` over (by what its capabilities say)."""
        return takes_over(self.takeover, self.takeover_from, source.protocol)

    @property
    def used_ratio(self) -> float:
        return (self.total_bytes - self.free_bytes) / self.total_bytes

    def serves(self, pinned_backend: str) -> bool:
        return (self.volume_backend_name or self.backend) == pinned_backend


@dataclass(frozen=True)
class VolumeState:
    id: str
    size_bytes: int
    pool: str  # host@backend#pool
    status: str = "available"
    volume_type: str | None = None
    pinned_backend: str | None = None  # the type's volume_backend_name, if it has one
    has_snapshots: bool = False
    group_id: str | None = None
    migration_status: str | None = None
    migration_dest: str | None = None  # the pool a migration already in flight goes to
    attachments: int = 0

    @property
    def migrating(self) -> bool:
        return self.migration_status not in NOT_MIGRATING


@dataclass(frozen=True)
class RebalanceParams:
    threshold: float = 80  # percent of a pool's capacity in use
    include_pools: frozenset[str] = frozenset()  # empty: all
    exclude_pools: frozenset[str] = frozenset()
    max_moves: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ValueError(f"threshold must be a number of percent, not {self.threshold!r}")
        if not 1 <= self.threshold <= 99:
            raise ValueError(f"threshold must be between 1 and 99 percent, not {self.threshold}")
        for name in ("max_moves", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 or None, not {value!r}")
        for name in ("include_pools", "exclude_pools"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a set of pool names, not the string {value!r}")
            object.__setattr__(self, name, frozenset(value))

    def takes(self, pool: str) -> bool:
        """Whether the pool is in the plan's scope, as a source or as a destination."""
        return (not self.include_pools or pool in self.include_pools) and pool not in self.exclude_pools


@dataclass(frozen=True)
class Move:
    volume_id: str
    size_bytes: int
    source: str
    destination: str
    path: Step  # the blueprint path the migration is expected to take


@dataclass(frozen=True)
class Skipped:
    volume_id: str
    pool: str
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    skipped: tuple[Skipped, ...]  # by pool, then volume id
    before: dict[str, float]  # pool -> used ratio as reported
    after: dict[str, float]  # pool -> projected used ratio: migrations in flight and the moves done
    threshold: float = 80

    @property
    def moved_bytes(self) -> int:
        return sum(m.size_bytes for m in self.moves)

    def to_json(self) -> dict[str, Any]:
        return {
            "moves": [asdict(m) for m in self.moves],
            "skipped": [asdict(s) for s in self.skipped],
            "before": self.before,
            "after": self.after,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RebalancePlan:
        return cls(
            moves=tuple(Move(**{**m, "path": Step(m["path"])}) for m in data["moves"]),
            skipped=tuple(Skipped(**{**s, "reason": SkipReason(s["reason"])}) for s in data["skipped"]),
            before=dict(data["before"]),
            after=dict(data["after"]),
            threshold=data["threshold"],
        )


def expected_path(source: PoolState, destination: PoolState) -> Step:
    """The blueprint step expected to move a volume: the source array between its own pools, a takeover, a copy."""
    if source.backend == destination.backend:
        return Step.SOURCE_DRIVER
    return Step.TARGET_TAKEOVER if destination.takes_over_from(source) else Step.HOST_COPY


def _gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.1f} GiB"


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.1f}%"


class _Projection:
    """Each pool's projected free and provisioned bytes, and its limits in whole bytes."""

    def __init__(self, pools: dict[str, PoolState], threshold: float) -> None:
        self.pools = pools
        self.free = {n: p.free_bytes for n, p in pools.items()}
        self.prov = {n: p.provisioned_bytes for n, p in pools.items()}
        # used > total * t / 100  <=>  used > floor(total * t / 100) for whole bytes; Fraction keeps it exact
        t = Fraction(threshold) / 100
        self.limit = {n: math.floor(t * p.total_bytes) for n, p in pools.items()}
        self.cap = {n: math.floor(Fraction(p.max_over_subscription_ratio) * p.total_bytes) for n, p in pools.items()}

    def used(self, pool: str) -> int:
        return self.pools[pool].total_bytes - self.free[pool]

    def over(self, pool: str) -> bool:
        return self.used(pool) > self.limit[pool]

    def ratio(self, pool: str) -> float:
        return self.used(pool) / self.pools[pool].total_bytes

    def fits(self, pool: str, size: int) -> bool:
        return self.used(pool) + size <= self.limit[pool] and self.prov[pool] + size <= self.cap[pool]

    def take(self, pool: str, size: int) -> None:
        self.free[pool] -= size
        self.prov[pool] += size


def _precheck(
    volume: VolumeState, pools: dict[str, PoolState], sources: set[str], proj: _Projection, params: RebalanceParams
) -> tuple[SkipReason, str] | None:
    """Why the volume stays whatever the other volumes do: its pool, its state. None: it may move."""
    pool = pools.get(volume.pool)
    if pool is None:
        return SkipReason.POOL_UNKNOWN, f"pool {volume.pool!r} was not reported"
    if not params.takes(pool.name):
        return SkipReason.POOL_EXCLUDED, f"pool {pool.name} is out of the plan's scope"
    if not pool.up:
        return SkipReason.POOL_DOWN, f"pool {pool.name} is down"
    if pool.name not in sources:
        return SkipReason.POOL_NOT_OVER, f"pool {pool.name} at {_pct(proj.ratio(pool.name))} <= {params.threshold}%"
    if volume.migrating:
        return SkipReason.MIGRATING, f"migration_status {volume.migration_status} to {volume.migration_dest or '?'}"
    if volume.status == "in-use" or volume.attachments:
        return SkipReason.ATTACHED, f"status {volume.status}, {volume.attachments} attachment(s)"
    if volume.status != "available":
        return SkipReason.NOT_AVAILABLE, f"status {volume.status}"
    if volume.has_snapshots:
        return SkipReason.HAS_SNAPSHOTS, "has snapshots"
    if volume.group_id:
        return SkipReason.IN_GROUP, f"in group {volume.group_id}"
    return None


def _index(
    pools: Iterable[PoolState], volumes: Iterable[VolumeState]
) -> tuple[dict[str, PoolState], list[VolumeState]]:
    by_name: dict[str, PoolState] = {}
    for pool in pools:
        if pool.name in by_name:
            raise ValueError(f"pool {pool.name} is given twice")
        by_name[pool.name] = pool
    vols = list(volumes)
    seen: set[str] = set()
    for v in vols:
        if v.id in seen:
            raise ValueError(f"volume {v.id} is given twice")
        if v.size_bytes < 0:
            raise ValueError(f"volume {v.id}: size_bytes must be >= 0, not {v.size_bytes}")
        seen.add(v.id)
    return by_name, vols


def plan_rebalance(
    pools: Iterable[PoolState], volumes: Iterable[VolumeState], params: RebalanceParams | None = None
) -> RebalancePlan:
    """The moves that bring pools above ``params.threshold`` down to it, and why every other volume stays.

    Every volume given is in ``moves`` or in ``skipped``, exactly once. Raises
    ``ValueError`` for a pool or volume given twice.
    """
    params = params or RebalanceParams()
    by_name, vols = _index(pools, volumes)
    proj = _Projection(by_name, params.threshold)
    for v in vols:  # space held by migrations in flight, counted on their destination
        if v.migrating and v.migration_dest in by_name and v.migration_dest != v.pool:
            proj.take(v.migration_dest, v.size_bytes)

    scope = [p for p in by_name.values() if p.up and params.takes(p.name)]
    sources = sorted((p.name for p in scope if proj.over(p.name)), key=lambda n: (-proj.ratio(n), n))
    source_set = set(sources)
    destinations = [p for p in scope if p.name not in source_set]

    skipped: list[Skipped] = []
    leaving: dict[str, list[VolumeState]] = {n: [] for n in sources}
    for v in vols:
        why = _precheck(v, by_name, source_set, proj, params)
        if why is None:
            leaving[v.pool].append(v)
        else:
            skipped.append(Skipped(v.id, v.pool, *why))

    moves: list[Move] = []
    moved_bytes = 0
    # room only shrinks while planning, so a size that found no destination fails for every larger one
    failed: dict[str | None, tuple[int, SkipReason, str]] = {}
    for src in sources:
        source = by_name[src]
        for v in sorted(leaving[src], key=lambda v: (v.size_bytes, v.id)):
            size, pin = v.size_bytes, v.pinned_backend
            why = None
            if not proj.over(src):
                why = SkipReason.SOURCE_BALANCED, f"{src} projected at {_pct(proj.ratio(src))}"
            elif params.max_moves is not None and len(moves) >= params.max_moves:
                why = SkipReason.BUDGET, f"max_moves {params.max_moves} planned"
            elif params.max_bytes is not None and moved_bytes + size > params.max_bytes:
                why = SkipReason.BUDGET, f"max_bytes {_gib(params.max_bytes)}: {_gib(moved_bytes)} planned"
            elif pin in failed and size >= failed[pin][0]:
                why = failed[pin][1:]
            if why is not None:
                skipped.append(Skipped(v.id, src, *why))
                continue
            dest = _destination(source, v, destinations, proj)
            if dest is None:
                if pin is None:
                    why = SkipReason.NO_DESTINATION, f"no pool can take {_gib(size)} or more"
                else:
                    why = SkipReason.TYPE_PINNED, f"type {v.volume_type} pins {pin}: no pool of it takes {_gib(size)}"
                failed[pin] = (size, *why)
                skipped.append(Skipped(v.id, src, *why))
                continue
            proj.take(src, -size)
            proj.take(dest.name, size)
            moved_bytes += size
            moves.append(Move(v.id, size, src, dest.name, expected_path(source, dest)))

    return RebalancePlan(
        moves=tuple(moves),
        skipped=tuple(sorted(skipped, key=lambda s: (s.pool, s.volume_id))),
        before={n: p.used_ratio for n, p in by_name.items()},
        after={n: proj.ratio(n) for n in by_name},
        threshold=params.threshold,
    )


def _destination(
    source: PoolState, volume: VolumeState, destinations: list[PoolState], proj: _Projection
) -> PoolState | None:
    """The best pool that can take the volume: shortest time unusable, then most free after it, then name."""
    best, best_key = None, None
    size = volume.size_bytes
    for pool in destinations:
        if volume.pinned_backend is not None and not pool.serves(volume.pinned_backend):
            continue
        if not proj.fits(pool.name, size):
            continue
        key = (PATH_RANK[expected_path(source, pool)], -(proj.free[pool.name] - size) / pool.total_bytes, pool.name)
        if best_key is None or key < best_key:
            best, best_key = pool, key
    return best


def format_plan(plan: RebalancePlan) -> str:
    """The plan as plain text for a log: the moves, the skipped volumes by reason, each pool before and after."""
    lines = [
        f"rebalance plan, threshold {plan.threshold}%: {len(plan.moves)} move(s), {_gib(plan.moved_bytes)}; "
        f"{len(plan.skipped)} volume(s) stay"
    ]
    if plan.moves:
        lines.append("moves:")
        rows = [("volume", "size GiB", "source -> destination", "path")]
        rows += [
            (m.volume_id, f"{m.size_bytes / GiB:.1f}", f"{m.source} -> {m.destination}", m.path) for m in plan.moves
        ]
        lines += columns(rows)
    if plan.skipped:
        lines.append("stay, by reason:")
        counts = Counter(s.reason for s in plan.skipped)
        rows = [("volumes", "reason", "meaning")]
        rows += [(str(counts[r]), r.value, r.meaning) for r in SkipReason if counts[r]]
        lines += columns(rows)
    lines.append("pools, used before -> after:")
    rows = [("pool", "before", "after")]
    rows += [(n, _pct(plan.before[n]), _pct(plan.after[n])) for n in sorted(plan.before)]
    lines += columns(rows)
    return "\n".join(lines)


def columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
