"""The end of a rebalance run: every volume with what happened to it, the pools before and after, as text and JSON."""

from __future__ import annotations

import json

import pytest

from include.backends.base import GiB
from include.migration.dispatch import MoveResult, Outcome, planned
from include.migration.planner import (
    PoolState,
    RebalanceParams,
    RebalancePlan,
    SkipReason,
    VolumeState,
    plan_rebalance,
)
from include.migration.rebalance_report import format_summary, summarize
from include.migration.steps import Step

A, B, C = "lab@alpha#pool1", "lab@beta#pool1", "lab@gamma#pool1"


def pool(name, total_gib, used_gib, **kw):
    return PoolState(name, total_gib * GiB, (total_gib - used_gib) * GiB, used_gib * GiB, **kw)


def scripted_plan() -> RebalancePlan:
    """alpha at 97% sheds 1, 2, 3 GiB to beta (a takeover, up to 90% exactly), then 4 GiB to gamma (a copy)."""
    pools = [pool(A, 100, 97), pool(B, 100, 84, takeover=True), pool(C, 100, 70)]
    volumes = [
        VolumeState("m1", 1 * GiB, A),
        VolumeState("m2", 2 * GiB, A),
        VolumeState("m3", 3 * GiB, A),
        VolumeState("m4", 4 * GiB, A),
        VolumeState("m5", 5 * GiB, A),  # alpha is balanced by then
        VolumeState("snap", 1 * GiB, A, has_snapshots=True),
        VolumeState("used", 1 * GiB, A, status="in-use", attachments=1),
        VolumeState("calm", 1 * GiB, C),
    ]
    return plan_rebalance(pools, volumes, RebalanceParams(threshold=90))


def test_the_scripted_plan():
    plan = scripted_plan()
    assert [(m.volume_id, m.destination, m.path) for m in plan.moves] == [
        ("m1", B, Step.TARGET_TAKEOVER),
        ("m2", B, Step.TARGET_TAKEOVER),
        ("m3", B, Step.TARGET_TAKEOVER),
        ("m4", C, Step.HOST_COPY),
    ]
    assert {s.volume_id: s.reason for s in plan.skipped} == {
        "m5": SkipReason.SOURCE_BALANCED,
        "snap": SkipReason.HAS_SNAPSHOTS,
        "used": SkipReason.ATTACHED,
        "calm": SkipReason.POOL_NOT_OVER,
    }


def test_a_plan_round_trips_through_json():
    plan = scripted_plan()
    data = json.loads(json.dumps(plan.to_json()))
    back = RebalancePlan.from_json(data)
    assert back == plan
    assert all(isinstance(m.path, Step) for m in back.moves)
    assert all(isinstance(s.reason, SkipReason) for s in back.skipped)


def results_of(plan: RebalancePlan) -> list[MoveResult]:
    """m1 moved, m2 failed, m3 not started, m4 still running."""
    m1, m2, m3, m4 = plan.moves
    return [
        MoveResult.of(m1, Outcome.MOVED, "", "run-m1", 30),
        MoveResult.of(m2, Outcome.FAILED, "the copy broke", "run-m2", 12),
        MoveResult.of(m3, Outcome.NOT_STARTED, "the volume no longer exists"),
        MoveResult.of(m4, Outcome.RUNNING, "run run-m4 still going", "run-m4"),
    ]


def test_every_volume_is_in_the_summary_text_with_what_happened_to_it():
    plan = scripted_plan()
    summary = summarize(plan, results_of(plan), {A: 0.94, B: 0.73, C: 0.70})
    text = format_summary(summary)
    for vid in ("m1", "m2", "m3", "m4", "m5", "snap", "used", "calm"):
        assert vid in text
    for words in ("the copy broke", "the volume no longer exists", "still_running", "has_snapshots", "attached"):
        assert words in text
    assert summary.volumes == 8
    assert summary.counts == {"failed": 1, "moved": 1, "not_started": 1, "skipped": 4, "still_running": 1}
    assert "8 volume(s)" in text and "1 moved" in text and "4 skipped" in text
    assert "dry run" not in text


