"""The flow's steps (include/migration/flow.py) against a scripted Cinder, the one boundary they call: the fake, the
fixtures and the helpers of ``test_flow_steps.py`` (validate_and_lock, steps 1 and 2) and ``test_flow_copy.py``
(the host copy, commit, rollback, abandon).

The real services are exercised in tests/integration/test_volume_migration.py;
here each refusal and safety rule is pinned down one by one, quickly. The host
copy's volumes are files, opened where ``flow.open_volume`` would open Cinder's
connections.
"""

from __future__ import annotations

import contextlib
import random
import types
import uuid
from typing import Any

import pytest

from include.backends.base import MiB
from include.block_devices import FileDevice
from include.cinder_plugin.names import ALIAS, MANAGER_CAPABILITY, MANAGER_VERSION, SourceStep, TargetStep
from include.migration import flow, validation
from include.migration.errors import CinderError
from tests.unit.fake_clock import Clock

VID = str(uuid.uuid4())
LUN = f"volume-{VID}"
CONNECTOR = {"host": "worker-1", "do_local_attach": False}


def _next(script: list[str]) -> str:
    """A scripted answer: each look reads the next one, the last one stays."""
    return script.pop(0) if len(script) > 1 else script[0]


def lab_pool(takes_over: bool = True) -> dict[str, Any]:
    """A lab array's pool as Cinder's scheduler reports it (NBD exports; alpha and beta take volumes over)."""
    caps = {"storage_protocol": "nbd", "free_capacity_gb": 40.0, "thin_provisioning_support": False,
            MANAGER_CAPABILITY: MANAGER_VERSION}  # fmt: skip
    return {**caps, "async_migration_target": True} if takes_over else caps


