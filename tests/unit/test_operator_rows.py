"""The operator view's rows: the path a run took, where it is, its progress and the controls that apply."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from include.backends.base import MigrationProgress, MigrationState
from include.backends.features import Features
from include.migration.dispatch import move_run_id, rebalance_of
from include.migration.operator_rows import (
    CopyPath,
    RowFilter,
    RunFacts,
    controls_for,
    migration_row,
    path_of,
    rebalance_row,
    trail_entry,
)
from include.migration.steps import Step

GiB, MiB = 1 << 30, 1 << 20
PLAN = {
    "volume_id": "0d3c6a55-7a9e-4d5e-9a55-3b3f9c1f2f10",
    "source_host": "lab@beta#pool1",
    "dest_host": "lab@alpha#pool1",
    "dest_backend": "alpha",
    "lun": "volume-0d3c6a55-7a9e-4d5e-9a55-3b3f9c1f2f10",
    "size": GiB,
    "copy_mode": "mirror",
}
TAKEOVER_WAITING = {
    Step.VALIDATE_AND_LOCK: "success",
    Step.SOURCE_DRIVER: "success",
    Step.TARGET_TAKEOVER: "success",
    Step.WAIT_FOR_COPY: "deferred",
    Step.HOST_COPY: "skipped",
}


def facts(states, run_state="running", plan=PLAN, failures=(), run_id="manual__1"):
    started = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
    return RunFacts(run_id, run_state, {"volume_id": PLAN["volume_id"], "dest_host": "lab@alpha#pool1"},
                    dict(states), plan, list(failures), started)  # fmt: skip


def progress(state="copying", done=GiB // 4, abandonable=True):
    return MigrationProgress(MigrationState(state), done, GiB, 8 * MiB, 96.0, abandonable=abandonable)


@pytest.mark.parametrize(
    ("states", "path"),
    [
        ({Step.VALIDATE_AND_LOCK: "running"}, CopyPath.UNDECIDED),
        (TAKEOVER_WAITING, CopyPath.TAKEOVER),
        ({**TAKEOVER_WAITING, Step.WAIT_FOR_COPY: "skipped", Step.HOST_COPY: "running"}, CopyPath.HOST_COPY),
        ({**TAKEOVER_WAITING, Step.TARGET_TAKEOVER: "running", Step.WAIT_FOR_COPY: None}, CopyPath.UNDECIDED),
        ({Step.SOURCE_DRIVER: "success", Step.TARGET_TAKEOVER: "skipped", Step.COMMIT: "success"}, CopyPath.POOL_MOVE),
        ({Step.DRIVERS_SKIPPED: "success", Step.HOST_COPY: "up_for_retry"}, CopyPath.HOST_COPY),
    ],
    ids=["validating", "takeover", "host-copy", "taking-over", "pool-move", "forced-host-copy"],
)
def test_the_path_is_the_step_that_moves_the_data(states, path):
    assert path_of(states) is path


def test_a_running_takeover_copy_shows_its_progress_and_offers_pause_and_speed():
    row = migration_row(facts(TAKEOVER_WAITING), progress())
    assert (row.volume_id, row.source, row.dest) == (PLAN["volume_id"], "lab@beta#pool1", "lab@alpha#pool1")
    assert (row.path, row.copy_mode, row.state) == ("takeover (target driver)", "mirror", "running")
    assert row.step == "wait_for_copy (deferred)"
    assert (row.copy_state, row.percent, row.rate_mib_s, row.eta_s) == ("copying", 25.0, 8.0, 96.0)
    assert row.controls == ("pause", "speed", "abandon")  # a mirror, before its switch-over
    assert row.to_json()["controls"] == ["pause", "speed", "abandon"]
    assert row.started == "2026-12-02T21:00:00+00:00" and row.rebalance is None


def test_a_paused_copy_offers_resume_and_an_ended_one_nothing():
    assert controls_for(facts(TAKEOVER_WAITING), progress("paused")) == ("resume", "speed", "abandon")
    stream = facts(TAKEOVER_WAITING, plan={**PLAN, "copy_mode": None})
    assert controls_for(stream, progress("paused", abandonable=False)) == ("resume", "speed")  # the source is old
    assert controls_for(facts(TAKEOVER_WAITING), progress("done", GiB)) == ()
    assert controls_for(facts(TAKEOVER_WAITING), None) == ()  # the array did not answer
    assert controls_for(facts(TAKEOVER_WAITING, run_state="failed"), progress()) == ()


def test_only_the_controls_the_destinations_driver_offers_are_shown():
    every = Features("lab@alpha", "ReferenceArrayDriver", pause=True, resume=True, speed=True, abandon=True)
    assert controls_for(facts(TAKEOVER_WAITING), progress(), every) == ("pause", "speed", "abandon")
    no_pace = Features("lab@x", "SomeDriver", migrate_volume_target=True, complete_migration_target=True)
    assert controls_for(facts(TAKEOVER_WAITING), progress(), no_pace) == ()
    rbd = Features("lab@ceph-ssd", "AsyncRBDDriver", migrate_volume_target=True, complete_migration_target=True,
                   abandon=True)  # fmt: skip
    assert controls_for(facts(TAKEOVER_WAITING), progress(), rbd) == ("abandon",)  # RBD live migration: no pace
    speed_only = Features("lab@y", "OtherDriver", speed=True)
    assert migration_row(facts(TAKEOVER_WAITING), progress("paused"), speed_only).controls == ("speed",)


def test_a_host_copy_shows_progress_but_offers_no_control():
    states = {**TAKEOVER_WAITING, Step.WAIT_FOR_COPY: "skipped"}
    states[Step.HOST_COPY] = "running"
    row = migration_row(facts(states), progress())
    assert (row.path, row.copy_state, row.percent, row.controls) == ("host copy", "copying", 25.0, ())


def test_an_ended_run_says_how_and_why():
    done = migration_row(facts({**TAKEOVER_WAITING, Step.WAIT_FOR_COPY: "success", Step.COMMIT: "success"},
                               run_state="success"))  # fmt: skip
    assert (done.step, done.copy_state, done.percent, done.rate_mib_s) == ("success", "done", 100.0, None)
    refused = migration_row(
        facts({Step.VALIDATE_AND_LOCK: "failed", Step.ROLLBACK: "success"}, "failed", None, ["validate_and_lock: x"])
    )
    assert (refused.path, refused.step, refused.failure, refused.source) == ("-", "failed", "validate_and_lock: x", "")
    assert refused.dest == "lab@alpha#pool1"  # from the run's conf when nothing was locked


def test_a_move_of_a_rebalance_names_its_rebalance():
    run = move_run_id("scheduled__2026-12-02T03:00:00+00:00", PLAN["volume_id"])
    assert rebalance_of(run) == "scheduled__2026-12-02T03:00:00+00:00"
    assert migration_row(facts(TAKEOVER_WAITING, run_id=run)).rebalance == "scheduled__2026-12-02T03:00:00+00:00"
    assert rebalance_of("manual__2026-12-02T03:00:00+00:00") is None


def test_progress_reads_back_what_describe_wrote():
    seen = MigrationProgress(MigrationState.PAUSED, 300 * MiB, GiB, 3.5 * MiB, 12.0, "source slow; retrying")
    back = MigrationProgress.parse(seen.describe())
    assert back == seen
    assert MigrationProgress.parse(MigrationProgress(MigrationState.COPYING, 0, GiB).describe()).eta_seconds is None
    assert MigrationProgress.parse("some operator's note") is None


# ---- filters, links, the trail, rebalances (issue 22, item 3) -------------------------------------------------
def test_filters_match_a_part_of_the_volume_or_a_pool_the_state_and_the_start():
    row = migration_row(facts(TAKEOVER_WAITING))
    assert RowFilter().empty and RowFilter().matches(row)
    assert RowFilter(volume="0D3C6A55").matches(row) and not RowFilter(volume="ffff").matches(row)
    assert RowFilter(pool="beta#pool1").matches(row) and RowFilter(pool="@alpha").matches(row)
    assert not RowFilter(pool="gamma").matches(row)
    assert RowFilter(state="running").matches(row) and not RowFilter(state="failed").matches(row)
    assert RowFilter(since=datetime(2026, 12, 2, 20, 59, tzinfo=UTC)).matches(row)
    assert not RowFilter(since=datetime(2026, 12, 2, 21, 1)).matches(row)  # naive: taken in the row's zone
    assert not RowFilter(volume="0d3c", state="success").matches(row)  # every part must match


def test_a_row_links_to_its_run_and_to_the_step_that_failed_runs_or_ran_last():
    running = migration_row(facts(TAKEOVER_WAITING, run_id="manual__2026-12-07T12:00:00+00:00"))
    assert running.run_path == "/dags/volume_migration/runs/manual__2026-12-07T12%3A00%3A00%2B00%3A00"
    assert running.step_path == f"{running.run_path}/tasks/wait_for_copy"
    failed = migration_row(facts({**TAKEOVER_WAITING, Step.WAIT_FOR_COPY: "failed"}, "failed", failures=["x"]))
    assert failed.step_path.endswith("/tasks/wait_for_copy")
    done = {**TAKEOVER_WAITING, Step.WAIT_FOR_COPY: "success", Step.COMMIT: "success"}
    assert migration_row(facts(done, "success")).step_path.endswith("/tasks/commit")
    assert migration_row(facts({}, "queued", plan=None)).step_path.endswith("/tasks/validate_and_lock")


def test_the_trail_says_who_did_what_when_and_the_result():
    when = datetime(2026, 12, 7, 12, 0, 5, tzinfo=UTC)
    entry = trail_entry(when, "admin", "volume_migration.operator_view.speed",
                        {"what": "speed to 32 MiB/s", "result": "done: copying"})  # fmt: skip
    assert entry == {"when": when.isoformat(), "who": "admin", "what": "speed to 32 MiB/s", "result": "done: copying"}
    assert trail_entry(None, None, "volume_migration.operator_view.pause", None)["what"] == "pause"
    row = migration_row(facts(TAKEOVER_WAITING), trail=(entry,))
    assert row.to_json()["trail"] == [entry]


def test_a_rebalance_row_has_its_plan_and_its_results():
    plan = {"moves": [{"size_bytes": GiB}, {"size_bytes": 2 * GiB}]}
    results = [{"outcome": "moved"}, {"outcome": "failed"}, {"outcome": "moved"}]
    started = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    row = rebalance_row("scheduled__x", "success", started, None, {}, {"success": 2}, plan, results)
    assert (row.planned, row.planned_gib, row.outcomes) == (2, 3.0, {"moved": 2, "failed": 1})
    assert row.run_path == "/dags/volume_rebalance/runs/scheduled__x" and row.started == started.isoformat()
    assert rebalance_row("r", "running", None, None, {}, {}).planned is None
