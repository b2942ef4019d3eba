"""judge_copy: what a migration's view in Cinder says of its takeover's background copy."""

from __future__ import annotations

from include.backends.base import MigrationProgress, MigrationState
from include.migration.copy_watch import CopyLook, CopyOutcome, judge_copy

GiB = 1 << 30


def progress(state, done=0, message=""):
    return MigrationProgress(MigrationState(state), done, GiB, 64 << 20, 10.0, message)


def view(copy=None, status="migrating_attachable", **extra):
    return {"volume_id": "v-1", "migration_status": status, "copy": copy.to_json() if copy else None, **extra}


def test_a_complete_copy_is_done_with_its_progress():
    done = progress("done", GiB)
    assert judge_copy(view(done)) == CopyLook(done, CopyOutcome.DONE, "")


def test_a_failed_copy_is_failed_with_its_message():
    failed = progress("failed", 5, message="LUN lost")
    assert judge_copy(view(failed)) == CopyLook(failed, CopyOutcome.FAILED, "LUN lost")


def test_a_copy_going_on_is_looked_at_again():
    for state in ("copying", "paused", "waiting_for_source"):
        going = progress(state, GiB // 2)
        assert judge_copy(view(going)) == CopyLook(going, None, "")


def test_no_copy_in_the_view_is_looked_at_again_with_what_cinder_said():
    assert judge_copy(view(copy_error="the destination did not answer")) == CopyLook(
        None, None, "the destination did not answer"
    )
    assert judge_copy(view()) == CopyLook(None, None, "the destination did not say how the copy goes")


def test_a_finished_migration_is_done_whatever_its_copy_said():
    look = judge_copy(view(progress("copying", 1), status="success"))
    assert (look.progress, look.outcome) == (None, CopyOutcome.DONE)


def test_any_other_status_is_failed():
    for status in ("error", "migrating", None):
        look = judge_copy(view(progress("copying", 1), status=status))
        assert (look.progress, look.outcome) == (None, CopyOutcome.FAILED)
        assert "volume v-1 is no longer attachable" in look.message and f"migration_status {status}" in look.message