class ScriptedCinder:
    """The CinderApi calls the flow makes, over one volume held in memory."""

    def __init__(self, host: str = "lab@beta#pool1", **volume: Any) -> None:
        self.volume = {"id": VID, "size": 1, "status": "available", "migration_status": None}
        self.volume.update({"os-vol-host-attr:host": host, **volume})
        self.services = {"lab@alpha": "up", "lab@beta": "up", "lab@gamma": "up"}
        self.pools = {"lab@alpha#pool1": lab_pool(), "lab@alpha#pool2": lab_pool(), "lab@beta#pool1": lab_pool(),
                      "lab@gamma#pool1": lab_pool(takes_over=False)}  # fmt: skip
        self.extensions = {ALIAS}  # the API extensions Cinder loaded
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.lock: dict[str, Any] = {}
        self.types: dict[str, dict[str, str]] = {"beta-only": {"volume_backend_name": "beta"}, "any": {},
                                                 "alpha-only": {"volume_backend_name": "alpha"}}  # fmt: skip
        # step 1 in the source's cinder-volume: while it runs, each look reads the next outcome (the last one stays)
        self.source_steps: list[str] = [SourceStep.NOT_MOVED]
        self.source_step: str | None = None
        # step 2 in the destination's cinder-volume, the same way; then its copy, and what abandon answers
        self.target_steps: list[str] = [TargetStep.ATTACHABLE]
        self.target_step: str | None = None
        self.copy_done = False
        self.abandon_refusal: str | None = None
        # a host copy's destination volume (made again once in error): each look reads its next status
        self.copy_statuses: list[str] = ["available"]
        self.copy_status: str | None = None
        self.copy_target_id: str | None = None
        self.copy_deleted = False  # by a failed migration's fail
        self.made = 0
        self.copied: str | None = None  # the destination volume recorded as holding the whole copy
        self.refuse_disconnect = False

    def target_migrate(self, volume_id: str, owner: str | None = None, **args: Any) -> dict[str, Any]:
        self.calls.append(("target_migrate again" if args.get("again") else "target_migrate", (owner,)))
        if self.target_step not in (TargetStep.RUNNING, TargetStep.ATTACHABLE, TargetStep.MOVED):
            self.target_step = TargetStep.RUNNING
        return {"target_step": self.target_step}

    def source_migrate(self, volume_id: str, owner: str | None = None) -> dict[str, Any]:
        self.calls.append(("source_migrate", (owner,)))
        if self.source_step not in (SourceStep.RUNNING, SourceStep.MOVED):
            self.source_step = SourceStep.RUNNING
        return {"source_step": self.source_step}

    def migration(self, volume_id: str) -> dict[str, Any]:
        if self.source_step == SourceStep.RUNNING:
            self.source_step = _next(self.source_steps)
            if self.source_step == SourceStep.MOVED:  # cinder-volume put it on the destination
                self.volume["os-vol-host-attr:host"] = self.lock["host"]
        if self.target_step == TargetStep.RUNNING:
            self.target_step = _next(self.target_steps)
            if self.target_step == TargetStep.ATTACHABLE:  # cinder-volume put it on the destination, attachable
                self.mark_attachable(volume_id, self.lock["host"])
        return {"source_step": self.source_step, "target_step": self.target_step,
                "migration_status": self.volume["migration_status"], "copy_target": self.copy_target_id}  # fmt: skip

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        if volume_id == self.copy_target_id and self.copy_deleted:
            raise CinderError(f"GET /volumes/{volume_id}: HTTP 404", 404)
        if volume_id == self.copy_target_id:
            self.copy_status = _next(self.copy_statuses)
            return {"id": volume_id, "status": self.copy_status, "os-vol-host-attr:host": self.lock["host"]}
        if volume_id != VID:
            raise CinderError(f"GET /volumes/{volume_id}: HTTP 404", 404)
        return dict(self.volume)

    def extension_aliases(self) -> set[str]:
        return set(self.extensions)

    def pool_details(self) -> list[dict[str, Any]]:
        return [{"name": name, "capabilities": dict(caps)} for name, caps in self.pools.items()]

    def volume_services(self) -> list[dict[str, Any]]:
        return [{"host": h, "status": "enabled", "state": s, "updated_at": "now"} for h, s in self.services.items()]

    def get_volume_type(self, name_or_id: str) -> dict[str, Any]:
        if name_or_id in self.types:
            return {"id": f"id-{name_or_id}", "name": name_or_id, "extra_specs": self.types[name_or_id]}
        raise CinderError(f"volume type {name_or_id} does not exist", 404)

    def begin_migration(self, volume_id: str, host: str, owner: str | None = None,
                        deadline: int | None = None) -> dict[str, Any]:  # fmt: skip
        self.calls.append(("begin", (host, owner)))
        if self.lock and self.lock["owner"] != owner:
            raise CinderError(f"volume {volume_id} cannot be migrated: it is already migrating", 400)
        if not self.lock:  # the deadline is kept with the lock, as the first begin gave it
            self.lock = {"source_host": self.volume["os-vol-host-attr:host"], "host": host, "owner": owner,
                         "deadline": deadline}  # fmt: skip
            self.volume.update(status="maintenance", migration_status="starting")
        return {**self.lock, "migration_status": self.volume["migration_status"]}

    def mark_attachable(self, volume_id: str, host: str, provider_location: str | None = None) -> None:
        self.calls.append(("attachable", (host,)))
        self.volume.update({"status": "available", "migration_status": "migrating_attachable"})
        self.volume["os-vol-host-attr:host"] = host

    def copy_target(self, volume_id: str, owner: str | None = None, volume_type_id: Any = None) -> dict[str, Any]:
        self.calls.append(("copy_target", (owner, volume_type_id)))
        if self.copy_target_id is None or self.copy_status == "error":  # made (again) on the lock's pool
            self.made += 1
            self.copy_target_id, self.copied, self.copy_deleted = f"copy-{self.made}", None, False
        self.copy_status = _next(self.copy_statuses)
        return {"volume_id": self.copy_target_id, "status": self.copy_status, "host": self.lock["host"]}

    def copy_connect(self, volume_id: str, which: str, connector: dict[str, Any], owner: Any = None) -> dict[str, Any]:
        self.calls.append(("copy_connect", (which, connector["host"], owner)))
        return {"driver_volume_type": "file", "data": {"volume": VID if which == "source" else self.copy_target_id}}

    def copy_disconnect(self, volume_id: str, owner: str | None = None, copied: bool = False) -> None:
        self.calls.append(("copy_disconnect", (owner, copied)))
        if self.refuse_disconnect:
            raise CinderError("HTTP 409: could not close the copy's connections", 409)
        if copied:
            self.copied = self.copy_target_id

    def finish_migration(self, volume_id: str, host: Any = None, location: Any = None, type_id: Any = None) -> None:
        if self.target_step == TargetStep.ATTACHABLE and not self.copy_done:
            raise CinderError("HTTP 409: not finished: the copy on lab@alpha is copying; the source is kept", 409)
        moved = self.source_step == SourceStep.MOVED or self.target_step in (TargetStep.ATTACHABLE, TargetStep.MOVED)
        if not moved and (self.copied is None or self.copied != self.copy_target_id):
            into = self.copy_target_id or "no destination volume"
            raise CinderError(f"HTTP 409: the host copy into {into} is not recorded complete; the source is kept", 409)
        self.calls.append(("finish", (host,)))
        self.volume.update({"status": "available", "migration_status": "success", "os-vol-host-attr:host": host})

    def fail_migration(self, volume_id: str, reason: str, owner: str | None = None) -> None:
        self.calls.append(("fail", (reason, owner)))
        # Cinder deletes the destination volume of a host copy, unless it is still being created
        self.copy_deleted = self.copy_target_id is not None and self.copy_status in ("available", "error")
        self.volume.update({"status": "available", "migration_status": "error"})

    def abandon_migration(self, volume_id: str, reason: str, owner: Any = None, location: Any = None) -> None:
        if self.abandon_refusal:
            raise CinderError(f"HTTP 409: not abandoned, nothing changed: {self.abandon_refusal}", 409)
        self.calls.append(("abandon", (reason, owner, location)))
        self.volume.update({"migration_status": "error", "os-vol-host-attr:host": self.lock["source_host"]})

    def called(self, name: str) -> bool:
        return any(c[0] == name for c in self.calls)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1] for c in self.calls if c[0] == name]


