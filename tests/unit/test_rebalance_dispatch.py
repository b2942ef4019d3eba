"""The dispatch loop of a rebalance on a scripted cloud: limits, migrations in flight, failures, re-runs, deadline."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from include.backends.base import GiB
from include.migration.dispatch import (
    Dispatch,
    MoveResult,
    Outcome,
    migration_conf,
    move_run_id,
    planned,
)
from include.migration.inventory import UNKNOWN_POOL, Cloud, InFlight
from include.migration.planner import Move, PoolState, VolumeState
from include.migration.rebalance import Limits
from include.migration.steps import Step
from tests.unit.fake_clock import Clock

A1, A2 = "lab@alpha#pool1", "lab@alpha#pool2"  # sources
B, C = "lab@beta#pool1", "lab@gamma#pool1"  # destinations
REBALANCE = "manual__2025-01-01T00:00:00"
ENDED = ("success", "failed")


def after(polls: int, end: str = "success") -> Callable[[Move, int], str]:
    """Every run ends ``end`` at its ``polls``-th ``state``."""
    return lambda move, n: end if n >= polls else "running"


@dataclasses.dataclass
class Run:
    move: Move
    state: str = "running"
    polls: int = 0


class FakePorts:
    """Cinder and Airflow, scripted: a run ends as ``ends(move, polls so far)`` says (default: success at the
    2nd poll); the cloud follows the runs.

    ``manual``: migrations an operator started, each in flight until the clock reaches its end time.
    ``loads``: after each ``start``, how many migrations are in flight (ours not ended, the manual ones)
    per source, per destination and in total.
    """

    def __init__(
        self,
        clock: Clock,
        pools: Sequence[PoolState],
        volumes: Sequence[VolumeState],
        ends: Callable[[Move, int], str] | None = None,
        manual: Sequence[tuple[InFlight, float]] = (),
    ) -> None:
        self.clock, self.ends = clock, ends or after(2)
        self.pools = list(pools)
        self.volumes = {v.id: v for v in volumes}
        self.manual = list(manual)
        self.runs: dict[str, Run] = {}
        self.started: list[str] = []
        self.loads: list[dict[str, Counter[str] | int | float]] = []
        self.failures: list[str] = []

    def flying(self) -> list[tuple[str, str, str]]:
        """(volume, source, destination) of every migration in flight now."""
        ours = [
            (r.move.volume_id, r.move.source, r.move.destination) for r in self.runs.values() if r.state not in ENDED
        ]
        theirs = [(f.volume_id, f.source, f.destination) for f, until in self.manual if self.clock() < until]
        return ours + theirs

    # ---- the ports -------------------------------------------------------------------
    def look(self) -> Cloud:
        in_flight = [f for f, until in self.manual if self.clock() < until]
        for run_id, run in self.runs.items():  # a run locks its volume at its first poll
            if run.state not in ENDED and run.polls:
                in_flight.append(
                    InFlight(run.move.volume_id, run.move.source, run.move.destination, run_id, "starting")
                )
        return Cloud(tuple(self.pools), tuple(self.volumes.values()), tuple(in_flight))

    def start(self, move: Move, run_id: str) -> None:
        assert run_id not in self.runs, f"run {run_id} started twice"
        self.runs[run_id] = Run(move)
        self.started.append(run_id)
        self.volumes[move.volume_id] = dataclasses.replace(
            self.volumes[move.volume_id], migration_status="starting", migration_dest=move.destination
        )
        flying = self.flying()
        self.loads.append(
            {
                "at": self.clock(),
                "off": Counter(s for _, s, _ in flying),
                "onto": Counter(d for _, _, d in flying),
                "total": len(flying),
                "ours_off": Counter(r.move.source for r in self.runs.values() if r.state not in ENDED),
            }
        )

    def exists(self, run_ids: Sequence[str]) -> set[str]:
        return {r for r in run_ids if r in self.runs}

    def state(self, run_id: str) -> str:
        run = self.runs[run_id]
        if run.state in ENDED:
            return run.state
        run.polls += 1
        run.state = self.ends(run.move, run.polls)
        vid = run.move.volume_id
        if run.state == "success":
            self.volumes[vid] = dataclasses.replace(
                self.volumes[vid], pool=run.move.destination, migration_status="success", migration_dest=None
            )
        elif run.state == "failed":
            self.volumes[vid] = dataclasses.replace(self.volumes[vid], migration_status="error", migration_dest=None)
        return run.state

    def failure(self, run_id: str, volume_id: str) -> str:
        self.failures.append(run_id)
        return f"scripted failure of {volume_id}"


def pool(name: str, **kw) -> PoolState:
    return PoolState(name, 100 * GiB, 50 * GiB, 50 * GiB, **kw)


def move(vid: str, source: str, destination: str, gib: int = 1) -> Move:
    return Move(vid, gib * GiB, source, destination, Step.HOST_COPY)


def cloud_for(moves: Sequence[Move], **kw) -> tuple[list[PoolState], list[VolumeState]]:
    """The pools of the moves (up unless named in ``down``) and each move's volume on its source."""
    down = set(kw.get("down", ()))
    names = sorted({m.source for m in moves} | {m.destination for m in moves})
    return [pool(n, up=n not in down) for n in names], [VolumeState(m.volume_id, m.size_bytes, m.source) for m in moves]


