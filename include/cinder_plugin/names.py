"""The names the async-migration extension puts into Cinder's API, for its clients as for itself.

No Cinder import here: the Airflow side (``include.migration.cinder_api``) and
the lab read these without Cinder installed.
"""

import enum
import re

ALIAS = "os-async-migration"  # the extension's alias in GET /extensions
ERROR_KEY = "async_migration_error"  # volume metadata: why the last migration failed
PROGRESS_KEY = "async_migration_progress"  # volume metadata: the copy's progress while a migration is in flight
# migration_status of a volume that no migration holds (Cinder's AVAILABLE_MIGRATION_STATUS)
SETTLED_MIGRATION_STATUSES = (None, "deleting", "error", "success")
# migration_status of a volume served by its destination while its data is copied (the blueprint's)
MIGRATING_ATTACHABLE = "migrating_attachable"
# migration_status of a volume this extension's lock holds through the blueprint's steps: begin's, attachable's
IN_FLIGHT = ("starting", MIGRATING_ATTACHABLE)
# The Cinder side as its own distribution (cinder_dist/, README "Installing the Cinder side"): what cinder.conf names
DISTRIBUTION = "cinder-async-migration"
EXTENSION_CLASS = "include.cinder_plugin.extension.Async_migration"  # [DEFAULT] osapi_volume_extension (cinder-api)
MANAGER_CLASS = "include.cinder_plugin.manager.AsyncMigrationManager"  # [DEFAULT] volume_manager (cinder-volume)
INSTALL_HINT = (
    f"install the distribution {DISTRIBUTION} into Cinder's own environment and name its classes in cinder.conf "
    f"(osapi_volume_extension = {EXTENSION_CLASS} for cinder-api, volume_manager = {MANAGER_CLASS} for "
    "cinder-volume), then restart them (README: Installing the Cinder side)"
)
# backend and pool capability: this backend's cinder-volume runs AsyncMigrationManager (the blueprint's steps)
MANAGER_CAPABILITY = "async_migration_manager"
MANAGER_VERSION = 1
ASYNC_TARGET_CAPABILITY = "async_migration_target"  # pool capability: takes volumes over (migrate_volume_target)
# pool capability: the connection types (os-brick's, lower case: nbd, rbd...) of the sources it takes over; a
# pool that does not say may take any over
ASYNC_TARGET_SOURCES = "async_migration_target_sources"
# volume admin metadata: the lock of a migration in flight (its destination pool, its holder, where it started)
DEST_KEY = "async_migration_dest"
OWNER_KEY = "async_migration_owner"
SOURCE_KEY = "async_migration_source"
# volume admin metadata: when the migration's copy must be complete (epoch seconds), set once with the lock
DEADLINE_KEY = "async_migration_deadline"
# volume admin metadata: the outcome of blueprint step 1 (the source driver's migrate_volume) run in cinder-volume
SOURCE_STEP_KEY = "async_migration_source_step"
# volume admin metadata: the outcome of blueprint step 2 (the target driver's migrate_volume_target) in cinder-volume
TARGET_STEP_KEY = "async_migration_target_step"
# volume admin metadata: step 2's arguments (JSON: speed_bps, mode), to ask it again after cinder-volume restarted
TARGET_ARGS_KEY = "async_migration_target_args"
# volume admin metadata: the source's provider_location while the volume is served by the target that took it over
SOURCE_LOCATION_KEY = "async_migration_source_location"
# volume admin metadata of a host copy: the destination volume Cinder made for it (migration_status target:<id>),
# the connector the copying host used (JSON), and the destination volume once the copy was flushed to it
COPY_TARGET_KEY = "async_migration_copy_target"
COPY_CONNECTOR_KEY = "async_migration_copy_connector"
COPIED_KEY = "async_migration_copied"
# volume admin metadata: set just before Cinder is asked to unmanage the volume; its LUN, which stays on the
# backend by design, is then not a leftover of this Cinder's (an audit leaves it alone)
UNMANAGED_KEY = "async_migration_unmanaged"
# the name of a LUN Cinder's drivers make for a volume (Cinder's default volume_name_template, volume-<uuid>)
VOLUME_LUN = re.compile(r"volume-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
RESOURCE = "os-async-migration"  # GET /v3/{project_id}/os-async-migration[/{volume_id}]: the migrations' state
BACKENDS_RESOURCE = "os-async-migration-backends"  # GET .../os-async-migration-backends/{host@backend}: Features


class SourceStep(enum.StrEnum):
    """What the source driver's ``migrate_volume`` did, as recorded under ``SOURCE_STEP_KEY`` (``FAILED``: with
    ``": <reason>"`` after it)."""

    RUNNING = "running"
    MOVED = "moved"  # the volume is on the destination; the lock holds until the caller finishes
    NOT_MOVED = "not_moved"  # nothing changed: the target's turn
    FAILED = "failed"


class TargetStep(enum.StrEnum):
    """What the target driver's ``migrate_volume_target`` did, as recorded under ``TARGET_STEP_KEY``
    (``FAILED``: with ``": <reason>"`` after it)."""

    RUNNING = "running"
    ATTACHABLE = "attachable"  # moved, async: served by the target (migrating_attachable) while it copies
    MOVED = "moved"  # moved, sync: complete on the target; the lock holds until the caller finishes
    NOT_MOVED = "not_moved"  # nothing changed (the source's connection was terminated): the host copy's turn
    FAILED = "failed"  # the takeover was aborted and the source's connection terminated: the source is intact


# the copy controls of an attachable migration (os-async_migration_copy), each a driver method (features.py)
COPY_CONTROLS = ("pause", "resume", "speed")
