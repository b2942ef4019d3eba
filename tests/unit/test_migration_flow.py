"""The flow's steps (include/migration/flow.py) against a scripted Cinder, the one boundary they call.

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

from include.backends.base import MiB, MigrationState
from include.block_devices import FileDevice
from include.cinder_plugin.names import SourceStep, TargetStep
from include.migration import flow, validation
from include.migration.errors import CinderError, InvalidParams, MigrationFailed, MigrationRefused
from tests.unit.fake_clock import Clock

VID = str(uuid.uuid4())
LUN = f"volume-{VID}"
CONNECTOR = {"host": "worker-1", "do_local_attach": False}


def _next(script: list[str]) -> str:
    """A scripted answer: each look reads the next one, the last one stays."""
    return script.pop(0) if len(script) > 1 else script[0]


def lab_pool(takes_over: bool = True) -> dict[str, Any]:
    """A lab array's pool as Cinder's scheduler reports it (NBD exports; alpha and beta take volumes over)."""
    caps = {"storage_protocol": "nbd", "free_capacity_gb": 40.0, "thin_provisioning_support": False}
    return {**caps, "async_migration_target": True} if takes_over else caps


class ScriptedCinder:
    """The CinderApi calls the flow makes, over one volume held in memory."""

    def __init__(self, host: str = "lab@beta#pool1", **volume: Any) -> None:
        self.volume = {"id": VID, "size": 1, "status": "available", "migration_status": None}
        self.volume.update({"os-vol-host-attr:host": host, **volume})
        self.services = {"lab@alpha": "up", "lab@beta": "up", "lab@gamma": "up"}
        self.pools = {"lab@alpha#pool1": lab_pool(), "lab@alpha#pool2": lab_pool(), "lab@beta#pool1": lab_pool(),
                      "lab@gamma#pool1": lab_pool(takes_over=False)}  # fmt: skip
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.lock: dict[str, Any] = {}
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

    def pool_details(self) -> list[dict[str, Any]]:
        return [{"name": name, "capabilities": dict(caps)} for name, caps in self.pools.items()]

    def volume_services(self) -> list[dict[str, Any]]:
        return [{"host": h, "status": "enabled", "state": s, "updated_at": "now"} for h, s in self.services.items()]

    def get_volume_type(self, name_or_id: str) -> dict[str, Any]:
        raise CinderError(f"volume type {name_or_id} does not exist", 404)

    def begin_migration(self, volume_id: str, host: str, owner: str | None = None) -> dict[str, Any]:
        self.calls.append(("begin", (host, owner)))
        if self.lock and self.lock["owner"] != owner:
            raise CinderError(f"volume {volume_id} cannot be migrated: it is already migrating", 400)
        if not self.lock:
            self.lock = {"source_host": self.volume["os-vol-host-attr:host"], "host": host, "owner": owner}
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


# ---- validate_and_lock -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "conf", "message"),
    [
        (lambda c, h: None, {"volume_id": str(uuid.uuid4())}, "does not exist"),
        (lambda c, h: None, {"dest_host": "lab@beta#pool1"}, "already on lab@beta#pool1"),
        (lambda c, h: None, {"dest_host": "lab@delta#pool1"}, "no volume service lab@delta"),
        (lambda c, h: c.services.update({"lab@alpha": "down"}), {}, "lab@alpha is enabled and down"),
        (lambda c, h: None, {"dest_host": "lab@alpha#pool7"}, "not a pool Cinder knows"),
        (lambda c, h: c.pools["lab@alpha#pool1"].update(free_capacity_gb=0.5), {},
         "pool lab@alpha#pool1 has 0.5 GiB free, the volume needs 1 GiB"),
        (lambda c, h: h.update(nbd="libnbd's Python binding is missing"), {"force_host_copy": True},
         "source pool's protocol nbd cannot be opened here: libnbd's .*; the destination pool's protocol nbd"),
        (lambda c, h: None, {"new_type": "gold"}, "volume type gold does not exist"),
        (lambda c, h: c.lock.update(owner="run-0", host="x", source_host="y"), {}, "already migrating"),
    ],
)  # fmt: skip
def test_validate_refuses_with_one_clear_message_before_any_change(this_host, setup, conf, message):
    cinder = ScriptedCinder()
    setup(cinder, this_host)
    locked_before = bool(cinder.lock)
    with pytest.raises(MigrationRefused, match=message):
        validate(cinder, **conf)
    assert cinder.volume["status"] == "available"
    if not locked_before:
        assert not cinder.called("begin") or "already" in message


def test_validate_refuses_bad_params_before_asking_cinder():
    cinder = ScriptedCinder()
    with pytest.raises(InvalidParams, match="volume_id must be a volume UUID.*dest_host must look like"):
        validation.validate_and_lock({"volume_id": "x", "dest_host": "y"}, "run-1", cinder)
    assert cinder.calls == []


def test_validate_locks_once_and_a_retry_by_the_same_run_gets_the_same_plan():
    cinder = ScriptedCinder()
    cinder.pools["lab@alpha#pool1"].update(free_capacity_gb=0.5, thin_provisioning_support=True)  # thin: not refused
    plan = validate(cinder, speed_mib=20)
    assert (plan.source_host, plan.dest_host, plan.lun, plan.size, plan.path) == (
        "lab@beta#pool1", "lab@alpha#pool1", LUN, 1 << 30, "source_driver_migrate")  # fmt: skip
    assert plan.speed_bps == 20 << 20 and cinder.volume["migration_status"] == "starting"
    assert validate(cinder, speed_mib=20) == plan
    assert flow.Plan.from_json(plan.to_json()) == plan


def test_a_cleared_run_takes_its_own_lock_back_though_its_destination_volume_took_the_free_space():
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    assert plan.path == "host_copy"
    cinder.copy_target(VID, "run-1")  # host_copy had begun
    cinder.pools["lab@alpha#pool1"]["free_capacity_gb"] = 0
    assert validate(cinder, force_host_copy=True) == plan
    with pytest.raises(MigrationRefused, match="already migrating"):
        validation.validate_and_lock({"volume_id": VID, "dest_host": "lab@alpha#pool1"}, "run-2", cinder)


def test_rerun_after_the_volume_became_attachable_resumes_from_the_lock():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.mark_attachable(VID, plan.dest_host)
    again = validate(cinder)  # Cinder's host is the destination now; the lock says where it came from
    assert again.source_host == "lab@beta#pool1" and again == plan


# ---- source_driver_migrate (step 1, in the source's cinder-volume) -------------------------------
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
        cinder.pools[pool] = {"storage_protocol": "ceph", "free_capacity_gb": 100.0, "thin_provisioning_support": True}
    return cinder, {"dest_host": "lab@ceph-ssd#ceph-ssd", **conf}


def test_step_one_waits_for_the_source_driver_and_a_moved_volume_commits_through_cinder_alone():
    cinder, conf = ceph_volume()
    plan = validate(cinder, **conf)
    assert (plan.path, cinder.volume["migration_status"]) == ("source_driver_migrate", "starting")
    cinder.source_steps = [SourceStep.RUNNING, SourceStep.RUNNING, SourceStep.MOVED]
    assert step_one(plan, cinder) == {"moved": True, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == "lab@ceph-ssd#ceph-ssd"
    assert validate(cinder, **conf) == plan  # a cleared run: still its lock, now on the destination
    assert step_one(plan, cinder)["moved"]  # asked again: the same outcome, nothing started
    assert cinder.named("source_migrate") == [("run-1",)] * 2
    assert "not rolled back: the source driver moved" in flow.rollback(plan, cinder, "x")
    flow.commit(plan, cinder)
    assert cinder.calls[-1] == ("finish", ("lab@ceph-ssd#ceph-ssd",)) and cinder.volume["migration_status"] == "success"
    assert not cinder.called("fail") and not cinder.called("copy_target")


def test_a_source_driver_that_cannot_move_it_hands_over_to_the_target_and_one_that_fails_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == plan.source_host
    cinder.source_step, cinder.source_steps = None, ["failed: VolumeBackendAPIException: pool full"]
    with pytest.raises(MigrationFailed, match="source driver of beta did not move the volume: failed: Volume.*full"):
        step_one(plan, cinder)


def test_a_cleared_run_whose_volume_is_attachable_already_does_not_ask_step_one_again():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    step_two(plan, cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert not cinder.called("source_migrate")


@pytest.mark.parametrize(
    ("steps", "ask", "message"),
    [("source_steps", step_one, "source step toward lab@alpha#pool1 has not answered within copy_timeout_s=90"),
     ("target_steps", step_two, "target step toward lab@alpha#pool1 has not answered within copy_timeout_s=90")],
    ids=["step-one", "step-two"],
)  # fmt: skip
def test_a_driver_step_is_given_up_after_the_copy_timeout(steps, ask, message):
    cinder = ScriptedCinder()
    plan = validate(cinder, copy_timeout_s=90)
    setattr(cinder, steps, [SourceStep.RUNNING])
    if ask is step_two:  # step one answers "not moved" first
        step_one(plan, cinder)
    clock = Clock()
    with pytest.raises(MigrationFailed, match=message):
        ask(plan, cinder, clock)
    assert 90 <= clock.now <= 91


def test_a_protocol_this_host_cannot_open_refuses_before_the_lock_only_when_a_host_copy_would_be_needed(this_host):
    this_host["rbd"] = "librbd's Python bindings are missing (rados, rbd)"
    cinder, conf = ceph_volume(dest_host="lab@gamma#pool1")  # other protocols, gamma takes nothing over
    with pytest.raises(MigrationRefused, match="lab@gamma#pool1: the source pool's protocol ceph cannot be .*librbd"):
        validate(cinder, **conf)
    assert not cinder.called("begin")
    cinder, conf = ceph_volume(force_host_copy=True)
    with pytest.raises(MigrationRefused, match="source pool's protocol ceph .*; the destination pool's protocol ceph"):
        validate(cinder, **conf)
    assert not cinder.called("begin")
    for dest in ("lab@alpha#pool1", "lab@ceph-ssd#ceph-ssd"):  # alpha takes it over; RBD's driver may move it
        cinder, conf = ceph_volume(dest_host=dest)
        assert validate(cinder, **conf).path == "source_driver_migrate" and cinder.named("begin") == [(dest, "run-1")]
    this_host["rbd"] = None
    cinder, conf = ceph_volume(dest_host="lab@gamma#pool1")
    assert validate(cinder, **conf).dest_host == "lab@gamma#pool1" and cinder.called("begin")


def test_when_the_ceph_driver_cannot_move_it_and_rbd_cannot_be_opened_the_rollback_only_unlocks(this_host, disks):
    cinder, conf = ceph_volume()
    plan = validate(cinder, **conf)
    assert not step_one(plan, cinder)["moved"]
    cinder.target_steps = [TargetStep.NOT_MOVED]  # Cinder's RBD driver takes nothing over
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    this_host["rbd"] = "librbd's Python bindings are missing (rados)"
    with pytest.raises(MigrationRefused, match="no host copy .*source pool's protocol ceph .*missing \\(rados\\)"):
        copy(plan, cinder, disks)
    assert not cinder.called("copy_target") and not cinder.called("copy_connect") and not disks.state.exists()
    assert flow.rollback(plan, cinder, "host_copy: refused") == "rolled back: migration_status error"
    assert cinder.volume["migration_status"] == "error"


# ---- target_takeover (step 2, in the destination's cinder-volume) -------------------------------
def test_an_async_takeover_leaves_the_volume_attachable_before_it_returns_and_a_retry_reads_the_same():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.RUNNING, TargetStep.RUNNING, TargetStep.ATTACHABLE]
    first = step_two(plan, cinder)
    assert first == {"moved": True, "async": True, "model_update": None}
    assert cinder.volume["migration_status"] == "migrating_attachable"
    assert cinder.volume["os-vol-host-attr:host"] == "lab@alpha#pool1"
    assert step_two(plan, cinder) == first  # a retry after a dead worker: the same answer, nothing started
    assert cinder.named("target_migrate") == [("run-1",)] * 2
    assert cinder.named("attachable") == [("lab@alpha#pool1",)]


def test_a_target_that_cannot_take_over_leaves_the_volume_locked_on_its_source_and_one_that_fails_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.NOT_MOVED]
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("starting", plan.source_host)
    cinder.target_step, cinder.target_steps = None, ["failed: VolumeBackendAPIException: take the LUN over: full"]
    with pytest.raises(MigrationFailed, match="target driver of alpha did not take the volume over: failed: .*full"):
        step_two(plan, cinder)
    assert not cinder.called("attachable")


def test_a_step_two_that_runs_long_is_asked_again_once_a_minute_and_its_outcome_read():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.RUNNING] * 130 + [TargetStep.ATTACHABLE]  # a look a second: over two minutes
    clock = Clock()
    assert step_two(plan, cinder, clock)["async"]
    assert [c[0] for c in cinder.calls if c[0].startswith("target_migrate")] == [
        "target_migrate", "target_migrate again", "target_migrate again"]  # fmt: skip
    assert 120 <= clock.now <= 140


# ---- host_copy (the generic path: Cinder's destination volume, copied on this host) -------------------
def copy(plan, cinder, disks, clock=None, **kwargs):
    clock = clock or Clock()
    return flow.host_copy(plan, cinder, disks.state, connector=CONNECTOR, poll_s=1.0, clock=clock, sleep=clock.sleep,
                          **kwargs)  # fmt: skip


def test_host_copy_waits_for_cinders_destination_volume_copies_it_and_records_it_copied(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = ["creating", "creating", "available"]
    clock, seen = Clock(), []
    assert copy(plan, cinder, disks, clock, progress=seen.append) == {"bytes_copied": 2 * MiB, "copy_target": "copy-1"}
    assert clock.now == 2  # two looks at the destination volume a second apart
    assert (disks.volumes / "copy-1").read_bytes() == disks.data
    assert [c[0] for c in cinder.calls if c[0].startswith("copy")] == [
        "copy_target", "copy_connect", "copy_connect", "copy_disconnect"]  # fmt: skip
    assert cinder.named("copy_target") == [("run-1", None)]
    assert cinder.named("copy_connect") == [("source", "worker-1", "run-1"), ("target", "worker-1", "run-1")]
    assert cinder.named("copy_disconnect") == [("run-1", True)] and cinder.copied == "copy-1"
    assert disks.opened == [(f"volume {VID} on lab@beta#pool1", False), ("volume copy-1 on lab@alpha#pool1", True)]
    assert seen[-1].state == MigrationState.DONE


def test_a_copy_that_fails_closes_the_connections_without_recording_it_copied(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    (disks.volumes / "copy-1").write_bytes(bytes(MiB))  # not the source's size
    cinder.refuse_disconnect = True  # and closing them fails too: the copy's error is the one raised
    with pytest.raises(ValueError, match="smaller than the source's"):
        copy(plan, cinder, disks)
    assert cinder.named("copy_disconnect") == [("run-1", False)] and cinder.copied is None
    with pytest.raises(MigrationFailed, match="not committed, the source is kept: .*copy-1 is not recorded complete"):
        flow.commit(plan, cinder)
    assert not cinder.called("finish") and cinder.volume["migration_status"] == "starting"


@pytest.mark.parametrize(
    ("statuses", "message", "waited"),
    [(["creating", "error"], "could not create the destination volume copy-1 on lab@alpha#pool1", 1),
     (["creating"], "destination volume copy-1 on lab@alpha#pool1 is still creating after 300 s", 300)],
    ids=["error", "timeout"],
)  # fmt: skip
def test_a_destination_volume_not_made_fails_the_copy_and_rollback_says_what_became_of_it(
    disks, statuses, message, waited
):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = statuses
    clock = Clock()
    with pytest.raises(MigrationFailed, match=message):
        copy(plan, cinder, disks, clock)
    assert clock.now == waited and not cinder.called("copy_connect") and not cinder.called("copy_disconnect")
    done = flow.rollback(plan, cinder, "host_copy: no destination volume")
    assert done.startswith("rolled back: migration_status error, the host copy's destination volume copy-1 ")
    if "error" in statuses:
        assert done.endswith("copy-1 deleted by Cinder")
    else:  # one still being created is left by Cinder, and the answer says so
        assert done.endswith("copy-1 is creating, not deleted: delete it once it settles (the audit names it)")
    assert cinder.named("fail") == [("host_copy: no destination volume", "run-1")]


def test_a_destination_volume_made_again_drops_the_checkpoint_of_the_one_before(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    cinder.copy_statuses = ["error"]
    with pytest.raises(MigrationFailed):
        copy(plan, cinder, disks)
    disks.state.mkdir()
    old, other = flow.checkpoint_path(disks.state, plan, "copy-1"), disks.state / "volume-other.0123.checkpoint"
    for path in (old, other):  # an interrupted copy into copy-1; another volume's copy
        path.write_text("{}")
    cinder.copy_statuses = ["available"]  # the retry: Cinder makes copy-2
    assert copy(plan, cinder, disks)["copy_target"] == "copy-2"
    assert not old.exists() and other.exists()
    assert not flow.checkpoint_path(disks.state, plan, "copy-2").exists()  # a finished copy leaves none
    assert (disks.volumes / "copy-2").read_bytes() == disks.data and cinder.copied == "copy-2"


# ---- commit and rollback ------------------------------------------------------------------------
def test_commit_of_a_takeover_is_cinders_finish_which_keeps_the_source_until_the_copy_is_complete():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    step_two(plan, cinder)
    with pytest.raises(MigrationFailed, match="not committed, the source is kept: .*copying"):
        flow.commit(plan, cinder)
    assert not cinder.called("finish") and cinder.volume["migration_status"] == "migrating_attachable"
    assert "not rolled back" in flow.rollback(plan, cinder, "commit: not complete")
    cinder.copy_done = True
    flow.commit(plan, cinder)
    assert cinder.volume["migration_status"] == "success"
    flow.commit(plan, cinder)  # a retry after success changes nothing
    assert cinder.named("finish") == [("lab@alpha#pool1",)] and not cinder.called("fail")


def test_commit_of_a_host_copy_is_cinders_finish_once_the_copy_is_recorded(disks):
    cinder = ScriptedCinder()
    plan = validate(cinder, force_host_copy=True)
    with pytest.raises(MigrationFailed, match="the source is kept: .*into no destination volume is not recorded"):
        flow.commit(plan, cinder)
    copy(plan, cinder, disks)
    flow.commit(plan, cinder)
    flow.commit(plan, cinder)  # a retry after success changes nothing
    assert cinder.named("finish") == [("lab@alpha#pool1",)] and cinder.volume["migration_status"] == "success"
    assert flow.rollback(plan, cinder, "late").startswith("not rolled back: volume") and not cinder.called("fail")


def test_rollback_before_attachable_has_cinder_mark_the_error_and_says_why():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = ["failed: array alpha unreachable"]
    with pytest.raises(MigrationFailed):
        step_two(plan, cinder)
    done = flow.rollback(plan, cinder, "target_takeover: array alpha unreachable")
    assert done == "rolled back: migration_status error"
    assert cinder.named("fail") == [("target_takeover: array alpha unreachable", "run-1")]
    assert flow.rollback(plan, cinder, "again").startswith("nothing to undo")  # idempotent
    assert len(cinder.named("fail")) == 1


def test_rollback_never_deletes_once_attachable_or_after_a_synchronous_takeover():
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.mark_attachable(VID, plan.dest_host)
    assert "not rolled back: volume" in flow.rollback(plan, cinder, "wait_for_copy: timeout")
    cinder = ScriptedCinder()
    plan = validate(cinder)
    cinder.target_steps = [TargetStep.MOVED]
    assert step_two(plan, cinder) == {"moved": True, "async": False, "model_update": None}
    assert "not rolled back: the target driver moved" in flow.rollback(plan, cinder, "commit: down")
    assert not cinder.called("fail") and cinder.volume["migration_status"] == "starting"


def test_rollback_without_a_plan_touches_nothing():
    cinder = ScriptedCinder()
    assert flow.rollback(None, cinder, "validate_and_lock: bad input").startswith("nothing to undo")
    assert cinder.calls == []


# ---- abandon (before the switch-over, through Cinder) -------------------------------------------
def attachable(cinder):
    plan = validate(cinder)
    step_two(plan, cinder)
    return plan


def test_abandon_is_cinders_and_puts_the_volume_back_on_its_source():
    cinder = ScriptedCinder()
    plan = attachable(cinder)
    done = flow.abandon(plan, cinder, "abandoned by admin")
    assert done == "abandoned: copy given up on alpha, volume back on lab@beta#pool1"
    assert ("abandon", ("abandoned by admin", "run-1", None)) in cinder.calls
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("error", "lab@beta#pool1")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c: setattr(c, "abandon_refusal", "LUN x is copied in stream mode"), "nothing changed: .*stream mode"),
        (lambda c: setattr(c, "abandon_refusal", "the mirror has switched over"), "nothing changed: .*switched over"),
        (lambda c: c.volume.update(status="in-use"), "detach it first"),
        (lambda c: c.volume.update(attachments=[{"id": "a-1"}]), "detach it first"),
        (lambda c: c.volume.update(migration_status="success"), "only a migration attachable on"),
    ],
    ids=["stream", "switched-over", "in-use", "attached", "finished"],
)
def test_abandon_refuses_and_changes_nothing(setup, message):
    cinder = ScriptedCinder()
    plan = attachable(cinder)
    setup(cinder)
    before = dict(cinder.volume)
    with pytest.raises(MigrationRefused, match=message):
        flow.abandon(plan, cinder, "abandoned by admin")
    assert dict(cinder.volume) == before and not cinder.called("abandon")