def run(moves, limits, ports, clock, *, poll_s=5.0, deadline_s=2 * 24 * 3600, max_failures=2):
    """The rounds in one process, ``poll_s`` apart on the fake clock, as the DAG's task runs them between its
    deferrals: begin, round until it answers False, close."""
    state = Dispatch.begin(moves, REBALANCE, ports, clock(), deadline_s, max_failures)
    while state.busy and state.round(limits, ports, clock()):
        clock.sleep(poll_s)
    state.close()
    return state


def outcomes(state) -> dict[str, Outcome]:
    return {vid: r.outcome for vid, r in state.results.items()}


# ---- (a) the limits --------------------------------------------------------------------


def test_the_limits_hold_and_every_move_ends_moved():
    moves = [move(f"v{i}", (A1, A2)[i % 2], (B, C)[(i // 2) % 2]) for i in range(10)]
    clock = Clock()
    # runs of different lengths, so they end out of order
    ports = FakePorts(
        clock, *cloud_for(moves), ends=lambda m, n: "success" if n >= 1 + int(m.volume_id[1:]) % 3 else "running"
    )
    limits = Limits(per_source=2, per_destination=2, total=3)
    state = run(moves, limits, ports, clock)

    assert len(ports.loads) == 10
    for load in ports.loads:
        assert max(load["off"].values()) <= 2
        assert max(load["onto"].values()) <= 2
        assert load["total"] <= 3
    assert max(load["total"] for load in ports.loads) == 3  # the limits were reached, not just respected
    assert ports.started == [move_run_id(REBALANCE, m.volume_id) for m in moves]  # in plan order
    assert outcomes(state) == {m.volume_id: Outcome.MOVED for m in moves}
    assert all(r.run_id == move_run_id(REBALANCE, r.volume_id) and r.reason == "" for r in state.results.values())
    assert state.pending == [] and state.running == {}
    # what the loop saw at its polls stays within the limits too
    assert state.peak["total"] == 3
    assert all(n <= 2 for k, n in state.peak.items() if k != "total")


def test_a_moved_result_says_how_long_its_run_took():
    moves = [move("v1", A1, B)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=after(2))
    [result] = run(moves, Limits(), ports, clock, poll_s=5.0).results.values()
    assert result == MoveResult("v1", GiB, A1, B, "host_copy", Outcome.MOVED, "", move_run_id(REBALANCE, "v1"), 10.0)


def test_no_moves_no_calls():
    clock = Clock()
    ports = FakePorts(clock, [], [])
    state = run([], Limits(), ports, clock)
    assert state.results == {} and ports.started == [] and clock.now == 0


def test_rounds_with_the_state_kept_as_json_between_them_end_as_the_loop_does():
    """The DAG's task defers between rounds and keeps only ``Dispatch.to_json()``: the same moves, limits and runs
    give the same results, starts and peaks as the loop in one process."""
    moves = [move(f"v{i}", (A1, A2)[i % 2], (B, C)[(i // 2) % 2]) for i in range(7)]

    def ends(m, n):
        return "failed" if m.volume_id == "v3" else "success" if n >= 1 + int(m.volume_id[1:]) % 3 else "running"

    limits = Limits(per_source=2, per_destination=1, total=3)
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=ends)
    expected, started = run(moves, limits, ports, clock), ports.started

    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=ends)
    kept = Dispatch.begin(moves, REBALANCE, ports, clock(), 2 * 24 * 3600).to_json()
    for _ in range(100):
        state = Dispatch.from_json(json.loads(json.dumps(kept)))  # as the trigger's kwargs keep it
        if not (state.busy and state.round(limits, ports, clock())):
            break
        kept = state.to_json()
        clock.sleep(5.0)
    state.close()
    assert state.results == expected.results and state.peak == expected.peak
    assert ports.started == started and len(started) == len(moves)
    assert outcomes(state)["v3"] == Outcome.FAILED


# ---- (b) migrations in flight that this run did not start -----------------------------


def test_a_manual_migration_off_the_same_pool_takes_one_of_its_slots():
    moves = [move(f"v{i}", A1, (B, C)[i % 2]) for i in range(4)]
    manual = InFlight("theirs", A1, "lab@delta#pool1", "operator", "migrating_attachable")
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=after(3), manual=[(manual, 40.0)])
    state = run(moves, Limits(per_source=2, per_destination=2, total=6), ports, clock)

    while_manual = [load for load in ports.loads if load["at"] < 40.0]
    later = [load for load in ports.loads if load["at"] >= 40.0]
    assert while_manual and later
    assert all(load["ours_off"][A1] <= 1 and load["off"][A1] <= 2 for load in while_manual)
    assert max(load["ours_off"][A1] for load in later) == 2  # without it, two of ours run at once
    assert outcomes(state) == {m.volume_id: Outcome.MOVED for m in moves}


def test_a_migration_in_flight_to_a_destination_counts_there_and_one_to_an_unknown_pool_in_the_total():
    moves = [move("v1", A1, B), move("v2", A2, C)]
    manual = [
        (InFlight("theirs", "lab@delta#pool1", B, "operator", "starting"), 20.0),
        (InFlight("cinders", "lab@delta#pool2", "?", None, "migrating"), 20.0),
    ]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=after(1), manual=manual)
    state = run(moves, Limits(per_source=2, per_destination=1, total=3), ports, clock)
    starts = dict(
        zip([r.removeprefix("rebalance__").partition("__")[0] for r in ports.started], ports.loads, strict=True)
    )
    assert starts["v2"]["at"] == 0  # 3 in flight then: the total reached
    assert starts["v1"]["at"] >= 20.0  # B was taken by the manual migration
    assert all(load["total"] <= 3 for load in ports.loads)
    assert outcomes(state) == {"v1": Outcome.MOVED, "v2": Outcome.MOVED}


# ---- (c) failures ----------------------------------------------------------------------


def test_a_failed_run_is_reported_with_its_reason_and_the_others_go_on():
    moves = [move("v1", A1, B), move("v2", A1, C), move("v3", A2, C)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=lambda m, n: "failed" if m.volume_id == "v1" else "success")
    state = run(moves, Limits(), ports, clock)
    assert outcomes(state) == {"v1": Outcome.FAILED, "v2": Outcome.MOVED, "v3": Outcome.MOVED}
    failed = state.results["v1"]
    assert failed.reason == "scripted failure of v1" and failed.run_id == move_run_id(REBALANCE, "v1")
    assert ports.failures == [move_run_id(REBALANCE, "v1")]  # asked once, for the failed run only


def test_after_max_failures_in_a_row_to_a_destination_its_other_moves_do_not_start():
    moves = [move(f"b{i}", A1, B) for i in range(1, 5)] + [move(f"c{i}", A2, C) for i in range(1, 4)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=lambda m, n: "failed" if m.destination == B else "success")
    state = run(moves, Limits(per_source=2, per_destination=1, total=6), ports, clock, max_failures=2)

    got = outcomes(state)
    assert [got[v] for v in ("b1", "b2", "b3", "b4")] == [Outcome.FAILED] * 2 + [Outcome.NOT_STARTED] * 2
    assert all(got[v] is Outcome.MOVED for v in ("c1", "c2", "c3"))
    for vid in ("b3", "b4"):
        assert B in state.results[vid].reason and "failed" in state.results[vid].reason
        assert state.results[vid].run_id is None
    assert move_run_id(REBALANCE, "b3") not in ports.started


def test_a_success_between_failures_resets_the_count():
    fails = {"b1", "b3"}
    moves = [move(f"b{i}", A1, B) for i in range(1, 5)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=lambda m, n: "failed" if m.volume_id in fails else "success")
    state = run(moves, Limits(per_source=1, per_destination=1, total=1), ports, clock, max_failures=2)
    assert [state.results[f"b{i}"].outcome for i in range(1, 5)] == [
        Outcome.FAILED,
        Outcome.MOVED,
        Outcome.FAILED,
        Outcome.MOVED,
    ]


# ---- (d) pools down ---------------------------------------------------------------------


@pytest.mark.parametrize("down", [A2, C])
def test_the_moves_of_a_pool_down_do_not_start_and_the_others_do(down):
    moves = [move("v1", A1, B), move("v2", A2, C), move("v3", A1, B), move("v4", A2, B)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves, down=[down]))
    state = run(moves, Limits(), ports, clock)
    stopped = {m.volume_id for m in moves if down in (m.source, m.destination)}
    assert stopped
    for vid, result in state.results.items():
        if vid in stopped:
            assert result.outcome is Outcome.NOT_STARTED
            assert "down" in result.reason and down in result.reason
        else:
            assert result.outcome is Outcome.MOVED
    assert not any(move_run_id(REBALANCE, vid) in ports.started for vid in stopped)


def test_a_pool_cinder_no_longer_reports_stops_its_moves():
    moves = [move("v1", A1, B), move("v2", A1, C)]
    clock = Clock()
    pools, volumes = cloud_for(moves)
    ports = FakePorts(clock, [p for p in pools if p.name != C], volumes)
    state = run(moves, Limits(), ports, clock)
    assert outcomes(state) == {"v1": Outcome.MOVED, "v2": Outcome.NOT_STARTED}
    assert "unknown" in state.results["v2"].reason


# ---- (e) the volume is no longer what the plan saw ------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda v: dataclasses.replace(v, pool=C), "on lab@gamma#pool1 now"),
        (lambda v: dataclasses.replace(v, migration_status="migrating", migration_dest=C), "already migrating"),
        (lambda v: None, "no longer exists"),
        (lambda v: dataclasses.replace(v, status="in-use", attachments=1), "in-use with 1 attachment"),
        (lambda v: dataclasses.replace(v, status="error"), "error"),
    ],
    ids=["moved", "migrating", "gone", "attached", "error"],
)
def test_a_volume_that_changed_since_the_plan_is_not_moved(change, words):
    moves = [move("v1", A1, B), move("v2", A1, B)]
    clock = Clock()
    pools, volumes = cloud_for(moves)
    changed = change(volumes[1])
    ports = FakePorts(clock, pools, [volumes[0]] + ([changed] if changed else []))
    state = run(moves, Limits(), ports, clock)
    assert outcomes(state) == {"v1": Outcome.MOVED, "v2": Outcome.NOT_STARTED}
    assert words in state.results["v2"].reason
    assert ports.started == [move_run_id(REBALANCE, "v1")]


# ---- (f) a cleared rebalance run follows the runs it started ---------------------------


def test_a_cleared_run_follows_its_runs_and_never_starts_them_again():
    moves = [move("v1", A1, B), move("v2", A1, C), move("v3", A2, B)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=after(2))
    # the earlier try started v1 (still going) and v2 (ended well)
    ports.runs[move_run_id(REBALANCE, "v1")] = Run(moves[0], "running", 1)
    ports.runs[move_run_id(REBALANCE, "v2")] = Run(moves[1], "success", 2)
    state = run(moves, Limits(per_source=2, per_destination=2, total=1), ports, clock)

    assert ports.started == [move_run_id(REBALANCE, "v3")]
    assert outcomes(state) == {"v1": Outcome.MOVED, "v2": Outcome.MOVED, "v3": Outcome.MOVED}
    assert state.results["v1"].run_id == move_run_id(REBALANCE, "v1")
    # the followed runs count against the limits: v3 waited until both ended
    assert ports.loads[0]["total"] == 1


def test_a_followed_run_that_failed_is_reported_failed():
    moves = [move("v1", A1, B)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves))
    ports.runs[move_run_id(REBALANCE, "v1")] = Run(moves[0], "failed", 1)
    state = run(moves, Limits(), ports, clock)
    assert ports.started == []
    assert state.results["v1"].outcome is Outcome.FAILED
    assert state.results["v1"].reason == "scripted failure of v1"


