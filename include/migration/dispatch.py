"""Carry out a rebalance plan: one ``volume_migration`` run per move, under the limits, to the end.

``Dispatch`` is the loop's state, one round at a time (no Airflow here):
``Dispatch.begin``, then ``round`` until it answers False, then ``close``.
The DAG's ``migrate`` step (``plugins/operators/rebalance_moves.py``) runs
one round, defers until one of its runs ends, and runs the next, keeping the
state as JSON between them; it gives the rounds ``Ports`` that read Cinder
and start and watch Airflow runs:

* each round it reads the migrations in flight in Cinder (whoever started
  them: this run, an operator by hand) and adds the runs it started that have
  not locked their volume yet, and admits the next moves of the plan that fit
  the limits per source pool, per destination pool and in total (``admit``);
* a move is not started, with the reason, when its volume is no longer what
  the plan saw (moved, migrating, in use, gone), when its source or
  destination pool is down, or when the last ``max_failures`` moves to its
  destination failed; a failed move never stops the others;
* each move's run has a fixed id (``move_run_id``): a cleared rebalance run
  finds the runs it started and follows them instead of starting a second
  migration of the same volume;
* it ends when every move has a result, or at ``deadline_s`` (moves not
  started then say so, runs still going are reported as running).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from include.migration.inventory import Cloud
from include.migration.planner import Move
from include.migration.rebalance import Limits, admit, load
from include.migration.steps import Step

log = logging.getLogger(__name__)

RUN_ENDED = {"success": True, "failed": False}  # Airflow's terminal DAG run states -> moved?


class Outcome(enum.StrEnum):
    MOVED = "moved"
    FAILED = "failed"
    NOT_STARTED = "not_started"
    RUNNING = "still_running"  # the rebalance ran out of time; the migration goes on
    PLANNED = "planned"  # a dry run


@dataclass(frozen=True)
class MoveResult:
    volume_id: str
    size_bytes: int
    source: str
    destination: str
    path: str
    outcome: Outcome
    reason: str = ""
    run_id: str | None = None
    seconds: float | None = None  # from the run's start to its end, as this loop saw them

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveResult:
        return cls(**{**data, "outcome": Outcome(data["outcome"])})

    @classmethod
    def of(cls, move: Move, outcome: Outcome, reason: str = "", run_id: str | None = None,
           seconds: float | None = None) -> MoveResult:  # fmt: skip
        return cls(move.volume_id, move.size_bytes, move.source, move.destination, str(move.path),
                   outcome, reason, run_id, None if seconds is None else round(seconds, 1))  # fmt: skip


class Ports(Protocol):
    """What the loop needs from outside; the DAG's runtime supplies them."""

    def look(self) -> Cloud:
        """Cinder now: pools (up or not), volumes, migrations in flight."""

    def start(self, move: Move, run_id: str) -> None:
        """Start the ``volume_migration`` run ``run_id`` for ``move`` (nothing if it exists already)."""

    def exists(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs exist already."""

    def state(self, run_id: str) -> str:
        """The run's Airflow state: queued, running, success, failed."""

    def failure(self, run_id: str, volume_id: str) -> str:
        """Why the run failed, in a line."""


MOVE_RUN_PREFIX = "rebalance__"


def move_run_id(rebalance_run_id: str, volume_id: str) -> str:
    """The run that moves ``volume_id`` for this rebalance run: the same on every try and every clear."""
    return f"{MOVE_RUN_PREFIX}{volume_id}__{rebalance_run_id}"[:250]


def rebalance_of(run_id: str) -> str | None:
    """The rebalance run that a ``move_run_id`` names (cut to 250 characters like it), or None for another run."""
    if not run_id.startswith(MOVE_RUN_PREFIX):
        return None
    parts = run_id.split("__", 2)
    return parts[2] if len(parts) == 3 and parts[2] else None


@dataclass
class _Running:
    move: Move
    run_id: str
    started: float


def _move_json(move: Move) -> dict[str, Any]:
    return {**asdict(move), "path": str(move.path)}


def _move_of(data: dict[str, Any]) -> Move:
    return Move(**{**data, "path": Step(data["path"])})


@dataclass
class Dispatch:
    """The loop's state, for one rebalance run: JSON between rounds (``to_json``), so a rebalance that waits
    between rounds holds nothing but this (the DAG defers its task)."""

    max_failures: int = 2
    pending: list[Move] = field(default_factory=list)
    running: dict[str, _Running] = field(default_factory=dict)
    results: dict[str, MoveResult] = field(default_factory=dict)
    failed_in_a_row: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)  # the most in flight seen at once, by the keys of load()
    run_ids: dict[str, str] = field(default_factory=dict)  # volume id -> its move's run (move_run_id)
    ends_at: float = 0.0  # the rebalance's deadline, in the clock of the rounds

    @classmethod
    def begin(cls, moves: Sequence[Move], rebalance_run_id: str, ports: Ports, now: float, deadline_s: float,
              max_failures: int = 2) -> Dispatch:  # fmt: skip
        """The state before the first round: runs an earlier try of this rebalance started are followed, never
        started again."""
        state = cls(max_failures, pending=list(moves), ends_at=now + deadline_s)
        state.run_ids = {m.volume_id: move_run_id(rebalance_run_id, m.volume_id) for m in moves}
        existing = ports.exists(list(state.run_ids.values())) if moves else set()
        for move in list(state.pending):
            run_id = state.run_ids[move.volume_id]
            if run_id in existing:
                state.pending.remove(move)
                state.running[move.volume_id] = _Running(move, run_id, now)
                log.info("volume %s: run %s exists already; following it", move.volume_id, run_id)
        return state

    @property
    def busy(self) -> bool:
        """Moves are waiting to start or running."""
        return bool(self.pending or self.running)

    def round(self, limits: Limits, ports: Ports, now: float) -> bool:
        """One look: note the runs that ended, drop the moves that can no longer start, start those the limits
        admit. True while there is more to do and time left for it."""
        for vid, run in list(self.running.items()):
            run_state = ports.state(run.run_id)
            if run_state in RUN_ENDED:
                moved = RUN_ENDED[run_state]
                reason = "" if moved else ports.failure(run.run_id, vid)
                self.finish(vid, moved, reason, now)
                log.info("volume %s %s -> %s: %s %s", vid, run.move.source, run.move.destination,
                         self.results[vid].outcome, reason)  # fmt: skip
        if now > self.ends_at:
            return False
        cloud = ports.look()
        for move in list(self.pending):
            why = self.not_startable(move, cloud)
            if why is not None:
                self.pending.remove(move)
                self.results[move.volume_id] = MoveResult.of(move, Outcome.NOT_STARTED, why)
                log.warning("volume %s not moved to %s: %s", move.volume_id, move.destination, why)
        flying = self.in_flight(cloud)
        for move in admit(self.pending, flying.values(), limits):
            run_id = self.run_ids[move.volume_id]
            ports.start(move, run_id)
            self.pending.remove(move)
            self.running[move.volume_id] = _Running(move, run_id, now)
            flying[move.volume_id] = (move.source, move.destination)
            log.info("volume %s: %s -> %s started as run %s", move.volume_id, move.source, move.destination, run_id)
        self.note_peak(flying)
        return self.busy

    def close(self) -> None:
        """The end: moves not started and runs still going get a result saying so."""
        for move in self.pending:
            self.results[move.volume_id] = MoveResult.of(move, Outcome.NOT_STARTED, "the rebalance ran out of time")
        for vid, run in self.running.items():
            self.results[vid] = MoveResult.of(run.move, Outcome.RUNNING, f"run {run.run_id} still going", run.run_id)
        self.pending, self.running = [], {}

    def not_startable(self, move: Move, cloud: Cloud) -> str | None:
        """Why ``move`` must not start now, or None."""
        for role, pool in (("source", move.source), ("destination", move.destination)):
            if pool not in cloud.up_pools:
                return f"{role} pool {pool} is down or unknown to Cinder (its volume service is not enabled and up)"
        if self.failed_in_a_row[move.destination] >= self.max_failures:
            return f"destination {move.destination}: the last {self.max_failures} moves to it failed"
        volume = cloud.volume(move.volume_id)
        if volume is None:
            return "the volume no longer exists"
        if volume.migrating:
            return f"the volume is already migrating ({volume.migration_status} to {volume.migration_dest or '?'})"
        if volume.pool != move.source:
            return f"the volume is on {volume.pool} now, not {move.source}"
        if volume.status != "available" or volume.attachments:
            return f"the volume is {volume.status} with {volume.attachments} attachment(s)"
        return None

    def in_flight(self, cloud: Cloud) -> dict[str, tuple[str, str]]:
        """volume id -> (source, destination) of every migration under way, ours not yet locked included."""
        flying = {f.volume_id: (f.source, f.destination) for f in cloud.in_flight}
        for vid, run in self.running.items():  # ours: the plan knows both pools, even before the lock shows them
            flying[vid] = (run.move.source, run.move.destination)
        return flying

    def note_peak(self, flying: dict[str, tuple[str, str]]) -> None:
        for key, n in load(flying.values()).items():
            self.peak[key] = max(self.peak[key], n)

    def finish(self, vid: str, moved: bool, reason: str, now: float) -> None:
        run = self.running.pop(vid)
        outcome = Outcome.MOVED if moved else Outcome.FAILED
        self.results[vid] = MoveResult.of(run.move, outcome, reason, run.run_id, now - run.started)
        self.failed_in_a_row[run.move.destination] = 0 if moved else self.failed_in_a_row[run.move.destination] + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "max_failures": self.max_failures,
            "pending": [_move_json(m) for m in self.pending],
            "running": {
                v: {"move": _move_json(r.move), "run_id": r.run_id, "started": r.started}
                for v, r in self.running.items()
            },  # fmt: skip
            "results": {v: r.to_json() for v, r in self.results.items()},
            "failed_in_a_row": dict(self.failed_in_a_row),
            "peak": dict(self.peak),
            "run_ids": self.run_ids,
            "ends_at": self.ends_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dispatch:
        return cls(
            max_failures=data["max_failures"],
            pending=[_move_of(m) for m in data["pending"]],
            running={v: _Running(_move_of(r["move"]), r["run_id"], r["started"]) for v, r in data["running"].items()},
            results={v: MoveResult.from_json(r) for v, r in data["results"].items()},
            failed_in_a_row=Counter(data["failed_in_a_row"]),
            peak=Counter(data["peak"]),
            run_ids=data["run_ids"],
            ends_at=data["ends_at"],
        )


def planned(moves: Sequence[Move]) -> list[MoveResult]:
    """A dry run's results: every move planned, none started."""
    return [MoveResult.of(m, Outcome.PLANNED, "dry run: nothing started") for m in moves]


def migration_conf(move: Move, speed_mib: int | None) -> dict[str, Any]:
    """The ``volume_migration`` params of one move."""
    conf: dict[str, Any] = {"volume_id": move.volume_id, "dest_host": move.destination}
    if speed_mib is not None:
        conf["speed_mib"] = speed_mib
    return conf
