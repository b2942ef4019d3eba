"""The flow's steps (include/migration/flow.py) against scripted Cinder and array boundaries.

The real services are exercised in tests/integration/test_volume_migration.py;
here each refusal and safety rule is pinned down one by one, quickly.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from include.backends.base import (
    BackendDriver,
    Capabilities,
    ConnectionInfo,
    GiB,
    MigrationProgress,
    MigrationState,
    PoolInfo,
)
from include.backends.errors import ArrayUnavailable, NotFound
from include.cinder_plugin.names import SourceStep, TargetStep
from include.migration import flow, validation
from include.migration.errors import CinderError, InvalidParams, MigrationFailed, MigrationRefused
from tests.unit.fake_clock import Clock

VID = str(uuid.uuid4())
LUN = f"volume-{VID}"


class ScriptedCinder:
    """The CinderApi calls the flow makes, over one volume held in memory."""

    def __init__(self, host: str = "lab@beta#pool1", **volume: Any) -> None:
        self.volume = {"id": VID, "size": 1, "status": "available", "migration_status": None}
        self.volume.update({"os-vol-host-attr:host": host, **volume})
        self.services = {"lab@alpha": "up", "lab@beta": "up", "lab@gamma": "up"}
        self.pools = ["lab@alpha#pool1", "lab@alpha#pool2", "lab@beta#pool1", "lab@gamma#pool1"]
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
            self.source_step = self.source_steps.pop(0) if len(self.source_steps) > 1 else self.source_steps[0]
            if self.source_step == SourceStep.MOVED:  # cinder-volume put it on the destination
                self.volume["os-vol-host-attr:host"] = self.lock["host"]
        if self.target_step == TargetStep.RUNNING:
            self.target_step = self.target_steps.pop(0) if len(self.target_steps) > 1 else self.target_steps[0]
            if self.target_step == TargetStep.ATTACHABLE:  # cinder-volume put it on the destination, attachable
                self.mark_attachable(volume_id, self.lock["host"])
        return {"source_step": self.source_step, "target_step": self.target_step,
                "migration_status": self.volume["migration_status"]}  # fmt: skip

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        if volume_id != VID:
            raise CinderError(f"GET /volumes/{volume_id}: HTTP 404", 404)
        return dict(self.volume)

    def get_pools(self) -> list[str]:
        return self.pools

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

    def finish_migration(self, volume_id: str, host: Any = None, location: Any = None, type_id: Any = None) -> None:
        if self.target_step == TargetStep.ATTACHABLE and not self.copy_done:
            raise CinderError("HTTP 409: not finished: the copy on lab@alpha is copying; the source is kept", 409)
        self.calls.append(("finish", (host,)))
        self.volume.update({"status": "available", "migration_status": "success", "os-vol-host-attr:host": host})

    def fail_migration(self, volume_id: str, reason: str, owner: str | None = None) -> None:
        self.calls.append(("fail", (reason, owner)))
        self.volume.update({"status": "available", "migration_status": "error"})

    def abandon_migration(self, volume_id: str, reason: str, owner: Any = None, location: Any = None) -> None:
        if self.abandon_refusal:
            raise CinderError(f"HTTP 409: not abandoned, nothing changed: {self.abandon_refusal}", 409)
        self.calls.append(("abandon", (reason, owner, location)))
        self.volume.update({"migration_status": "error", "os-vol-host-attr:host": self.lock["source_host"]})

    def called(self, name: str) -> bool:
        return any(c[0] == name for c in self.calls)


class ScriptedArray(BackendDriver):
    """An array's answers, in memory: LUN records, a takeover's progress, what was called."""

    def __init__(self, name: str, *, takeover: bool = True, free: int = 40 * GiB, up: bool = True) -> None:
        self.name = name
        self.takeover = takeover
        self.free = free
        self.up = up
        self.luns: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.copy_state = MigrationState.COPYING

    def capabilities(self) -> Capabilities:
        if not self.up:
            raise ArrayUnavailable(f"array {self.name} at http://127.0.0.1:1 is unreachable: refused")
        pools = tuple(PoolInfo(p, 40 * GiB, self.free, 0) for p in ("pool1", "pool2"))
        return Capabilities(self.name, "reference", self.takeover, True, pools)

    def create_lun(self, name: str, size: int, pool: str) -> dict[str, Any]:
        self.luns[name] = {"name": name, "size": size, "pool": pool, "copy": False, "location": f"nbd://{self.name}"}
        return self.luns[name]

    def delete_lun(self, name: str) -> None:
        self.calls.append(f"delete {name}")
        self.get_lun(name)
        del self.luns[name]

    def extend_lun(self, name: str, size: int) -> dict[str, Any]:
        raise NotImplementedError

    def get_lun(self, name: str) -> dict[str, Any]:
        if name not in self.luns:
            raise NotFound(f"array {self.name} has no LUN named {name!r}")
        return self.luns[name]

    def list_luns(self) -> list[dict[str, Any]]:
        return list(self.luns.values())

    def export_lun(self, name: str) -> ConnectionInfo:
        return ConnectionInfo("127.0.0.1", 1, name)

    def unexport_lun(self, name: str) -> None:
        self.calls.append(f"unexport {name}")

    def export_for_takeover(self, name: str, initiator: str) -> ConnectionInfo:
        return ConnectionInfo("127.0.0.1", 1, name)

    def release_takeover(self, name: str) -> None:
        self.calls.append(f"release {name}")

    def complete_migration_target(self, volume: Any) -> MigrationProgress:
        return MigrationProgress(self.copy_state, GiB // 2, GiB)

    def abort_migration_target(self, volume: Any) -> None:
        self.calls.append(f"abort {volume.name}")
        del self.luns[volume.name]


@pytest.fixture
def arrays():
    found = {"alpha": ScriptedArray("alpha"), "beta": ScriptedArray("beta"), "gamma": ScriptedArray("gamma")}
    found["beta"].create_lun(LUN, GiB, "pool1")

    def resolve(backend: str) -> BackendDriver:
        if backend not in found:
            raise LookupError(f"no Airflow Connection storage_array_{backend}")
        return found[backend]

    resolve.found = found
    return resolve


def validate(cinder, arrays, **conf):
    conf = {"volume_id": VID, "dest_host": "lab@alpha#pool1", **conf}
    return validation.validate_and_lock(conf, "run-1", cinder, arrays)


# ---- validate_and_lock -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "conf", "message"),
    [
        (lambda c, a: None, {"volume_id": str(uuid.uuid4())}, "does not exist"),
        (lambda c, a: None, {"dest_host": "lab@beta#pool1"}, "already on lab@beta#pool1"),
        (lambda c, a: None, {"dest_host": "lab@delta#pool1"}, "no volume service lab@delta"),
        (lambda c, a: c.services.update({"lab@alpha": "down"}), {}, "lab@alpha is enabled and down"),
        (lambda c, a: None, {"dest_host": "lab@alpha#pool7"}, "not a pool Cinder knows"),
        (lambda c, a: c.pools.append("lab@delta#pool1") or c.services.update({"lab@delta": "up"}),
         {"dest_host": "lab@delta#pool1"},
         "a takeover or host copy reads and writes through both arrays: no Airflow Connection storage_array_delta"),
        (lambda c, a: setattr(a.found["alpha"], "up", False), {}, "destination array alpha at"),
        (lambda c, a: setattr(a.found["alpha"], "free", GiB // 2), {}, "has 512 MiB free, the volume needs 1024"),
        (lambda c, a: a.found["alpha"].create_lun(LUN, GiB, "pool1"), {}, "already holds a LUN named"),
        (lambda c, a: a.found["beta"].luns.clear(), {}, "array beta has no LUN"),
        (lambda c, a: None, {"new_type": "gold"}, "volume type gold does not exist"),
        (lambda c, a: c.lock.update(owner="run-0", host="x", source_host="y"), {}, "already migrating"),
    ],
)  # fmt: skip
def test_validate_refuses_with_one_clear_message_before_any_change(arrays, setup, conf, message):
    cinder = ScriptedCinder()
    setup(cinder, arrays)
    locked_before = bool(cinder.lock)
    with pytest.raises(MigrationRefused, match=message):
        validate(cinder, arrays, **conf)
    assert cinder.volume["status"] == "available"
    if not locked_before:
        assert not cinder.called("begin") or "already" in message


def test_validate_refuses_bad_params_before_asking_cinder(arrays):
    cinder = ScriptedCinder()
    with pytest.raises(InvalidParams, match="volume_id must be a volume UUID.*dest_host must look like"):
        validation.validate_and_lock({"volume_id": "x", "dest_host": "y"}, "run-1", cinder, arrays)
    assert cinder.calls == []


def test_host_copy_inside_one_array_is_refused(arrays):
    cinder = ScriptedCinder(host="lab@alpha#pool2")
    arrays.found["alpha"].create_lun(LUN, GiB, "pool2")
    with pytest.raises(MigrationRefused, match="a host copy needs two arrays"):
        validate(cinder, arrays, force_host_copy=True)


def test_validate_locks_once_and_a_retry_by_the_same_run_gets_the_same_plan(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays, speed_mib=20)
    assert (plan.source_host, plan.dest_host, plan.lun, plan.size, plan.path) == (
        "lab@beta#pool1", "lab@alpha#pool1", LUN, GiB, "source_driver_migrate")  # fmt: skip
    assert plan.speed_bps == 20 << 20 and cinder.volume["migration_status"] == "starting"
    assert validate(cinder, arrays, speed_mib=20) == plan
    assert flow.Plan.from_json(plan.to_json()) == plan


def test_a_cleared_run_takes_its_own_lock_back_despite_its_partial_target(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays, force_host_copy=True)
    arrays.found["alpha"].create_lun(LUN, GiB, "pool1")  # host_copy had begun
    assert validate(cinder, arrays, force_host_copy=True) == plan
    with pytest.raises(MigrationRefused, match="already migrating"):
        validation.validate_and_lock({"volume_id": VID, "dest_host": "lab@alpha#pool1"}, "run-2", cinder, arrays)


def test_rerun_after_the_volume_became_attachable_resumes_from_the_lock(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    cinder.mark_attachable(VID, plan.dest_host)
    again = validate(cinder, arrays)  # Cinder's host is the destination now; the lock says where it came from
    assert again.source_host == "lab@beta#pool1" and again == plan


# ---- source_driver_migrate (step 1, in the source's cinder-volume) -------------------------------
def step_one(plan, cinder, clock=None):
    clock = clock or Clock()
    return flow.source_driver_migrate(plan, cinder, poll_s=1.0, clock=clock, sleep=clock.sleep)


def step_two(plan, cinder, clock=None):
    clock = clock or Clock()
    return flow.target_takeover(plan, cinder, poll_s=1.0, clock=clock, sleep=clock.sleep)


def ceph_volume(**conf):
    """A volume on a backend Airflow has no array for (Ceph behind Cinder's RBD driver), locked for another."""
    cinder = ScriptedCinder(host="lab@ceph-hdd#ceph-hdd")
    cinder.services["lab@ceph-ssd"] = cinder.services["lab@ceph-hdd"] = "up"
    cinder.pools += ["lab@ceph-hdd#ceph-hdd", "lab@ceph-ssd#ceph-ssd"]
    return cinder, {"dest_host": "lab@ceph-ssd#ceph-ssd", **conf}


def test_step_one_waits_for_the_source_driver_and_a_moved_volume_commits_without_any_array(arrays):
    cinder, conf = ceph_volume()
    plan = validate(cinder, arrays, **conf)  # no array to ask: Cinder's checks only
    assert (plan.path, cinder.volume["migration_status"]) == ("source_driver_migrate", "starting")
    cinder.source_steps = [SourceStep.RUNNING, SourceStep.RUNNING, SourceStep.MOVED]
    assert step_one(plan, cinder) == {"moved": True, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == "lab@ceph-ssd#ceph-ssd"
    assert validate(cinder, arrays, **conf) == plan  # a cleared run: still its lock, now on the destination
    assert step_one(plan, cinder)["moved"]  # asked again: the same outcome, nothing started
    assert [c for c in cinder.calls if c[0] == "source_migrate"] == [("source_migrate", ("run-1",))] * 2
    assert "not rolled back: the source driver moved" in flow.rollback(plan, cinder, arrays, "x")
    flow.commit(plan, cinder, arrays)
    assert cinder.calls[-1] == ("finish", ("lab@ceph-ssd#ceph-ssd",)) and cinder.volume["migration_status"] == "success"


def test_a_source_driver_that_cannot_move_it_hands_over_to_the_target_and_one_that_fails_says_why(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert cinder.volume["os-vol-host-attr:host"] == plan.source_host
    cinder.source_step, cinder.source_steps = None, ["failed: VolumeBackendAPIException: pool full"]
    with pytest.raises(MigrationFailed, match="source driver of beta did not move the volume: failed: Volume.*full"):
        step_one(plan, cinder)


def test_a_cleared_run_whose_volume_is_attachable_already_does_not_ask_step_one_again(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    step_two(plan, cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert not cinder.called("source_migrate")


@pytest.mark.parametrize(
    ("steps", "ask", "message"),
    [("source_steps", step_one, "source step toward lab@alpha#pool1 has not answered within copy_timeout_s=90"),
     ("target_steps", step_two, "target step toward lab@alpha#pool1 has not answered within copy_timeout_s=90")],
    ids=["step-one", "step-two"],
)  # fmt: skip
def test_a_driver_step_is_given_up_after_the_copy_timeout(arrays, steps, ask, message):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays, copy_timeout_s=90)
    setattr(cinder, steps, [SourceStep.RUNNING])
    if ask is step_two:  # step one answers "not moved" first
        step_one(plan, cinder)
    clock = Clock()
    with pytest.raises(MigrationFailed, match=message):
        ask(plan, cinder, clock)
    assert 90 <= clock.now <= 91


def test_between_ceph_and_an_array_the_move_is_refused_before_the_lock(arrays):
    cinder, conf = ceph_volume(dest_host="lab@alpha#pool1")
    with pytest.raises(MigrationRefused, match="takeover or host copy .*no Airflow Connection storage_array_ceph-hdd"):
        validate(cinder, arrays, **conf)
    assert not cinder.called("begin")
    cinder, conf = ceph_volume(force_host_copy=True)
    with pytest.raises(MigrationRefused, match="takeover or host copy .*storage_array_ceph-hdd; .*ceph-ssd"):
        validate(cinder, arrays, **conf)


def test_when_the_ceph_driver_cannot_move_it_the_run_ends_refused_and_the_rollback_only_unlocks(arrays, tmp_path):
    cinder, conf = ceph_volume()
    plan = validate(cinder, arrays, **conf)
    assert not step_one(plan, cinder)["moved"]
    cinder.target_steps = [TargetStep.NOT_MOVED]  # Cinder's RBD driver takes nothing over
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    with pytest.raises(MigrationRefused, match="no host copy .*no Airflow Connection storage_array_ceph-hdd"):
        flow.host_copy(plan, arrays, tmp_path)
    assert not list(tmp_path.iterdir())
    assert flow.rollback(plan, cinder, arrays, "host_copy: refused").startswith("rolled back: migration_status error")
    assert cinder.volume["migration_status"] == "error"


# ---- target_takeover (step 2, in the destination's cinder-volume) -------------------------------
def test_an_async_takeover_leaves_the_volume_attachable_before_it_returns_and_a_retry_reads_the_same(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    cinder.target_steps = [TargetStep.RUNNING, TargetStep.RUNNING, TargetStep.ATTACHABLE]
    first = step_two(plan, cinder)
    assert first == {"moved": True, "async": True, "model_update": None}
    assert cinder.volume["migration_status"] == "migrating_attachable"
    assert cinder.volume["os-vol-host-attr:host"] == "lab@alpha#pool1"
    assert step_two(plan, cinder) == first  # a retry after a dead worker: the same answer, nothing started
    assert [c for c in cinder.calls if c[0] == "target_migrate"] == [("target_migrate", ("run-1",))] * 2
    assert [c for c in cinder.calls if c[0] == "attachable"] == [("attachable", ("lab@alpha#pool1",))]


def test_a_target_that_cannot_take_over_leaves_the_volume_locked_on_its_source_and_one_that_fails_says_why(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    cinder.target_steps = [TargetStep.NOT_MOVED]
    assert step_two(plan, cinder) == {"moved": False, "async": False, "model_update": None}
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("starting", plan.source_host)
    cinder.target_step, cinder.target_steps = None, ["failed: VolumeBackendAPIException: take the LUN over: full"]
    with pytest.raises(MigrationFailed, match="target driver of alpha did not take the volume over: failed: .*full"):
        step_two(plan, cinder)
    assert not cinder.called("attachable")


def test_a_step_two_that_runs_long_is_asked_again_once_a_minute_and_its_outcome_read(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    cinder.target_steps = [TargetStep.RUNNING] * 130 + [TargetStep.ATTACHABLE]  # a look a second: over two minutes
    clock = Clock()
    assert step_two(plan, cinder, clock)["async"]
    assert [c[0] for c in cinder.calls if c[0].startswith("target_migrate")] == [
        "target_migrate", "target_migrate again", "target_migrate again"]  # fmt: skip
    assert 120 <= clock.now <= 140


# ---- commit and rollback ------------------------------------------------------------------------
def taken_over(cinder, arrays):
    plan = validate(cinder, arrays)
    alpha = arrays.found["alpha"]
    alpha.create_lun(LUN, GiB, "pool1")["copy"] = True
    return plan, alpha, arrays.found["beta"]


def test_commit_of_a_takeover_is_cinders_finish_which_keeps_the_source_until_the_copy_is_complete(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    step_two(plan, cinder)
    with pytest.raises(MigrationFailed, match="not committed, the source is kept: .*copying"):
        flow.commit(plan, cinder, arrays)
    assert not cinder.called("finish") and cinder.volume["migration_status"] == "migrating_attachable"
    assert "not rolled back" in flow.rollback(plan, cinder, arrays, "commit: not complete")
    cinder.copy_done = True
    flow.commit(plan, cinder, arrays)
    assert cinder.volume["migration_status"] == "success"
    flow.commit(plan, cinder, arrays)  # a retry after success changes nothing
    assert [c for c in cinder.calls if c[0] == "finish"] == [("finish", ("lab@alpha#pool1",))]
    assert all(a.calls == [] for a in arrays.found.values())  # no array was asked anything


def test_commit_of_a_host_copy_keeps_the_source_lun_until_the_target_lun_is_right(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays, force_host_copy=True)
    alpha, beta = arrays.found["alpha"], arrays.found["beta"]
    alpha.create_lun(LUN, GiB // 2, "pool1")
    with pytest.raises(MigrationFailed, match="the source LUN is kept: .* is 536870912 bytes, not 1073741824"):
        flow.commit(plan, cinder, arrays)
    assert LUN in beta.luns and not cinder.called("finish")
    alpha.luns[LUN]["size"] = GiB
    flow.commit(plan, cinder, arrays)
    assert LUN not in beta.luns and beta.calls.index(f"release {LUN}") < beta.calls.index(f"delete {LUN}")
    assert cinder.volume["migration_status"] == "success"


def test_rollback_before_attachable_removes_the_target_and_says_why(arrays):
    cinder = ScriptedCinder()
    plan, alpha, beta = taken_over(cinder, arrays)
    done = flow.rollback(plan, cinder, arrays, "target_takeover: array alpha unreachable")
    assert "takeover on alpha aborted" in done and LUN not in alpha.luns and LUN in beta.luns
    assert f"release {LUN}" in beta.calls
    assert ("fail", ("target_takeover: array alpha unreachable", "run-1")) in cinder.calls
    assert flow.rollback(plan, cinder, arrays, "again").startswith("nothing to undo")  # idempotent


def test_rollback_never_deletes_once_attachable(arrays):
    cinder = ScriptedCinder()
    plan, alpha, _ = taken_over(cinder, arrays)
    cinder.mark_attachable(VID, plan.dest_host)
    assert "not rolled back" in flow.rollback(plan, cinder, arrays, "wait_for_copy: timeout")
    assert LUN in alpha.luns and alpha.calls == [] and not cinder.called("fail")


def test_rollback_refuses_when_the_source_is_gone(arrays):
    cinder = ScriptedCinder()
    plan, alpha, beta = taken_over(cinder, arrays)
    beta.luns.clear()
    with pytest.raises(MigrationFailed, match="only copy and is kept"):
        flow.rollback(plan, cinder, arrays, "commit failed")
    assert LUN in alpha.luns and not cinder.called("fail")


def test_rollback_without_a_plan_touches_nothing(arrays):
    cinder = ScriptedCinder()
    assert flow.rollback(None, cinder, arrays, "validate_and_lock: bad input").startswith("nothing to undo")
    assert cinder.calls == []


# ---- abandon (before the switch-over, through Cinder) -------------------------------------------
def attachable(cinder, arrays):
    plan = validate(cinder, arrays)
    step_two(plan, cinder)
    return plan


def test_abandon_is_cinders_and_puts_the_volume_back_on_its_source(arrays):
    cinder = ScriptedCinder()
    plan = attachable(cinder, arrays)
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
def test_abandon_refuses_and_changes_nothing(arrays, setup, message):
    cinder = ScriptedCinder()
    plan = attachable(cinder, arrays)
    setup(cinder)
    before = dict(cinder.volume)
    with pytest.raises(MigrationRefused, match=message):
        flow.abandon(plan, cinder, "abandoned by admin")
    assert dict(cinder.volume) == before and not cinder.called("abandon")