def test_the_run_id_is_fixed_per_rebalance_run_and_volume():
    assert move_run_id(REBALANCE, "v1") == move_run_id(REBALANCE, "v1") == f"rebalance__v1__{REBALANCE}"
    assert move_run_id(REBALANCE, "v1") != move_run_id("scheduled__x", "v1")
    assert len(move_run_id("r" * 300, "v1")) == 250  # Airflow's limit on run ids


# ---- (g) the deadline -------------------------------------------------------------------


def test_at_the_deadline_pending_moves_are_not_started_and_running_ones_reported_running():
    moves = [move("v1", A1, B), move("v2", A1, B), move("v3", A2, C)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=lambda m, n: "running")  # they never end
    state = run(moves, Limits(per_source=1, per_destination=1, total=6), ports, clock, deadline_s=12, poll_s=5)

    assert outcomes(state) == {"v1": Outcome.RUNNING, "v2": Outcome.NOT_STARTED, "v3": Outcome.RUNNING}
    assert "ran out of time" in state.results["v2"].reason
    assert state.results["v1"].run_id == move_run_id(REBALANCE, "v1")
    assert "still going" in state.results["v1"].reason
    assert 12 < clock.now <= 12 + 5
    assert state.pending == [] and state.running == {}


def test_a_queued_run_counts_as_running():
    moves = [move("v1", A1, B), move("v2", A1, B)]
    clock = Clock()
    ports = FakePorts(clock, *cloud_for(moves), ends=lambda m, n: "queued")
    state = run(moves, Limits(per_destination=1), ports, clock, deadline_s=30)
    assert len(ports.started) == 1
    assert outcomes(state) == {"v1": Outcome.RUNNING, "v2": Outcome.NOT_STARTED}


