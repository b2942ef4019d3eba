"""The host copy through Cinder, commit, rollback and abandon, against the scripted Cinder (conftest.py)."""

from __future__ import annotations

import pytest

from include.backends.base import MiB, MigrationState
from include.cinder_plugin.names import TargetStep
from include.migration import flow
from include.migration.errors import MigrationFailed, MigrationRefused
from tests.unit.fake_clock import Clock
from tests.unit.flow.conftest import (
    VID,
    ScriptedCinder,
    attachable,
    copy,
    step_two,
    validate,
)

# ---- host_copy (the generic path: Cinder's destination volume, copied on this host) -------------------


def test_host_copy_waits_for_cinders_destination_volume_copies_it_and_records_it_copied(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = ["creating", "creating", "available"]
    clock, seen = Clock(), []
    done = {"complete": True, "bytes_copied": 2 * MiB, "offset": 3 * MiB, "copy_target": "copy-1"}
    assert copy(plan, cinder, disks, clock, progress=seen.append) == done
    assert clock.now == 2  # two looks at the destination volume a second apart
    assert (disks.volumes / "copy-1").read_bytes() == disks.data
    assert [c[0] for c in cinder.calls if c[0].startswith("copy")] == [
        "copy_target", "copy_connect", "copy_connect", "copy_disconnect"]  # fmt: skip
    assert cinder.named("copy_target") == [("run-1", None)]
    assert cinder.named("copy_connect") == [("source", "worker-1", "run-1"), ("target", "worker-1", "run-1")]
    assert cinder.named("copy_disconnect") == [("run-1", True)] and cinder.copied == "copy-1"
    assert disks.opened == [(f"volume {VID} on lab@beta#pool1", False), ("volume copy-1 on lab@alpha#pool1", True)]
    assert seen[-1].state == MigrationState.DONE


def test_a_copy_that_fails_closes_the_connections_without_recording_it_copied(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    (disks.volumes / "copy-1").write_bytes(bytes(MiB))  # not the source's size
    cinder.refuse_disconnect = True  # and closing them fails too: the copy's error is the one raised
    with pytest.raises(ValueError, match="smaller than the source's"):
        copy(plan, cinder, disks)
    assert cinder.named("copy_disconnect") == [("run-1", False)] and cinder.copied is None
    with pytest.raises(MigrationFailed, match="not committed, the source is kept: .*copy-1 is not recorded complete"):
        flow.commit(plan, cinder)
    assert not cinder.called("finish") and cinder.volume["migration_status"] == "starting"


@pytest.mark.parametrize(
    ("statuses", "message", "waited"),
    [(["creating", "error"], "could not create the destination volume copy-1 on lab@alpha#pool1", 1),
     (["creating"], "destination volume copy-1 on lab@alpha#pool1 is still creating after 300 s", 300)],
    ids=["error", "timeout"],
)  # fmt: skip
def test_a_destination_volume_not_made_fails_the_copy_and_rollback_says_what_became_of_it(
    disks, statuses, message, waited
):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = statuses
    clock = Clock()
    with pytest.raises(MigrationFailed, match=message):
        copy(plan, cinder, disks, clock)
    assert clock.now == waited and not cinder.called("copy_connect") and not cinder.called("copy_disconnect")
    done = flow.rollback(plan, cinder, "host_copy: no destination volume")
    assert done.startswith("rolled back: migration_status error, the host copy's destination volume copy-1 ")
    if "error" in statuses:
        assert done.endswith("copy-1 deleted by Cinder")
    else:  # one still being created is left by Cinder, and the answer says so
        assert done.endswith("copy-1 is creating, not deleted: delete it once it settles (the audit names it)")
    assert cinder.named("fail") == [("host_copy: no destination volume", "run-1")]


def test_a_destination_volume_made_again_drops_the_checkpoint_of_the_one_before(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = ["error"]
    with pytest.raises(MigrationFailed):
        copy(plan, cinder, disks)
    disks.state.mkdir()
    old, other = flow.checkpoint_path(disks.state, plan, "copy-1"), disks.state / "volume-other.0123.checkpoint"
    for path in (old, other):  # an interrupted copy into copy-1; another volume's copy
        path.write_text("{}")
    cinder.copy_statuses = ["available"]  # the retry: Cinder makes copy-2
    assert copy(plan, cinder, disks)["copy_target"] == "copy-2"
    assert not old.exists() and other.exists()
    assert not flow.checkpoint_path(disks.state, plan, "copy-2").exists()  # a finished copy leaves none
    assert (disks.volumes / "copy-2").read_bytes() == disks.data and cinder.copied == "copy-2"


# ---- commit and rollback ------------------------------------------------------------------------
def test_commit_of_a_takeover_is_cinders_finish_which_keeps_the_source_until_the_copy_is_complete():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    step_two(plan, cinder)
    with pytest.raises(MigrationFailed, match="not committed, the source is kept: .*copying"):
        flow.commit(plan, cinder)
    assert not cinder.called("finish") and cinder.volume["migration_status"] == "migrating_attachable"
    assert "not rolled back" in flow.rollback(plan, cinder, "commit: not complete")
    cinder.copy_done = True
    flow.commit(plan, cinder)
    assert cinder.volume["migration_status"] == "success"
    flow.commit(plan, cinder)  # a retry after success changes nothing
    assert cinder.named("finish") == [("lab@alpha#pool1",)] and not cinder.called("fail")


def test_commit_of_a_host_copy_is_cinders_finish_once_the_copy_is_recorded(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    with pytest.raises(MigrationFailed, match="the source is kept: .*into no destination volume is not recorded"):
        flow.commit(plan, cinder)
    copy(plan, cinder, disks)
    flow.commit(plan, cinder)
    flow.commit(plan, cinder)  # a retry after success changes nothing
    assert cinder.named("finish") == [("lab@alpha#pool1",)] and cinder.volume["migration_status"] == "success"
    assert flow.rollback(plan, cinder, "late").startswith("not rolled back: volume") and not cinder.called("fail")


def test_rollback_before_attachable_has_cinder_mark_the_error_and_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = ["failed: array alpha unreachable"]
    with pytest.raises(MigrationFailed):
        step_two(plan, cinder)
    done = flow.rollback(plan, cinder, "target_takeover: array alpha unreachable")
    assert done == "rolled back: migration_status error"
    assert cinder.named("fail") == [("target_takeover: array alpha unreachable", "run-1")]
    assert flow.rollback(plan, cinder, "again").startswith("nothing to undo")  # idempotent
    assert len(cinder.named("fail")) == 1


def test_rollback_never_deletes_once_attachable_or_after_a_synchronous_takeover():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.mark_attachable(VID, plan.dest_host)
    assert "not rolled back: volume" in flow.rollback(plan, cinder, "wait_for_copy: timeout")
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.MOVED]
    assert step_two(plan, cinder) == {"moved": True, "async": False, "model_update": None}
    assert "not rolled back: the target driver moved" in flow.rollback(plan, cinder, "commit: down")
    assert not cinder.called("fail") and cinder.volume["migration_status"] == "starting"


def test_rollback_without_a_plan_touches_nothing():
    cinder = ScriptedCinder()
    assert flow.rollback(None, cinder, "validate_and_lock: bad input").startswith("nothing to undo")
    assert cinder.calls == []


# ---- abandon (before the switch-over, through Cinder) -------------------------------------------


def test_abandon_is_cinders_and_puts_the_volume_back_on_its_source():
    cinder = ScriptedCinder()
    plan = attachable(cinder)
    done = flow.abandon(plan, cinder, "abandoned by admin")
    assert done == "abandoned: copy given up on alpha, volume back on lab@beta#pool1"
    assert ("abandon", ("abandoned by admin", "run-1", None)) in cinder.calls
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("error", "lab@beta#pool1")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c: setattr(c, "abandon_refusal", "LUN x is copied in stream mode"), "nothing changed: .*stream mode"),
        (lambda c: setattr(c, "abandon_refusal", "the mirror has switched over"), "nothing changed: .*switched over"),
        (lambda c: c.volume.update(status="in-use"), "detach it first"),
        (lambda c: c.volume.update(attachments=[{"id": "a-1"}]), "detach it first"),
        (lambda c: c.volume.update(migration_status="success"), "only a migration attachable on"),
    ],
    ids=["stream", "switched-over", "in-use", "attached", "finished"],
)
def test_abandon_refuses_and_changes_nothing(setup, message):
    cinder = ScriptedCinder()
    plan = attachable(cinder)
    setup(cinder)
    before = dict(cinder.volume)
    with pytest.raises(MigrationRefused, match=message):
        flow.abandon(plan, cinder, "abandoned by admin")
    assert dict(cinder.volume) == before and not cinder.called("abandon")
