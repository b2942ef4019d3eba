"""Open a Cinder volume on this host from the connection info its driver gave: os-brick's connectors, plus NBD.

The host copy asks Cinder for a connection to each volume with this host's
connector (``worker_connector``) and opens it here (``open_volume``), as
Cinder's own generic migration does in cinder-volume:

* ``rbd``: os-brick's RBD connector without a local attach (librbd in user
  space: no kernel module, no root), giving a file object over the image;
  the copy uses its librbd image;
* ``nbd``: the project's own connector (os-brick has none), registered in
  ``CONNECTORS`` beside os-brick's: the lab arrays' exports, through libnbd.
  cinder-volume uses it too, for Cinder's own generic copy
  (``cinder_plugin.manager.AsyncMigrationManager._connect_device``): there the
  volume is a file object (``cinder_attach``), as os-brick's RBD handle is;
* any other protocol os-brick knows (``iscsi``, ``fibre_channel``,
  ``nvmeof``...): its connector attaches a device node, which is read and
  written as a file. That needs the initiator on this host and root
  (os-brick's privsep); ``unattachable`` says what is missing before a
  migration is locked. It cannot be tried on the lab's kernel (no iSCSI,
  FC or NVMe modules).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from include.block_devices import BlockDevice, DeviceError, DeviceFile, FileDevice, NbdDevice, RbdDevice

# a pool's storage_protocol (as Cinder's scheduler reports it) -> the driver_volume_type of its connections
CONNECTION_TYPE = {"ceph": "rbd", "rbd": "rbd", "nbd": "nbd", "iscsi": "iscsi", "fc": "fibre_channel",
                   "fibre_channel": "fibre_channel", "nvmeof": "nvmeof", "nvme-tcp": "nvmeof",
                   "nvme-rdma": "nvmeof", "nvme-fc": "nvmeof"}  # fmt: skip


def connection_type(storage_protocol: str) -> str:
    """The connection type (os-brick's protocol, lower case) of a pool's reported ``storage_protocol``."""
    key = (storage_protocol or "").strip().lower().replace(" ", "_")
    return CONNECTION_TYPE.get(key, key)


def takes_over(takeover: bool, sources: Iterable[str], source_protocol: str) -> bool:
    """A destination pool that offers takeovers (``takeover``, for the connection types ``sources``; none named:
    any) takes over a volume whose pool speaks ``source_protocol``."""
    named = {connection_type(s) for s in sources}
    return takeover and (not named or connection_type(source_protocol) in named)


class NbdConnector:
    """The project's connector for ``driver_volume_type: nbd`` (an export ``nbd://host:port/export``); it has
    nothing to attach: libnbd connects in user space when the volume is opened."""

    @staticmethod
    def connect_volume(props: dict[str, Any]) -> dict[str, Any]:
        uri = props.get("uri") or f"nbd://{props['host']}:{props['port']}/{props['export']}"
        return {"type": "nbd", "path": uri}

    @staticmethod
    def disconnect_volume(props: dict[str, Any], device_info: dict[str, Any], force: bool = False,
                          ignore_errors: bool = False) -> None:  # fmt: skip
        """Close the file object ``cinder_attach`` opened, if any (libnbd's connection goes with it)."""
        handle = device_info.get("path")
        if isinstance(handle, DeviceFile):
            handle.close()


CONNECTORS: dict[str, Any] = {"nbd": NbdConnector}  # ours, asked before os-brick's


def cinder_attach(connection_info: dict[str, Any]) -> dict[str, Any] | None:
    """For Cinder's own copy in cinder-volume: an NBD connection opened as Cinder's attach info
    (``{"conn", "device", "connector"}``), the device's ``path`` a ``DeviceFile`` over the volume, closed by the
    connector's ``disconnect_volume``; None for a kind os-brick connects."""
    if str(connection_info.get("driver_volume_type", "")).lower() != "nbd":
        return None
    device = NbdConnector.connect_volume(dict(connection_info.get("data") or {}))
    device["path"] = DeviceFile(NbdDevice(device["path"]))
    return {"conn": connection_info, "device": device, "connector": NbdConnector}


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def unattachable(kind: str) -> str | None:
    """Why this host cannot open a volume whose connections are ``kind`` (a connection type), or None."""
    if kind == "nbd":
        return None if _has_module("nbd") else "libnbd's Python binding (Debian's python3-libnbd) is missing"
    if not _has_module("os_brick"):
        return "os-brick is not installed"
    if kind == "rbd":
        missing = [m for m in ("rados", "rbd") if not _has_module(m)]
        return f"librbd's Python bindings are missing ({', '.join(missing)})" if missing else None
    if os.geteuid() != 0:
        return f"a {kind} attachment needs root (os-brick's privsep) on this host"
    tools = {"iscsi": "iscsiadm", "nvmeof": "nvme"}
    if kind in tools and shutil.which(tools[kind]) is None:
        return f"the {kind} initiator ({tools[kind]}) is not installed on this host"
    if kind == "fibre_channel" and not (os.path.isdir("/sys/class/fc_host") and os.listdir("/sys/class/fc_host")):
        return "this host has no Fibre Channel HBA"
    if kind not in ("iscsi", "nvmeof", "fibre_channel"):
        return f"no connector for {kind} connections is known here"
    return None


def worker_connector() -> dict[str, Any]:
    """This host as a Cinder connector: who opens the volumes of a host copy (``do_local_attach`` false: an RBD
    volume is opened through librbd, not mapped)."""
    return {"host": socket.gethostname(), "ip": "127.0.0.1", "platform": platform.machine(), "os_type": "linux",
            "multipath": False, "do_local_attach": False}  # fmt: skip


def _connector(kind: str) -> Any:
    if kind in CONNECTORS:
        return CONNECTORS[kind]
    why = unattachable(kind)
    if why:
        raise DeviceError(f"cannot open a {kind} volume here: {why}")
    from os_brick.initiator import connector  # imported only when needed: it brings eventlet and oslo

    return connector.InitiatorConnector.factory(kind.upper(), "sudo", do_local_attach=False)


@contextlib.contextmanager
def open_volume(connection_info: dict[str, Any], name: str, *, writable: bool = True) -> Iterator[BlockDevice]:
    """The volume that ``connection_info`` (Cinder's answer to a connection request) describes, opened on this
    host as a ``BlockDevice`` named ``name``; closed and disconnected on the way out. DeviceError when it cannot
    be opened (nothing stays attached)."""
    kind = str(connection_info.get("driver_volume_type", "")).lower()
    props = dict(connection_info.get("data") or {})
    connector = _connector(kind)
    try:
        device_info = connector.connect_volume(props)
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"{name}: os-brick could not connect the {kind} volume: {exc}") from exc
    try:
        path = device_info.get("path")
        if kind == "nbd":
            device: BlockDevice = NbdDevice(path, name)
        elif kind == "rbd":
            device = RbdDevice(path.rbd_image, name)
        else:
            device = FileDevice(path, name, writable=writable)
        try:
            yield device
        finally:
            device.close()
    finally:
        connector.disconnect_volume(props, device_info, force=True)