@pytest.fixture(autouse=True)
def this_host(monkeypatch):
    """What this host cannot open, by connection type (flow's ``unattachable``): NBD and RBD open, nothing else."""
    why = {"nbd": None, "rbd": None}
    monkeypatch.setattr(flow, "unattachable", lambda kind: why.get(kind, f"no {kind} initiator on this host"))
    return why


@pytest.fixture
def disks(tmp_path, monkeypatch):
    """The host copy's volumes as files named after their volume ids (``flow.open_volume`` opens them): a 3 MiB
    source with a zero MiB in the middle; a destination volume Cinder just made reads as zeros."""
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    data = random.Random(7).randbytes(MiB) + bytes(MiB) + random.Random(8).randbytes(MiB)
    (volumes / VID).write_bytes(data)
    opened: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def open_volume(info, name, *, writable=True):
        path = volumes / info["data"]["volume"]
        if not path.exists():
            path.write_bytes(bytes(len(data)))
        device = FileDevice(str(path), name, writable=writable)
        opened.append((name, writable))
        try:
            yield device
        finally:
            device.close()

    monkeypatch.setattr(flow, "open_volume", open_volume)
    return types.SimpleNamespace(volumes=volumes, data=data, opened=opened, state=tmp_path / "state")


def validate(cinder, **conf):
    conf = {"volume_id": VID, "dest_host": "lab@alpha#pool1", **conf}
    return validation.validate_and_lock(conf, "run-1", cinder)


def step_one(plan, cinder, clock=None):
    clock = clock or Clock()
    return flow.source_driver_migrate(plan, cinder, poll_s=1.0, clock=clock, sleep=clock.sleep)


def step_two(plan, cinder, clock=None):
    clock = clock or Clock()
    return flow.target_takeover(plan, cinder, poll_s=1.0, clock=clock, sleep=clock.sleep)


def ceph_volume(**conf):
    """A volume on Ceph behind Cinder's RBD driver (its pools report ``ceph`` and take nothing over)."""
    cinder = ScriptedCinder(host="lab@ceph-hdd#ceph-hdd")
    cinder.services["lab@ceph-ssd"] = cinder.services["lab@ceph-hdd"] = "up"
    for pool in ("lab@ceph-hdd#ceph-hdd", "lab@ceph-ssd#ceph-ssd"):
        cinder.pools[pool] = {"storage_protocol": "ceph", "free_capacity_gb": 100.0, "thin_provisioning_support": True,
                              MANAGER_CAPABILITY: MANAGER_VERSION}  # fmt: skip
    return cinder, {"dest_host": "lab@ceph-ssd#ceph-ssd", **conf}


def copy(plan, cinder, disks, clock=None, **kwargs):
    clock = clock or Clock()
    return flow.host_copy(plan, cinder, disks.state, connector=CONNECTOR, poll_s=1.0, clock=clock, sleep=clock.sleep,
                          **kwargs)  # fmt: skip


def attachable(cinder):
    plan = validate(cinder)
    step_two(plan, cinder)
    return plan
