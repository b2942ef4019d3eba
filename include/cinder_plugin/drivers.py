"""Cinder volume drivers for the lab arrays: thin wrappers over include/backends.

Configure a backend section of cinder.conf with::

    volume_driver = include.cinder_plugin.drivers.ReferenceArrayDriver   # or PlainArrayDriver
    volume_backend_name = alpha
    lab_array_name = alpha
    lab_array_url = http://127.0.0.1:PORT
    lab_array_token_file = /path/to/token        # the array's API token, nothing else

Volumes are LUNs named like Cinder's volume names (``volume-<id>``) in the
pool of the volume's host (``host@backend#pool``). A connection is an NBD
export: ``initialize_connection`` returns ``driver_volume_type: nbd`` with
host, port and export name (and ``array``, the array that serves it). A
connector that names another array as its takeover initiator
(``target_driver.TAKEOVER_INITIATOR``) gets the array's takeover export
instead, which keeps the LUN from being deleted until that connection is
terminated.

The reference arrays' driver is also the blueprint's target
(``target_driver.AsyncMigrationTarget``): it takes over a volume of another
lab array, serves it at once and copies in the background (stream or
mirror), with progress, pause, resume, speed, abort and abandon.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cinder import exception
from cinder.volume import configuration, driver, volume_utils
from oslo_config import cfg
from oslo_log import log as logging

from include.backends.array_api import ArrayApiBackend, PlainArrayBackend, ReferenceArrayBackend
from include.backends.base import ConnectionInfo, Destination, GiB, MiB, MigrationProgress, Volume
from include.backends.errors import BackendError, Conflict, NotFound
from include.backends.inventory import Cleanup, HeldVolume, InventoryDriver
from include.backends.target_driver import NOT_MOVED, TAKEOVER_INITIATOR, AsyncMigrationTarget, TargetResult
from include.cinder_plugin.names import ASYNC_TARGET_CAPABILITY, ASYNC_TARGET_SOURCES

LOG = logging.getLogger(__name__)

lab_array_opts = [
    cfg.StrOpt("lab_array_name", help="Name of the lab array this backend drives (alpha, beta, gamma)."),
    cfg.URIOpt("lab_array_url", help="URL of the array's management API, e.g. http://127.0.0.1:18101"),
    cfg.StrOpt("lab_array_token_file", help="File that holds the array's API token."),
    cfg.FloatOpt("lab_array_timeout", default=60.0, help="Seconds to wait for one management API call."),
]

# what the reference arrays take over: another lab array's NBD export, an RBD image (QEMU's rbd driver)
TAKEOVER_SOURCES = ["nbd", "rbd"]

CONF = cfg.CONF
CONF.register_opts(lab_array_opts, group=configuration.SHARED_CONF_GROUP)


class LabArrayDriver(driver.VolumeDriver, InventoryDriver):
    """Common part of the lab drivers: the LUN lifecycle, NBD connections, and the array's LUNs for an audit."""

    VERSION = "1.0.0"
    CI_WIKI_NAME = "none"
    adapter_class: type[ArrayApiBackend] = ArrayApiBackend

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(lab_array_opts)
        self.array: ArrayApiBackend | None = None

    # ---- setup -------------------------------------------------------------------
    def do_setup(self, context: Any) -> None:
        conf = self.configuration
        missing = [o for o in ("lab_array_name", "lab_array_url", "lab_array_token_file") if not conf.safe_get(o)]
        if missing:
            raise exception.InvalidConfigurationValue(option=", ".join(missing), value="(unset)")
        try:
            with open(conf.lab_array_token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise exception.InvalidConfigurationValue(option="lab_array_token_file", value=str(exc)) from exc
        self.array = self.adapter_class(conf.lab_array_name, conf.lab_array_url, token, timeout=conf.lab_array_timeout)

    def check_for_setup_error(self) -> None:
        caps = self._call("check the array", self._array.capabilities)
        if caps.name != self.configuration.lab_array_name:
            raise exception.VolumeBackendAPIException(
                data=f"{self.configuration.lab_array_url} is array {caps.name}, not {self.configuration.lab_array_name}"
            )

    @property
    def _array(self) -> ArrayApiBackend:
        if self.array is None:
            raise exception.VolumeBackendAPIException(data="driver not set up")
        return self.array

    def _call(self, what: str, func: Any, *args: Any, absent: str | None = None, **kwargs: Any) -> Any:
        """Call the array; a conflict becomes InvalidVolume (nothing changed), any other refusal
        VolumeBackendAPIException, each with the array's message. With ``absent``, a LUN the array does not have
        is what the caller expects: ``absent`` is logged and None returned."""
        try:
            return func(*args, **kwargs)
        except NotFound as exc:
            if absent is not None:
                LOG.info("array %s: %s", self._array.name, absent)
                return None
            error: BackendError = exc
        except Conflict as exc:
            raise exception.InvalidVolume(reason=f"{what}: {exc}") from exc
        except BackendError as exc:
            error = exc
        LOG.error("array %s could not %s: %s", self.configuration.lab_array_name, what, error)
        raise exception.VolumeBackendAPIException(data=f"{what}: {error}") from error

    # ---- LUN lifecycle -------------------------------------------------------------
    def create_volume(self, volume: Any) -> dict[str, Any]:
        pool = volume_utils.extract_host(volume.host, "pool")
        if not pool:
            raise exception.InvalidHost(reason=f"volume host {volume.host} names no pool")
        lun = self._call("create the LUN", self._array.create_lun, volume.name, volume.size * GiB, pool)
        return {"provider_location": lun["location"]}

    def delete_volume(self, volume: Any) -> None:
        try:
            self._array.unexport_lun(volume.name)
            self._array.delete_lun(volume.name)
        except NotFound:
            LOG.warning("LUN %s is not on array %s: nothing to delete", volume.name, self._array.name)
        except BackendError as exc:
            raise exception.VolumeBackendAPIException(data=f"delete the LUN: {exc}") from exc

    def extend_volume(self, volume: Any, new_size: int) -> None:
        self._call("extend the LUN", self._array.extend_lun, volume.name, new_size * GiB)

    # the lab arrays have no snapshots: creating one fails clearly, so none ever exists to delete
    def create_snapshot(self, snapshot: Any) -> None:
        raise exception.VolumeBackendAPIException(data=f"array {self._array.name} does not support snapshots")

    def delete_snapshot(self, snapshot: Any) -> None:
        LOG.info("snapshot %s was never created on array %s: nothing to delete", snapshot.id, self._array.name)

    # exports are made per connection, in initialize_connection
    def create_export(self, context: Any, volume: Any, connector: Any) -> None:
        return None

    def ensure_export(self, context: Any, volume: Any) -> None:
        return None

    def remove_export(self, context: Any, volume: Any) -> None:
        return None

    def initialize_connection(self, volume: Any, connector: Any) -> dict[str, Any]:
        initiator = (connector or {}).get(TAKEOVER_INITIATOR)
        if initiator:
            info = self._call("export the LUN for a takeover", self._array.export_for_takeover, volume.name, initiator)
        else:
            info = self._call("export the LUN", self._array.export_lun, volume.name)
        return {"driver_volume_type": "nbd", "data": {**info.to_json(), "array": self._array.name}}

    def terminate_connection(self, volume: Any, connector: Any, **kwargs: Any) -> None:
        if (connector or {}).get(TAKEOVER_INITIATOR):
            try:
                self._array.release_takeover(volume.name)
            except NotFound:
                LOG.info("LUN %s is not on array %s: no takeover export to release", volume.name, self._array.name)
            except BackendError as exc:
                raise exception.VolumeBackendAPIException(data=f"release the takeover export: {exc}") from exc
            return
        attachments = [a for a in (volume.volume_attachment or []) if a.attach_status != "detached"]
        if connector is not None and len(attachments) > 1:
            return  # another attachment still uses the export
        self._call("unexport the LUN", self._array.unexport_lun, volume.name)

    # ---- what the array holds (InventoryDriver) ------------------------------------------
    def held_volumes(self) -> list[HeldVolume]:
        luns = self._call("list the LUNs", self._array.list_luns)
        return [
            HeldVolume(lun["name"], int(lun.get("size") or 0), exported=bool(lun.get("exported")),
                       copying=bool(lun.get("copy")), lent_to=(lun.get("takeover_export") or {}).get("initiator"))
            for lun in luns
        ]  # fmt: skip

    def release_held(self, name: str, cleanup: Cleanup) -> str:
        array = self._array
        if cleanup is Cleanup.ABORT_TAKEOVER and not isinstance(array, ReferenceArrayBackend):
            raise exception.InvalidInput(reason=f"array {array.name} runs no takeovers: nothing to abort")
        try:
            if cleanup is Cleanup.ABORT_TAKEOVER:
                array.abort_migration_target(Volume(name, 0))  # type: ignore[attr-defined]  # checked above
                return f"takeover of {name} aborted on {array.name}: copy stopped, LUN deleted"
            if cleanup is Cleanup.RELEASE_EXPORT:
                array.release_takeover(name)
                return f"takeover export of {name} released on {array.name}"
            for step in (array.release_takeover, array.unexport_lun):  # an orphan's exports go with it
                with contextlib.suppress(NotFound):
                    step(name)
            array.delete_lun(name)
            return f"LUN {name} deleted from {array.name}"
        except NotFound:
            return f"LUN {name} was gone from {array.name} already"
        except BackendError as exc:
            raise exception.VolumeBackendAPIException(data=f"{cleanup} of {name}: {exc}") from exc

    # ---- stats ----------------------------------------------------------------------
    def _update_volume_stats(self) -> None:
        caps = self._call("read the capabilities", self._array.capabilities)
        backend_name = self.configuration.safe_get("volume_backend_name") or caps.name
        self._stats = {
            "volume_backend_name": backend_name,
            "vendor_name": "lab",
            "driver_version": self.VERSION,
            "storage_protocol": "nbd",
            "lab_array_name": caps.name,
            "lab_array_kind": caps.kind,
            ASYNC_TARGET_CAPABILITY: caps.takeover,
            ASYNC_TARGET_SOURCES: TAKEOVER_SOURCES if caps.takeover else [],
            "pools": [
                {
                    "pool_name": pool.name,
                    "total_capacity_gb": pool.total_bytes // GiB,
                    "free_capacity_gb": pool.free_bytes // GiB,
                    "provisioned_capacity_gb": pool.allocated_bytes // GiB,
                    "allocated_capacity_gb": pool.allocated_bytes // GiB,
                    "reserved_percentage": 0,
                    "thin_provisioning_support": True,
                    "thick_provisioning_support": False,
                    "max_over_subscription_ratio": 1.0,
                    "QoS_support": False,
                    "multiattach": False,
                    ASYNC_TARGET_CAPABILITY: caps.takeover,
                    ASYNC_TARGET_SOURCES: TAKEOVER_SOURCES if caps.takeover else [],
                }
                for pool in caps.pools
            ],
        }

    # ---- migration --------------------------------------------------------------
    def migrate_volume(self, context: Any, volume: Any, host: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Move between pools of this array (Cinder's driver-assisted migration).

        ``host`` is the scheduler's ``{"host": "host@backend#pool", "capabilities": {...}}``.
        Returns ``(False, None)`` for another array, so Cinder falls back to its own path.
        """
        same_backend = volume_utils.extract_host(host["host"], "backend") == volume_utils.extract_host(
            volume.host, "backend"
        )
        pool = volume_utils.extract_host(host["host"], "pool")
        if not same_backend or not pool:
            return False, None
        lun = Volume(volume.name, volume.size * GiB)
        dest = Destination(self._array.name, pool)
        moved, update = self._call("move the LUN", self._array.migrate_volume, lun, dest)
        return moved, ({"provider_location": update["provider_location"]} if moved and update else None)


class ReferenceArrayDriver(LabArrayDriver, AsyncMigrationTarget):
    """Cinder driver for the lab's reference arrays (alpha, beta): pool moves and takeovers."""

    adapter_class = ReferenceArrayBackend

    @property
    def _reference(self) -> ReferenceArrayBackend:
        return self._array  # type: ignore[return-value]

    @staticmethod
    def _lun(volume: Any) -> Volume:
        return Volume(volume.name, volume.size * GiB)

    def takeover_connector(self) -> dict[str, Any]:
        name = self._array.name
        return {"initiator": f"lab-array:{name}", "host": name, "multipath": False, TAKEOVER_INITIATOR: name}

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
        """Take over a LUN another lab array exports over NBD, or an RBD image (QEMU's rbd driver opens it on the
        monitors the connection names); any other source protocol: not moved."""
        data = source_connection.get("data") or {}
        kind = source_connection.get("driver_volume_type")
        pool = volume_utils.extract_host(host["host"], "pool")
        if kind == "nbd" and data.get("array"):
            source, source_array = ConnectionInfo.from_json(data).to_json(), data["array"]
        elif kind == "rbd" and "/" in str(data.get("name") or "") and data.get("hosts"):
            source, source_array = rbd_source(data), backend_name(volume.host)
        else:
            source, source_array = None, ""
        if source is None or not pool:
            LOG.info("array %s cannot take volume %s over from a %s connection", self._array.name, volume.id,
                     kind)  # fmt: skip
            return NOT_MOVED
        if source_array == self._array.name:
            return NOT_MOVED  # its own LUN: a pool move, which migrate_volume does
        moved, copying, update = self._call("take the LUN over", self._reference.take_over, self._lun(volume),
                                            lambda: source, source_array, pool=pool, speed_bps=speed_bps,
                                            mode=mode)  # fmt: skip
        return TargetResult(moved, copying, {"provider_location": (update or {}).get("provider_location")})

    def complete_migration_target(self, context: Any, volume: Any) -> MigrationProgress:
        return self._call("look at the copy", self._reference.complete_migration_target, self._lun(volume))

    def pause_migration_target(self, context: Any, volume: Any) -> MigrationProgress:
        return self._call("pause the copy", self._reference.pause_migration, self._lun(volume))

    def resume_migration_target(self, context: Any, volume: Any) -> MigrationProgress:
        return self._call("resume the copy", self._reference.resume_migration, self._lun(volume))

    def set_migration_target_speed(self, context: Any, volume: Any, speed_bps: int) -> MigrationProgress:
        return self._call(f"set the copy's speed to {speed_bps / MiB:.0f} MiB/s",
                          self._reference.set_migration_speed, self._lun(volume), speed_bps)  # fmt: skip

    def abort_migration_target(self, context: Any, volume: Any) -> None:
        try:
            self._reference.abort_migration_target(self._lun(volume))
        except NotFound:
            LOG.info("no takeover of %s on array %s: nothing to abort", volume.name, self._array.name)
        except BackendError as exc:
            raise exception.VolumeBackendAPIException(data=f"abort the takeover: {exc}") from exc

    def abandon_migration_target(self, context: Any, volume: Any) -> None:
        self._call("abandon the takeover", self._reference.abandon_migration_target, self._lun(volume),
                   absent=f"no LUN {volume.name}: the takeover was given up already")  # fmt: skip


def rbd_source(data: dict[str, Any]) -> dict[str, Any]:
    """A takeover's source (``ArrayApiBackend.take_over``) from an RBD connection (Cinder's RBD driver's
    ``initialize_connection`` data: ``name`` pool/image, the monitors' ``hosts`` and ``ports``, ``auth_username``)."""
    pool, image = str(data["name"]).split("/", 1)
    user = data.get("auth_username") if data.get("auth_enabled") else None
    return {"type": "rbd", "pool": pool, "image": image, "hosts": [str(h) for h in data["hosts"]],
            "ports": [int(p) for p in data.get("ports") or []], "user": user or ""}  # fmt: skip


def backend_name(host: str) -> str:
    """host@backend#pool -> backend: the name a takeover records its source by."""
    return (volume_utils.extract_host(host, "backend") or host).partition("@")[2]


class PlainArrayDriver(LabArrayDriver):
    """Cinder driver for the lab's plain array (gamma): no migration features."""

    adapter_class = PlainArrayBackend