# ---- (h) results as data ---------------------------------------------------------------


def test_a_move_result_round_trips_through_json():
    result = MoveResult.of(move("v1", A1, B, 3), Outcome.FAILED, "broke", "run-1", 12.345)
    assert result.seconds == 12.3 and result.path == "host_copy"
    data = json.loads(json.dumps(result.to_json()))
    assert data["outcome"] == "failed"
    back = MoveResult.from_json(data)
    assert back == result and back.outcome is Outcome.FAILED


def test_a_dry_run_plans_each_move_and_starts_none():
    moves = [move("v1", A1, B), move("v2", A2, C)]
    results = planned(moves)
    assert [(r.volume_id, r.outcome, r.run_id) for r in results] == [
        ("v1", Outcome.PLANNED, None),
        ("v2", Outcome.PLANNED, None),
    ]
    assert all("dry run" in r.reason for r in results)


@pytest.mark.parametrize("speed", [None, 0, 50])
def test_the_migration_conf_of_a_move(speed):
    conf = migration_conf(move("v1", A1, B), speed)
    expected = {"volume_id": "v1", "dest_host": B}
    if speed is not None:
        expected["speed_mib"] = speed
    assert conf == expected


class LockNotShownYet(FakePorts):
    """Cinder shows our runs' volumes migrating before the lock says where to (between begin's two writes)."""

    def look(self) -> Cloud:
        seen = super().look()
        blind = tuple(dataclasses.replace(f, destination=UNKNOWN_POOL) for f in seen.in_flight)
        return dataclasses.replace(seen, in_flight=blind)


def test_our_own_runs_count_on_their_destination_even_before_the_lock_shows_it():
    moves = [move("v1", A1, B), move("v2", A2, B)]
    clock = Clock()
    ports = LockNotShownYet(clock, *cloud_for(moves), ends=after(3))
    state = run(moves, Limits(per_source=2, per_destination=1, total=6), ports, clock)
    assert max(load["onto"][B] for load in ports.loads) == 1, "the second move waited for the first"
    assert outcomes(state) == {"v1": Outcome.MOVED, "v2": Outcome.MOVED}
