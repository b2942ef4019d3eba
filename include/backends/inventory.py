"""What a backend holds, as its Cinder driver lists it for an audit, and the leftovers it can clean up itself.

``InventoryDriver`` is a mixin a Cinder volume driver may implement beside
``AsyncMigrationTarget``: cinder-volume (``include.cinder_plugin.manager``)
lists ``held_volumes()`` for the audit, which compares them with Cinder's
volumes, and runs ``release_held(name, repair)`` for a repair the audit found
safe. A driver without it is listed through Cinder's manageable-volumes
listing (``get_manageable_volumes``, which stock drivers implement): what it
holds is audited and reported, never repaired.

Nothing here imports Cinder: the Airflow side reads ``HeldVolume`` too.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import asdict, dataclass
from typing import Any


class Cleanup(enum.StrEnum):
    """What ``release_held`` does to a volume no Cinder volume accounts for."""

    ABORT_TAKEOVER = "abort_takeover"  # stop the takeover copying into it and delete it
    RELEASE_EXPORT = "release_export"  # drop the export another backend's takeover reads it through
    DELETE = "delete"  # delete it (and its exports)


@dataclass(frozen=True)
class HeldVolume:
    """One volume on a backend: its name there (Cinder's ``volume-<name id>`` for those Cinder made), its size,
    whether it is exported, whether a takeover copies into it, and which initiator a takeover export lends it to."""

    name: str
    size: int  # bytes
    exported: bool = False
    copying: bool = False
    lent_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeldVolume:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class InventoryDriver(abc.ABC):
    """The mixin: what the backend holds, and cleaning up what no volume accounts for."""

    @abc.abstractmethod
    def held_volumes(self) -> list[HeldVolume]:
        """Every volume on the backend, Cinder's or not."""

    @abc.abstractmethod
    def release_held(self, name: str, cleanup: Cleanup) -> str:
        """Do ``cleanup`` to the volume ``name``; returns what was done (a volume already gone is no error)."""
