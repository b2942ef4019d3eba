"""The backend driver interface of the async-migration blueprint.

The names follow the Cinder blueprint "async volume migration between
backends" so the code can be held against it:

* ``migrate_volume`` runs on the SOURCE backend (for example a move between
  pools of one array);
* ``migrate_volume_target`` runs on the TARGET backend: it takes the source
  LUN over as a remote LUN, serves I/O at once and copies in the background;
* ``complete_migration_target`` watches that background copy and, once it is
  done, releases the remote LUN.

Nothing here knows about Airflow or Cinder: the same adapter serves the DAG
and the Cinder volume driver.
"""

from __future__ import annotations

import abc
import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Any

GiB = 1024**3
MiB = 1024**2
# How a takeover copies (``migrate_volume_target``'s ``mode``): "stream" writes land on the target only and
# the data is streamed under them; "mirror" writes go to both until the target is in sync (the source stays
# current until the switch-over).
COPY_MODES = ("stream", "mirror")


@dataclass(frozen=True)
class Volume:
    """The LUN a migration is about: its name on the arrays and its size."""

    name: str
    size: int  # bytes
    pool: str | None = None


@dataclass(frozen=True)
class Destination:
    """Where ``migrate_volume`` should put the volume: backend and pool."""

    backend: str
    pool: str


@dataclass(frozen=True)
class ConnectionInfo:
    """How an NBD client reaches an export of a LUN."""

    host: str
    port: int
    export: str

    @property
    def uri(self) -> str:
        return f"nbd://{self.host}:{self.port}/{self.export}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "driver_volume_type": "nbd", "uri": self.uri}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectionInfo:
        return cls(host=str(data["host"]), port=int(data["port"]), export=str(data["export"]))


@dataclass(frozen=True)
class PoolInfo:
    name: str
    total_bytes: int
    free_bytes: int
    allocated_bytes: int


@dataclass(frozen=True)
class Capabilities:
    """What an array offers: its pools and whether it can take LUNs over."""

    name: str
    kind: str
    takeover: bool
    pool_move: bool
    pools: tuple[PoolInfo, ...] = field(default_factory=tuple)

    def pool(self, name: str) -> PoolInfo | None:
        return next((p for p in self.pools if p.name == name), None)


class MigrationState(str, enum.Enum):
    """State of a background copy on the target array."""

    COPYING = "copying"
    PAUSED = "paused"
    WAITING_FOR_SOURCE = "waiting_for_source"  # source unreachable; retried by the array
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({MigrationState.DONE, MigrationState.FAILED})


_DESCRIBED = re.compile(
    r"(?P<state>\w+): +[\d.]+% \((?P<done>\d+)/(?P<total>\d+) MiB\) at (?P<rate>[\d.]+) MiB/s, "
    r"ETA (?P<eta>-|\d+)s?(?:; (?P<message>.*))?",
    re.S,
)


