"""validate_and_lock, then blueprint steps 1 and 2 through Cinder, against the scripted Cinder (conftest.py)."""

from __future__ import annotations

import uuid

import pytest

from include.cinder_plugin.names import SourceStep, TargetStep
from include.migration import flow, validation
from include.migration.errors import CopyDeadlinePassed, InvalidParams, MigrationFailed, MigrationRefused
from tests.unit.fake_clock import Clock
from tests.unit.flow.conftest import (
    LUN,
    VID,
    ScriptedCinder,
    ceph_volume,
    copy,
    step_one,
    step_two,
    validate,
)


# ---- validate_and_lock -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "conf", "message"),
    [
        (lambda c, h: None, {"volume_id": str(uuid.uuid4())}, "does not exist"),
        (lambda c, h: None, {"dest_host": "lab@beta#pool1"}, "already on lab@beta#pool1"),
        (lambda c, h: None, {"dest_host": "lab@delta#pool1"}, "no volume service lab@delta"),
        (lambda c, h: c.services.update({"lab@alpha": "down"}), {}, "lab@alpha is enabled and down"),
        (lambda c, h: None, {"dest_host": "lab@alpha#pool7"}, "not a pool Cinder knows"),
        (lambda c, h: c.pools["lab@alpha#pool1"].update(free_capacity_gb=0.5), {},
         "pool lab@alpha#pool1 has 0.5 GiB free, the volume needs 1 GiB"),
        (lambda c, h: h.update(nbd="libnbd's Python binding is missing"), {"force_host_copy": True},
         "source pool's protocol nbd cannot be opened here: libnbd's .*; the destination pool's protocol nbd"),
        (lambda c, h: None, {"new_type": "gold"}, "volume type gold does not exist"),
        (lambda c, h: c.volume.update(volume_type="beta-only"), {},
         "its volume type beta-only pins backend beta, the destination is alpha; give new_type"),
        (lambda c, h: None, {"new_type": "beta-only"}, "its volume type beta-only pins backend beta, the dest"),
        (lambda c, h: c.lock.update(owner="run-0", host="x", source_host="y"), {}, "already migrating"),
    ],
)  # fmt: skip
def test_validate_refuses_with_one_clear_message_before_any_change(this_host, setup, conf, message):
    cinder = ScriptedCinder()
    setup(cinder, this_host)
    locked_before = bool(cinder.lock)
    with pytest.raises(MigrationRefused, match=message):
        validate(cinder, **conf)
    assert cinder.volume["status"] == "available"
    if not locked_before:
        assert not cinder.called("begin") or "already" in message


@pytest.mark.parametrize(
    ("volume_type", "new_type"), [("any", None), ("alpha-only", None), ("beta-only", "alpha-only")]
)
def test_a_type_that_pins_the_destinations_backend_or_none_is_no_problem(volume_type, new_type):
    cinder = ScriptedCinder()
    cinder.volume["volume_type"] = volume_type
    assert validate(cinder, new_type=new_type).dest_host == "lab@alpha#pool1"
    assert cinder.called("begin")


def test_validate_refuses_bad_params_before_asking_cinder():
    cinder = ScriptedCinder()
    with pytest.raises(InvalidParams, match="volume_id must be a volume UUID.*dest_host must look like"):
        validation.validate_and_lock({"volume_id": "x", "dest_host": "y"}, "run-1", cinder)
    assert cinder.calls == []


def test_validate_locks_once_and_a_retry_by_the_same_run_gets_the_same_plan():
    cinder = ScriptedCinder()
    cinder.pools["lab@alpha#pool1"].update(free_capacity_gb=0.5, thin_provisioning_support=True)  # thin: not refused
    plan = validate(cinder, speed_mib=20)
    assert (plan.source_host, plan.dest_host, plan.lun, plan.size, plan.path) == (
        "lab@beta#pool1", "lab@alpha#pool1", LUN, 1 << 30, "source_driver_migrate")  # fmt: skip
    assert plan.speed_bps == 20 << 20 and cinder.volume["migration_status"] == "starting"
    assert validate(cinder, speed_mib=20) == plan
    assert flow.Plan.from_json(plan.to_json()) == plan


