"""The names the async-migration extension puts into Cinder's API, for its clients as for itself.

No Cinder import here: the Airflow side (``include.migration.cinder_api``) and
the lab read these without Cinder installed.
"""

import enum

ALIAS = "os-async-migration"  # the extension's alias in GET /extensions
ERROR_KEY = "async_migration_error"  # volume metadata: why the last migration failed
PROGRESS_KEY = "async_migration_progress"  # volume metadata: the copy's progress while a migration is in flight
LOCK_VIEW_KEY = "os-async-migration:lock"  # volume views: {source_host, host, owner} of a migration in flight
# migration_status of a volume that no migration holds (Cinder's AVAILABLE_MIGRATION_STATUS)
SETTLED_MIGRATION_STATUSES = (None, "deleting", "error", "success")
ASYNC_TARGET_CAPABILITY = "async_migration_target"  # pool capability: takes volumes over (migrate_volume_target)
# volume admin metadata: the outcome of blueprint step 1 (the source driver's migrate_volume) run in cinder-volume
SOURCE_STEP_KEY = "async_migration_source_step"
RESOURCE = "os-async-migration"  # GET /v3/{project_id}/os-async-migration/{volume_id}: a migration's state
BACKENDS_RESOURCE = "os-async-migration-backends"  # GET .../os-async-migration-backends/{host@backend}: Features


class SourceStep(enum.StrEnum):
    """What the source driver's ``migrate_volume`` did, as recorded under ``SOURCE_STEP_KEY`` (``FAILED``: with
    ``": <reason>"`` after it)."""

    RUNNING = "running"
    MOVED = "moved"  # the volume is on the destination; the lock holds until the caller finishes
    NOT_MOVED = "not_moved"  # nothing changed: the target's turn
    FAILED = "failed"