@dataclass(frozen=True)
class MigrationProgress:
    """One look at a copy: a takeover's background copy on the target array, or a host copy."""

    state: MigrationState
    bytes_done: int  # offset reached (for a host copy: data written and holes skipped)
    bytes_total: int
    rate_bps: float = 0.0  # advance of bytes_done per second over the last few seconds
    eta_seconds: float | None = None
    message: str = ""
    bytes_written: int | None = None  # data bytes written to the target, where the copier counts them
    # the source has every write made since the takeover, so abandoning the copy loses none (a mirror before its
    # switch-over; an RBD live migration, whose abort writes them back): what the operator view offers abandon for
    abandonable: bool = False

    @property
    def percent(self) -> float:
        return 100.0 if not self.bytes_total else 100.0 * self.bytes_done / self.bytes_total

    def describe(self) -> str:
        eta = "-" if self.eta_seconds is None else f"{self.eta_seconds:.0f}s"
        text = (
            f"{self.state.value}: {self.percent:5.1f}% "
            f"({self.bytes_done / MiB:.0f}/{self.bytes_total / MiB:.0f} MiB) "
            f"at {self.rate_bps / MiB:.1f} MiB/s, ETA {eta}"
        )
        return f"{text}; {self.message}" if self.message else text

    @classmethod
    def parse(cls, text: str) -> MigrationProgress | None:
        """Read back what ``describe`` wrote (to MiB precision), e.g. from Cinder's volume metadata; None if
        ``text`` is not such a line."""
        found = _DESCRIBED.fullmatch(text.strip())
        if not found or found["state"] not in MigrationState._value2member_map_:
            return None
        eta = None if found["eta"] == "-" else float(found["eta"])
        return cls(
            state=MigrationState(found["state"]),
            bytes_done=int(found["done"]) * MiB,
            bytes_total=int(found["total"]) * MiB,
            rate_bps=float(found["rate"]) * MiB,
            eta_seconds=eta,
            message=found["message"] or "",
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationProgress:
        return cls(
            state=MigrationState(data["state"]),
            bytes_done=int(data["bytes_done"]),
            bytes_total=int(data["bytes_total"]),
            rate_bps=float(data.get("rate_bps") or 0.0),
            eta_seconds=None if data.get("eta_seconds") is None else float(data["eta_seconds"]),
            message=str(data.get("message") or ""),
            bytes_written=None if data.get("bytes_written") is None else int(data["bytes_written"]),
            abandonable=bool(data.get("abandonable")),
        )


class BackendDriver(abc.ABC):
    """One storage array as the migration flow sees it.

    Subclasses implement the LUN lifecycle; the migration methods default to
    "cannot do it" so that an array without migration features still works
    as a source or target of the generic host copy.
    """

    name: str

    # ---- LUN lifecycle -------------------------------------------------
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Pools with total and free space, and the migration features."""

    @abc.abstractmethod
    def create_lun(self, name: str, size: int, pool: str) -> dict[str, Any]:
        """Create an empty LUN of ``size`` bytes in ``pool``; returns its record."""

    @abc.abstractmethod
    def delete_lun(self, name: str) -> None:
        """Delete a LUN. Refused while it is exported for takeover or being copied."""

    @abc.abstractmethod
    def extend_lun(self, name: str, size: int) -> dict[str, Any]:
        """Grow a LUN to ``size`` bytes. Refused while it is being copied."""

    @abc.abstractmethod
    def get_lun(self, name: str) -> dict[str, Any]:
        """The LUN's record; raises NotFound."""

    @abc.abstractmethod
    def list_luns(self) -> list[dict[str, Any]]:
        """Every LUN's record."""

    @abc.abstractmethod
    def export_lun(self, name: str) -> ConnectionInfo:
        """Export the LUN to a server (idempotent); returns NBD connection info."""

    @abc.abstractmethod
    def unexport_lun(self, name: str) -> None:
        """Remove the server export (idempotent)."""

    @abc.abstractmethod
    def export_for_takeover(self, name: str, initiator: str) -> ConnectionInfo:
        """Export the LUN to another array that will take it over.

        While this export exists the LUN cannot be deleted. Idempotent for
        the same initiator; a second initiator is refused.
        """

    @abc.abstractmethod
    def release_takeover(self, name: str) -> None:
        """Drop the takeover export (idempotent). Call only once the target is complete."""

    # ---- migration (blueprint) ------------------------------------------
    def migrate_volume(self, volume: Volume, dest: Destination) -> tuple[bool, dict[str, Any] | None]:
        """Source-driver migration.

        Returns ``(moved, model_update)``. ``moved`` False means this backend
        cannot do it and the caller tries ``migrate_volume_target`` on the
        target backend next. When ``moved`` is True the volume is complete at
        ``dest`` and the caller commits.
        """
        return False, None

    def migrate_volume_target(
        self,
        volume: Volume,
        source: BackendDriver,
        *,
        pool: str,
        speed_bps: int | None = None,
        mode: str | None = None,
    ) -> tuple[bool, bool, dict[str, Any] | None]:
        """Target-driver migration: take the source LUN over.

        ``pool`` is the target pool, ``speed_bps`` a copy throttle (None: the
        array's default, 0: unlimited), ``mode`` a copy mode the array offers
        (None: its default).

        Returns ``(moved, migration_async, model_update)``:

        * ``moved`` False: this backend cannot take the LUN over; the caller
          falls back to the generic host copy.
        * ``moved`` True, ``migration_async`` False: the volume is complete on
          this backend; the caller commits.
        * ``moved`` True, ``migration_async`` True: the LUN already serves
          reads and writes on this backend (``model_update`` holds its
          location) while the data is copied in the background; the caller
          marks the volume ``migrating_attachable`` and polls
          ``complete_migration_target`` until a terminal state.

        Idempotent: a second call for a LUN already taken over from the same
        source returns the same answer without a second takeover.
        """
        return False, False, None

    def complete_migration_target(self, volume: Volume) -> MigrationProgress:
        """Look at the background copy of ``volume`` (does not block).

        Returns its progress. Once the state is DONE the remote LUN has been
        released on this array: the target is complete and the caller may
        release and delete the source LUN. FAILED means the copy cannot go
        on; the source is still intact.
        """
        raise NotImplementedError(f"{type(self).__name__} does not take LUNs over")

    def abandon_migration_target(self, volume: Volume) -> None:
        """Give up a takeover of ``volume`` whose source still has every write, and delete the target LUN.

        Only a mirror-mode copy before its switch-over qualifies: every
        client write went to the source too. The check and the deletion are
        one step on the array (the switch-over cannot come in between);
        Conflict when the copy does not qualify (a stream copy, a mirror that
        switched over, a copy that ended), and nothing changes. The caller
        then releases the source's takeover export and points the volume
        back at the source.
        """
        raise NotImplementedError(f"{type(self).__name__} does not take LUNs over")

    def abort_migration_target(self, volume: Volume) -> None:
        """Cancel an unfinished takeover of ``volume`` and delete the target LUN; the source is untouched.

        Writes made on the target since the takeover are lost: call it only
        before the volume was made attachable. The caller then releases the
        source's takeover export.
        """
        raise NotImplementedError(f"{type(self).__name__} does not take LUNs over")
