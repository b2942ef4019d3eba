"""One judgement of a takeover's background copy, from the migration's view in Cinder, for every watcher.

The sensor's poke, the deferred trigger and the operator view all read
``GET /os-async-migration/{volume_id}`` (``CinderApi.migration``): the
destination's cinder-volume answers the copy's progress there. ``judge_copy``
says what that view means, so they cannot disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from include.backends.base import MigrationProgress, MigrationState
from include.cinder_plugin.names import MIGRATING_ATTACHABLE


class CopyOutcome(str, enum.Enum):
    DONE = "done"  # the target is complete: commit next
    FAILED = "failed"  # the copy cannot go on, or the migration is no longer attachable


@dataclass(frozen=True)
class CopyLook:
    """One look: the progress (None when the destination could not say now), and the outcome once it is final."""

    progress: MigrationProgress | None
    outcome: CopyOutcome | None = None  # None: look again later
    message: str = ""


def judge_copy(view: dict[str, Any]) -> CopyLook:
    """What a migration's view (``CinderApi.migration``) says of its takeover's background copy."""
    status = view.get("migration_status")
    if status == "success":
        return CopyLook(None, CopyOutcome.DONE, "the migration is already finished")
    if status != MIGRATING_ATTACHABLE:
        return CopyLook(None, CopyOutcome.FAILED, f"volume {view.get('volume_id')} is no longer attachable on its "
                                                  f"destination (migration_status {status})")  # fmt: skip
    if view.get("copy") is None:
        return CopyLook(None, None, view.get("copy_error") or "the destination did not say how the copy goes")
    progress = MigrationProgress.from_json(view["copy"])
    if not progress.state.terminal:
        return CopyLook(progress)
    outcome = CopyOutcome.DONE if progress.state is MigrationState.DONE else CopyOutcome.FAILED
    return CopyLook(progress, outcome, progress.message)