def test_a_cleared_run_takes_its_own_lock_back_though_its_destination_volume_took_the_free_space():
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    assert plan.path == "host_copy"
    cinder.copy_target(VID, "run-1")  # host_copy had begun
    cinder.pools["lab@alpha#pool1"]["free_capacity_gb"] = 0
    assert validate(cinder, force_host_copy=True) == plan
    with pytest.raises(MigrationRefused, match="already migrating"):
        validation.validate_and_lock({"volume_id": VID, "dest_host": "lab@alpha#pool1"}, "run-2", cinder)


def test_rerun_after_the_volume_became_attachable_resumes_from_the_lock():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.mark_attachable(VID, plan.dest_host)
    again = validate(cinder)  # Cinder's host is the destination now; the lock says where it came from
    assert again.source_host == "lab@beta#pool1" and again == plan


# ---- source_driver_migrate (step 1, in the source's cinder-volume) -------------------------------


def test_step_one_waits_for_the_source_driver_and_a_moved_volume_commits_through_cinder_alone():
    cinder, conf = ceph_volume()
    plan = validate(cinder, **conf)
    assert (plan.path, cinder.volume["migration_status"]) == ("source_driver_migrate", "starting")
    cinder.source_steps = [SourceStep.RUNNING, SourceStep.RUNNING, SourceStep.MOVED]
    assert step_one(plan, cinder) == {"moved": True, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == "lab@ceph-ssd#ceph-ssd"
    assert validate(cinder, **conf) == plan  # a cleared run: still its lock, now on the destination
    assert step_one(plan, cinder)["moved"]  # asked again: the same outcome, nothing started
    assert cinder.named("source_migrate") == [("run-1",)] * 2
    assert "not rolled back: the source driver moved" in flow.rollback(plan, cinder, "x")
    flow.commit(plan, cinder)
    assert cinder.calls[-1] == ("finish", ("lab@ceph-ssd#ceph-ssd",)) and cinder.volume["migration_status"] == "success"
    assert not cinder.called("fail") and not cinder.called("copy_target")


def test_a_source_driver_that_cannot_move_it_hands_over_to_the_target_and_one_that_fails_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == plan.source_host
    cinder.source_step, cinder.source_steps = None, ["failed: VolumeBackendAPIException: pool full"]
    with pytest.raises(MigrationFailed, match="source driver of beta did not move the volume: failed: Volume.*full"):
        step_one(plan, cinder)


def test_a_cleared_run_whose_volume_is_attachable_already_does_not_ask_step_one_again():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    step_two(plan, cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert not cinder.called("source_migrate")


@pytest.mark.parametrize(
    ("steps", "ask", "message"),
    [("source_steps", step_one, "source step toward lab@alpha#pool1 has not answered by the copy deadline 20"),
     ("target_steps", step_two, "target step toward lab@alpha#pool1 has not answered by the copy deadline 20")],
    ids=["step-one", "step-two"],
)  # fmt: skip
def test_a_driver_step_is_given_up_after_the_copy_timeout(steps, ask, message):
    cinder = ScriptedCinder()
    plan = validate(cinder, copy_timeout_s=90)
    setattr(cinder, steps, [SourceStep.RUNNING])
    if ask is step_two:  # step one answers "not moved" first
        step_one(plan, cinder)
    clock = Clock()
    with pytest.raises(CopyDeadlinePassed, match=message):
        ask(plan, cinder, clock)
    assert 89 <= clock.now <= 91


def test_a_protocol_this_host_cannot_open_refuses_before_the_lock_only_when_a_host_copy_would_be_needed(this_host):
    this_host["rbd"] = "librbd's Python bindings are missing (rados, rbd)"
    cinder, conf = ceph_volume(dest_host="lab@gamma#pool1")  # other protocols, gamma takes nothing over
    with pytest.raises(MigrationRefused, match="lab@gamma#pool1: the source pool's protocol ceph cannot be .*librbd"):
        validate(cinder, **conf)
    assert not cinder.called("begin")
    cinder, conf = ceph_volume(force_host_copy=True)
    with pytest.raises(MigrationRefused, match="source pool's protocol ceph .*; the destination pool's protocol ceph"):
        validate(cinder, **conf)
    assert not cinder.called("begin")
    for dest in ("lab@alpha#pool1", "lab@ceph-ssd#ceph-ssd"):  # alpha takes it over; RBD's driver may move it
        cinder, conf = ceph_volume(dest_host=dest)
        assert validate(cinder, **conf).path == "source_driver_migrate" and cinder.named("begin") == [(dest, "run-1")]
    this_host["rbd"] = None
    cinder, conf = ceph_volume(dest_host="lab@gamma#pool1")
    assert validate(cinder, **conf).dest_host == "lab@gamma#pool1" and cinder.called("begin")


def test_when_the_ceph_driver_cannot_move_it_and_rbd_cannot_be_opened_the_rollback_only_unlocks(this_host, disks):
    cinder, conf = ceph_volume()
    plan = validate(cinder, **conf)
    assert not step_one(plan, cinder)["moved"]
    cinder.target_steps = [TargetStep.NOT_MOVED]  # Cinder's RBD driver takes nothing over
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    this_host["rbd"] = "librbd's Python bindings are missing (rados)"
    with pytest.raises(MigrationRefused, match="no host copy .*source pool's protocol ceph .*missing \\(rados\\)"):
        copy(plan, cinder, disks)
    assert not cinder.called("copy_target") and not cinder.called("copy_connect") and not disks.state.exists()
    assert flow.rollback(plan, cinder, "host_copy: refused") == "rolled back: migration_status error"
    assert cinder.volume["migration_status"] == "error"


# ---- target_takeover (step 2, in the destination's cinder-volume) -------------------------------
def test_an_async_takeover_leaves_the_volume_attachable_before_it_returns_and_a_retry_reads_the_same():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.RUNNING, TargetStep.RUNNING, TargetStep.ATTACHABLE]
    first = step_two(plan, cinder)
    assert first == {"moved": True, "async": True, "model_update": None}
    assert cinder.volume["migration_status"] == "migrating_attachable"
    assert cinder.volume["os-vol-host-attr:host"] == "lab@alpha#pool1"
    assert step_two(plan, cinder) == first  # a retry after a dead worker: the same answer, nothing started
    assert cinder.named("target_migrate") == [("run-1",)] * 2
    assert cinder.named("attachable") == [("lab@alpha#pool1",)]


def test_a_target_that_cannot_take_over_leaves_the_volume_locked_on_its_source_and_one_that_fails_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.NOT_MOVED]
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("starting", plan.source_host)
    cinder.target_step, cinder.target_steps = None, ["failed: VolumeBackendAPIException: take the LUN over: full"]
    with pytest.raises(MigrationFailed, match="target driver of alpha did not take the volume over: failed: .*full"):
        step_two(plan, cinder)
    assert not cinder.called("attachable")