def test_only_moved_volumes_count_as_moved_bytes():
    plan = scripted_plan()
    summary = summarize(plan, results_of(plan), {})
    assert summary.moved_bytes == 1 * GiB  # m1 only: not the failed, the not started, the running
    assert "1.0 GiB moved" in format_summary(summary)


def test_pools_still_above_the_threshold_are_listed_and_flagged():
    plan = scripted_plan()
    summary = summarize(plan, results_of(plan), {A: 0.94, B: 0.73})
    assert summary.over == [A]
    assert summary.after[C] == plan.before[C]  # a pool not read again keeps its ratio from before
    text = format_summary(summary)
    [row] = [line for line in text.splitlines() if line.strip().startswith(A) and "%" in line]
    assert "97.0%" in row and "94.0%" in row and "above threshold" in row
    assert text.count("above threshold") == 1


@pytest.mark.parametrize("threshold", [56, 80, 90])
def test_a_pool_exactly_at_the_threshold_is_not_over(threshold):
    # as the planner has it; a destination it fills exactly to the threshold is not reported over
    plan = RebalancePlan((), (), {A: 0.5}, {A: 0.5}, threshold)
    summary = summarize(plan, [], {A: threshold / 100})
    assert summary.over == []
    assert "above threshold" not in format_summary(summary)
    assert summarize(plan, [], {A: threshold / 100 + 1e-9}).over == [A]


def test_the_json_of_a_summary():
    plan = scripted_plan()
    summary = summarize(plan, results_of(plan), {A: 0.94})
    data = json.loads(json.dumps(summary.to_json()))
    assert {"counts", "moves", "skipped", "pools"} <= set(data)
    assert data["counts"] == summary.counts
    assert [m["volume_id"] for m in data["moves"]] == ["m1", "m2", "m3", "m4"]
    assert [MoveResult.from_json(m) for m in data["moves"]] == list(summary.results)
    assert {s["volume_id"]: s["reason"] for s in data["skipped"]} == {
        "m5": "source_balanced",
        "snap": "has_snapshots",
        "used": "attached",
        "calm": "pool_not_over",
    }
    assert data["pools"][A] == {"before": 0.97, "after": 0.94}
    assert set(data["pools"]) == {A, B, C}
    assert data["pools_over_threshold"] == [A] and data["moved_bytes"] == GiB and data["dry_run"] is False


def test_a_dry_run_summary_says_so():
    plan = scripted_plan()
    summary = summarize(plan, planned(plan.moves), plan.after, dry_run=True)
    text = format_summary(summary)
    assert "dry run" in text.splitlines()[0]
    assert summary.counts == {"planned": 4, "skipped": 4}
    assert summary.moved_bytes == 0
    # the plan's projection: alpha below the threshold, beta filled exactly to it, neither over
    assert (summary.after[A], summary.after[B]) == (0.87, 0.9)
    assert summary.over == []
    assert json.loads(json.dumps(summary.to_json()))["dry_run"] is True


def test_a_summary_with_nothing_to_do():
    plan = plan_rebalance([pool(A, 100, 10)], [], RebalanceParams())
    summary = summarize(plan, [], {A: 0.1})
    assert summary.counts == {"skipped": 0} and summary.volumes == 0
    text = format_summary(summary)
    assert "moves:" not in text and "left where they are:" not in text and A in text


def test_a_dry_run_does_not_flag_the_destination_the_planner_filled_to_the_threshold():
    plan = plan_rebalance(
        [pool(A, 100, 60), pool(B, 100, 50)], [VolumeState("v1", 6 * GiB, A)], RebalanceParams(threshold=56)
    )
    assert [(m.volume_id, m.destination) for m in plan.moves] == [("v1", B)]
    assert plan.after[B] == 0.56
    summary = summarize(plan, planned(plan.moves), plan.after, dry_run=True)
    assert summary.over == []
    assert "above threshold" not in format_summary(summary)
