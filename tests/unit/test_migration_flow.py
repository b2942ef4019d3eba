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
from include.backends.errors import ArrayUnavailable, Conflict, NotFound
from include.cinder_plugin.names import SourceStep
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
        return {"source_step": self.source_step, "migration_status": self.volume["migration_status"]}

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
        self.calls.append(("finish", (host,)))
        self.volume.update({"status": "available", "migration_status": "success", "os-vol-host-attr:host": host})

    def fail_migration(self, volume_id: str, reason: str, owner: str | None = None) -> None:
        self.calls.append(("fail", (reason, owner)))
        self.volume.update({"status": "available", "migration_status": "error"})

    def abandon_migration(self, volume_id: str, reason: str, owner: Any = None, location: Any = None) -> None:
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

    def migrate_volume_target(self, volume: Any, source: Any, *, pool: str, speed_bps: Any = None,
                              mode: Any = None) -> tuple[bool, bool, dict[str, Any] | None]:  # fmt: skip
        """Takes over (async) when ``takeover``, else cannot; a second call answers the same."""
        self.calls.append(f"migrate_volume_target {volume.name}")
        if not self.takeover:
            return False, False, None
        lun = self.luns.get(volume.name) or self.create_lun(volume.name, volume.size, pool)
        lun["copy"] = True
        return True, True, {"provider_location": lun["location"]}

    def abandon_migration_target(self, volume: Any) -> None:
        """As the reference array: only a mirror that has not switched over."""
        lun = self.get_lun(volume.name)
        if lun.get("copy_mode") != "mirror" or lun.get("switched"):
            raise Conflict(f"LUN {volume.name} is copied in {lun.get('copy_mode')} mode: the source is not current")
        self.calls.append(f"abandon {volume.name}")
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
    flow.target_takeover(plan, arrays, cinder)
    assert step_one(plan, cinder) == {"moved": False, "model_update": None}
    assert not cinder.called("source_migrate")


def test_step_one_gives_up_after_the_copy_timeout(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays, copy_timeout_s=60)
    cinder.source_steps = [SourceStep.RUNNING]
    clock = Clock()
    with pytest.raises(MigrationFailed, match="has not answered within copy_timeout_s=60"):
        step_one(plan, cinder, clock)
    assert 60 <= clock.now <= 61


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
    assert flow.target_takeover(plan, arrays, cinder) == {"moved": False, "async": False, "model_update": None}
    with pytest.raises(MigrationRefused, match="no host copy .*no Airflow Connection storage_array_ceph-hdd"):
        flow.host_copy(plan, arrays, tmp_path)
    assert not list(tmp_path.iterdir())
    assert flow.rollback(plan, cinder, arrays, "host_copy: refused").startswith("rolled back: migration_status error")
    assert cinder.volume["migration_status"] == "error"


# ---- target_takeover ----------------------------------------------------------------------------
def test_an_async_takeover_marks_the_volume_attachable_before_it_returns_and_again_on_a_retry(arrays):
    cinder = ScriptedCinder()
    plan = validate(cinder, arrays)
    first = flow.target_takeover(plan, arrays, cinder)
    assert (first["moved"], first["async"]) == (True, True)
    assert cinder.volume["migration_status"] == "migrating_attachable"
    assert cinder.volume["os-vol-host-attr:host"] == "lab@alpha#pool1"
    assert flow.target_takeover(plan, arrays, cinder) == first  # a retry after a dead worker: the same answer
    assert [c for c in cinder.calls if c[0] == "attachable"] == [("attachable", ("lab@alpha#pool1",))] * 2


def test_a_target_that_cannot_take_over_leaves_the_volume_locked_on_its_source(arrays):
    cinder = ScriptedCinder()
    arrays.found["alpha"].takeover = False
    plan = validate(cinder, arrays)
    assert flow.target_takeover(plan, arrays, cinder) == {"moved": False, "async": False, "model_update": None}
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("starting", plan.source_host)
    assert not cinder.called("attachable")


