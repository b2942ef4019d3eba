"""What a backend's Cinder driver offers of the blueprint, as cinder-volume reports it (``Features``).

Every Cinder driver has the source side, ``migrate_volume`` (the base driver's
answers "not moved"). The target side and the controls of a background copy
are methods a driver adds (``TARGET_METHODS``): a driver without one says so
here, and its callers offer no such control instead of failing on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The blueprint's target side and a background copy's controls: Features field -> the driver method that offers it
TARGET_METHODS = {
    "migrate_volume_target": "migrate_volume_target",
    "complete_migration_target": "complete_migration_target",
    "pause": "pause_migration_target",
    "resume": "resume_migration_target",
    "speed": "set_migration_target_speed",
    "abort": "abort_migration_target",
    "abandon": "abandon_migration_target",
}


@dataclass(frozen=True)
class Features:
    """One backend's driver and what it offers: step 1 always, the rest where the driver has the method."""

    backend: str  # host@backend
    driver: str  # the driver's class name
    migrate_volume: bool = True  # step 1 on the source: Cinder's own, every driver answers (moved or not)
    migrate_volume_target: bool = False  # step 2: take the volume over as the target
    complete_migration_target: bool = False  # look at (and end) the background copy
    pause: bool = False
    resume: bool = False
    speed: bool = False
    abort: bool = False  # cancel an unfinished takeover before the volume is attachable
    abandon: bool = False  # give up an attachable one whose source has every write

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Features:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def features_of(driver: Any, *, backend: str) -> Features:
    """The ``Features`` of a Cinder volume driver object: which of ``TARGET_METHODS`` it has."""
    offered = {field: callable(getattr(driver, method, None)) for field, method in TARGET_METHODS.items()}
    return Features(backend=backend, driver=type(driver).__name__, **offered)
