"""The blueprint's decisions, as plain functions the DAG's branches call.

1. ``force_host_copy`` or a new volume type -> generic host copy; else ask
   the SOURCE driver (``migrate_volume``).
2. Source moved it -> commit; else ask the TARGET driver
   (``migrate_volume_target``).
3. Target did not move it -> host copy; moved synchronously -> commit;
   moved asynchronously (the takeover step marked the volume attachable) ->
   wait for the copy (``complete_migration_target``) and commit.

Each returns the ``Step`` (task id) to follow.
"""

from __future__ import annotations

from include.migration.request import MigrationRequest
from include.migration.steps import Step


def first_step(request: MigrationRequest) -> Step:
    """Blueprint step 1: the drivers are skipped for a forced host copy or a type change."""
    if request.force_host_copy or request.new_type:
        return Step.HOST_COPY
    return Step.SOURCE_DRIVER


def choose_path(path: str) -> Step:
    """The branch after validation for a plan's ``path`` (``first_step``): ask the source driver, or skip both."""
    return Step.SOURCE_DRIVER if path == Step.SOURCE_DRIVER else Step.DRIVERS_SKIPPED


def after_source_driver(moved: bool) -> Step:
    """Blueprint step 1, answer: moved -> commit, else give the target a chance (step 2)."""
    return Step.COMMIT if moved else Step.TARGET_TAKEOVER


def after_target_driver(moved: bool, migration_async: bool) -> Step:
    """Blueprint step 2, answer ``(moved, migration_async)``."""
    if not moved:
        return Step.HOST_COPY
    return Step.WAIT_FOR_COPY if migration_async else Step.COMMIT