# ---- commit and rollback ------------------------------------------------------------------------
def taken_over(cinder, arrays):
    plan = validate(cinder, arrays)
    alpha = arrays.found["alpha"]
    alpha.create_lun(LUN, GiB, "pool1")["copy"] = True
    return plan, alpha, arrays.found["beta"]


def test_commit_keeps_the_source_until_the_target_is_complete(arrays):
    cinder = ScriptedCinder()
    plan, alpha, beta = taken_over(cinder, arrays)
    cinder.mark_attachable(VID, plan.dest_host)
    with pytest.raises(MigrationFailed, match="the source LUN is kept"):
        flow.commit(plan, cinder, arrays)
    assert LUN in beta.luns and not cinder.called("finish")
    alpha.copy_state = MigrationState.DONE
    alpha.luns[LUN].update(copy=False, taken_over_from="beta")
    flow.commit(plan, cinder, arrays)
    assert LUN not in beta.luns and beta.calls.index(f"release {LUN}") < beta.calls.index(f"delete {LUN}")
    assert cinder.volume["migration_status"] == "success"
    flow.commit(plan, cinder, arrays)  # a retry after success changes nothing
    assert [c for c in cinder.calls if c[0] == "finish"] == [("finish", ("lab@alpha#pool1",))]


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


# ---- abandon (mirror mode, before the switch-over) ---------------------------------------------
def attachable_mirror(cinder, arrays, **lun):
    plan, alpha, beta = taken_over(cinder, arrays)
    alpha.luns[LUN].update(copy_mode="mirror", **lun)
    cinder.mark_attachable(VID, plan.dest_host)
    return plan, alpha, beta


def test_abandon_goes_back_to_the_source_in_the_order_that_loses_nothing(arrays):
    cinder = ScriptedCinder()
    plan, alpha, beta = attachable_mirror(cinder, arrays)
    beta.luns[LUN]["location"] = "nbd://beta/volume"
    done = flow.abandon(plan, cinder, arrays, "abandoned by admin")
    assert done == "abandoned: copy stopped and target LUN deleted on alpha, volume back on lab@beta#pool1"
    assert LUN not in alpha.luns and LUN in beta.luns and f"release {LUN}" in beta.calls
    assert ("abandon", ("abandoned by admin", "run-1", "nbd://beta/volume")) in cinder.calls
    assert (cinder.volume["migration_status"], cinder.volume["os-vol-host-attr:host"]) == ("error", "lab@beta#pool1")


def test_a_retry_after_the_array_step_finishes_the_abandon(arrays):
    cinder = ScriptedCinder()
    plan, alpha, beta = attachable_mirror(cinder, arrays)
    del alpha.luns[LUN]  # the array step was done, Cinder was not told
    assert flow.abandon(plan, cinder, arrays, "again") == "abandoned: volume back on lab@beta#pool1"
    assert cinder.volume["os-vol-host-attr:host"] == "lab@beta#pool1"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c, a, b: a.luns[LUN].update(copy_mode="stream"), "stream mode: the source is not current"),
        (lambda c, a, b: a.luns[LUN].update(switched=True), "not abandoned, nothing changed"),
        (lambda c, a, b: c.volume.update(status="in-use"), "detach it first"),
        (lambda c, a, b: c.volume.update(attachments=[{"id": "a-1"}]), "detach it first"),
        (lambda c, a, b: b.luns.clear(), "nothing to go back to"),
        (lambda c, a, b: c.volume.update(migration_status="success"), "only a migration attachable on"),
    ],
    ids=["stream", "switched-over", "in-use", "attached", "source-gone", "finished"],
)
def test_abandon_refuses_and_changes_nothing(arrays, setup, message):
    cinder = ScriptedCinder()
    plan, alpha, beta = attachable_mirror(cinder, arrays)
    setup(cinder, alpha, beta)
    before = (dict(cinder.volume), set(alpha.luns), set(beta.luns), list(beta.calls))
    with pytest.raises(MigrationRefused, match=message):
        flow.abandon(plan, cinder, arrays, "abandoned by admin")
    assert (dict(cinder.volume), set(alpha.luns), set(beta.luns), list(beta.calls)) == before
    assert not cinder.called("abandon")
