"""What one rebalance run is asked to do, and which of its moves may start now.

* ``REBALANCE_PARAMS_SCHEMA`` (the Airflow form) and ``parse_rebalance_request``
  (the same checks for a REST- or schedule-triggered run, plus the pool names
  Cinder knows): bad params are refused with every problem named, before
  anything is read or changed;
* ``admit``: the moves of a plan that may start now under the concurrency
  limits (per source pool, per destination pool, in total), counting the
  migrations already running, whoever started them; ``load``: that count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from include.backends.base import GiB
from include.migration.errors import InvalidParams
from include.migration.planner import Move, RebalanceParams
from include.migration.request import HOST_RE, MAX_SPEED_MIB, whole_number

MAX_LIMIT = 1000  # concurrent migrations; far above what one cloud's arrays take
TOTAL = "total"  # the key of load() that counts every migration in flight


def off(pool: str) -> str:
    """The key of load() that counts the migrations in flight off ``pool``."""
    return f"off:{pool}"


def onto(pool: str) -> str:
    """The key of load() that counts the migrations in flight onto ``pool``."""
    return f"onto:{pool}"


def load(flying: Iterable[tuple[str, str]]) -> Counter[str]:
    """Migrations in flight, from their ``(source pool, destination pool)``: ``TOTAL``, ``off(p)``, ``onto(p)``."""
    counts = Counter[str]()
    for source, destination in flying:
        counts[TOTAL] += 1
        counts[off(source)] += 1
        counts[onto(destination)] += 1
    return counts


@dataclass(frozen=True)
class Limits:
    """How many migrations may run at once: off one pool, onto one pool, in all (Watcher's zone migration: 2/2/6)."""

    per_source: int = 2
    per_destination: int = 2
    total: int = 6


@dataclass(frozen=True)
class RebalanceRequest:
    threshold: float = 80.0  # percent of a pool's capacity in use
    include_pools: tuple[str, ...] = ()  # empty: every pool
    exclude_pools: tuple[str, ...] = ()
    limits: Limits = Limits()
    max_moves: int | None = None  # budget of this run; None: no limit
    max_gib: int | None = None
    dry_run: bool = False
    speed_mib: int | None = None  # each migration's copy throttle; None: the array's default

    def planner_params(self) -> RebalanceParams:
        return RebalanceParams(
            threshold=self.threshold,
            include_pools=frozenset(self.include_pools),
            exclude_pools=frozenset(self.exclude_pools),
            max_moves=self.max_moves,
            max_bytes=None if self.max_gib is None else self.max_gib * GiB,
        )


_POOLS = {"type": "array", "items": {"type": "string", "pattern": HOST_RE.pattern}, "default": []}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
REBALANCE_PARAMS_SCHEMA: dict[str, dict[str, Any]] = {
    "threshold": {
        "type": "number",
        "default": RebalanceRequest.threshold,
        "minimum": 1,
        "maximum": 99,
        "description": "move volumes off pools whose used capacity is above this percentage, until they are below",
    },
    "include_pools": {**_POOLS, "description": "only these pools (host@backend#pool), as sources and destinations"},
    "exclude_pools": {**_POOLS, "description": "never these pools (host@backend#pool)"},
    "max_per_source": {**_LIMIT, "default": Limits.per_source, "description": "migrations at once off one pool"},
    "max_per_destination": {
        **_LIMIT,
        "default": Limits.per_destination,
        "description": "migrations at once onto one pool",
    },
    "max_total": {**_LIMIT, "default": Limits.total, "description": "migrations at once in all, manual ones included"},
    "max_moves": {"type": ["null", "integer"], "default": None, "minimum": 0, "description": "moves in this run"},
    "max_gib": {"type": ["null", "integer"], "default": None, "minimum": 0, "description": "GiB moved in this run"},
    "dry_run": {"type": "boolean", "default": False, "description": "plan and log only: change nothing anywhere"},
    "speed_mib": {
        "type": ["null", "integer"],
        "default": None,
        "minimum": 0,
        "maximum": MAX_SPEED_MIB,
        "description": "copy throttle of each migration, MiB/s; empty: the array's default; 0: unlimited",
    },
}


def _pools(conf: dict[str, Any], key: str, known: Collection[str] | None, problems: list[str]) -> tuple[str, ...]:
    value = conf.get(key) or []
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        problems.append(f"{key} must be a list of pool names (host@backend#pool), got {value!r}")
        return ()
    malformed = [p for p in value if not HOST_RE.match(p)]
    if malformed:
        problems.append(f"{key}: not host@backend#pool: {', '.join(map(repr, malformed))}")
    elif known is not None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            problems.append(
                f"{key}: pools Cinder does not know: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
    return tuple(value)


def parse_rebalance_request(conf: dict[str, Any], known_pools: Collection[str] | None = None) -> RebalanceRequest:
    """Validate a rebalance run's params; InvalidParams naming every problem found.

    ``known_pools``: the pools Cinder reports; include/exclude names must be among them.
    """
    if not isinstance(conf, dict):
        raise InvalidParams("the run's parameters must be an object")
    problems: list[str] = []
    unknown = sorted(set(conf) - set(REBALANCE_PARAMS_SCHEMA))
    if unknown:
        problems.append(f"unknown parameters: {', '.join(unknown)}")
    threshold = conf.get("threshold", RebalanceRequest.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 1 <= threshold <= 99:
        problems.append(f"threshold must be a percentage between 1 and 99, got {threshold!r}")
    include = _pools(conf, "include_pools", known_pools, problems)
    exclude = _pools(conf, "exclude_pools", known_pools, problems)
    both = sorted(set(include) & set(exclude))
    if both:
        problems.append(f"pools both included and excluded: {', '.join(both)}")
    numbers: dict[str, int | None] = {}
    for key, lo, hi, default in (
        ("max_per_source", 1, MAX_LIMIT, Limits.per_source),
        ("max_per_destination", 1, MAX_LIMIT, Limits.per_destination),
        ("max_total", 1, MAX_LIMIT, Limits.total),
        ("max_moves", 0, 10**6, None),
        ("max_gib", 0, 10**9, None),
        ("speed_mib", 0, MAX_SPEED_MIB, None),
    ):
        try:
            numbers[key] = whole_number(conf, key, lo, hi, default)
        except InvalidParams as exc:
            problems.append(str(exc))
    dry_run = conf.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(f"dry_run must be true or false, got {dry_run!r}")
    if problems:
        raise InvalidParams("; ".join(problems))
    return RebalanceRequest(
        threshold=float(threshold),
        include_pools=include,
        exclude_pools=exclude,
        limits=Limits(numbers["max_per_source"], numbers["max_per_destination"], numbers["max_total"]),
        max_moves=numbers["max_moves"],
        max_gib=numbers["max_gib"],
        dry_run=dry_run,
        speed_mib=numbers["speed_mib"],
    )


def admit(pending: Sequence[Move], running: Iterable[tuple[str, str]], limits: Limits) -> list[Move]:
    """The moves of ``pending`` (in plan order) that may start now.

    ``running``: ``(source pool, destination pool)`` of every migration in flight,
    whoever started it (this run's, an operator's by hand). A move is admitted
    while its source has fewer than ``per_source``, its destination fewer than
    ``per_destination`` and all of them fewer than ``total`` migrations; each
    admitted move counts for the next.
    """
    current = load(running)
    admitted = []
    for move in pending:
        if current[TOTAL] >= limits.total:
            break
        if current[off(move.source)] >= limits.per_source or current[onto(move.destination)] >= limits.per_destination:
            continue
        admitted.append(move)
        current.update(load([(move.source, move.destination)]))
    return admitted