def test_a_step_two_that_runs_long_is_asked_again_once_a_minute_and_its_outcome_read():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.RUNNING] * 130 + [TargetStep.ATTACHABLE]  # a look a second: over two minutes
    clock = Clock()
    assert step_two(plan, cinder, clock)["async"]
    assert [c[0] for c in cinder.calls if c[0].startswith("target_migrate")] == [
        "target_migrate", "target_migrate again", "target_migrate again"]  # fmt: skip
    assert 120 <= clock.now <= 140


def test_a_cinder_without_the_extension_or_the_volume_manager_is_refused_with_what_to_install():
    cinder = ScriptedCinder()
    cinder.extensions = {"os-extended-snapshot-attributes"}
    with pytest.raises(
        MigrationRefused,
        match="has not loaded the API extension os-async-migration: install the "
        "distribution cinder-async-migration into Cinder's own environment",
    ):
        validate(cinder)
    cinder = ScriptedCinder()
    del cinder.pools["lab@alpha#pool1"]["async_migration_manager"]  # alpha's cinder-volume runs Cinder's own manager
    with pytest.raises(
        MigrationRefused,
        match="the cinder-volume of alpha does not run the async migration volume "
        r"manager: install .*volume_manager = include\.cinder_plugin\.manager",
    ):
        validate(cinder)
    assert not cinder.called("begin")
