"""The blueprint's target side as a Cinder volume driver implements it: ``AsyncMigrationTarget`` and its results.

A driver class mixes ``AsyncMigrationTarget`` in and implements its methods;
cinder-volume (``include.cinder_plugin.manager``) calls them on the TARGET
backend, in the order the blueprint gives:

1. ``takeover_connector()``: the connector this backend presents, as an
   initiator, to the SOURCE backend. cinder-volume asks the source's own
   cinder-volume for a connection with it (Cinder's ``initialize_connection``),
   so the source driver exports its volume to this backend in whatever
   protocol it speaks;
2. ``migrate_volume_target(context, volume, source_connection, host, ...)``
   -> ``TargetResult(moved, migration_async, model_update)``;
3. while ``migration_async``: ``complete_migration_target(context, volume)``
   -> ``MigrationProgress``, looked at until its state is terminal. DONE means
   the target is complete and holds nothing of the source any more:
   cinder-volume then has the source's connection terminated and the source
   volume deleted by its own driver.

A driver may also offer, each as a method of that name (``features.TARGET_METHODS``):
``pause_migration_target`` / ``resume_migration_target`` (-> ``MigrationProgress``),
``set_migration_target_speed(context, volume, speed_bps)`` (-> ``MigrationProgress``),
``abort_migration_target(context, volume)`` (before the volume was attachable:
the target's copy and volume go, writes made on it are lost) and
``abandon_migration_target(context, volume)`` (an attachable volume whose
source still has every write: the target's copy and volume go; raise
``cinder.exception.InvalidVolume`` when the copy does not qualify, changing
nothing). A driver without one offers no such control.

Nothing here imports Cinder: the Airflow side reads ``MigrationProgress`` and
the names too.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

from include.backends.base import MigrationProgress

# connector key: the backend (its array's name) that asks for a connection in order to take the volume over
TAKEOVER_INITIATOR = "async_migration_takeover_initiator"
# key of the ``host`` that blueprint step 1 gives the source driver's ``migrate_volume``: True when the destination
# offers to take the volume over (``ASYNC_TARGET_CAPABILITY``) and is asked next if the source does not move it.
# A source driver whose own move would keep the volume unusable until its end may answer "not moved" then; Cinder's
# own migrations never set it.
TAKEOVER_NEXT = "async_migration_takeover_next"


class TargetResult(NamedTuple):
    """What ``migrate_volume_target`` did.

    * ``moved`` False: this backend cannot take the volume over (for example
      it cannot open the source's protocol); nothing changed, the caller
      terminates the source's connection and tries the generic host copy;
    * ``moved`` True, ``migration_async`` False: the volume is complete on this
      backend; the caller puts it there (``model_update``) and commits;
    * ``moved`` True, ``migration_async`` True: the volume already serves reads
      and writes on this backend while its data is copied; the caller puts it
      here (``model_update``), marks it ``migrating_attachable`` and watches
      ``complete_migration_target``.
    """

    moved: bool
    migration_async: bool = False
    model_update: dict[str, Any] | None = None


NOT_MOVED = TargetResult(False)


class AsyncMigrationTarget(abc.ABC):
    """Mix into a Cinder volume driver that can take another backend's volume over (see the module docstring)."""

    @abc.abstractmethod
    def takeover_connector(self) -> dict[str, Any]:
        """The connector to ask the source backend for a connection with: it names this backend as the initiator
        (``TAKEOVER_INITIATOR``), so a source driver that knows the key exports the volume to this backend."""

    @abc.abstractmethod
    def migrate_volume_target(
        self,
        context: Any,
        volume: Any,
        source_connection: dict[str, Any],
        host: dict[str, Any],
        *,
        speed_bps: int | None = None,
        mode: str | None = None,
    ) -> TargetResult:
        """Take ``volume`` over from its source, which serves it through ``source_connection`` (the source
        driver's ``initialize_connection`` for ``takeover_connector()``).

        ``host``: this backend's destination pool as the scheduler describes it (``host``, ``capabilities``);
        ``speed_bps``: a copy throttle (None: the backend's default, 0: unlimited); ``mode``: a copy mode it offers.
        Idempotent: asked again for a volume it already took over from the same source, it answers the same
        without a second takeover.
        """

    @abc.abstractmethod
    def complete_migration_target(self, context: Any, volume: Any) -> MigrationProgress:
        """One look at the background copy of ``volume`` (does not block). DONE: complete, the source is no longer
        used and may be deleted; FAILED: the copy cannot go on, the source is intact."""
