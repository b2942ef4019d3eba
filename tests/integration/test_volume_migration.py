"""The volume_migration DAG end to end, on the real lab.

Runs are triggered through Airflow's REST API (JWT from the simple auth
manager) on a running api-server, scheduler (LocalExecutor), dag-processor
and triggerer; the tasks talk to the real Cinder 29 (through Keystone) and
the real arrays. Data written before a run is checked after it, byte for
byte, on the destination.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import uuid

import pytest

from include.backends.base import GiB, MiB, MigrationState, Volume
from include.migration.deadlines import deadline_text
from include.migration.flow import lun_of
from lab import verify
from lab.dags.migration_floor import FLOOR_DAG
from lab.procutil import pid_alive, process_tree, wait_until
from lab.services.airflow import CELERY_WORKERS
from lab.services.airflow_api import AirflowError
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import CINDER_HOST
from tests.integration.conftest import CONNECTOR, wait_status
from tests.integration.migration_runs import (
    DAG,
    RUN_TIMEOUT,
    assert_migrated,
    assert_progress_in_cinder,
    content_on,
    logs_of,
    luns,
    run_and_wait,
    seed,
    state_of,
    states,
    use_through_cinder,
)

pytestmark = pytest.mark.integration


# ---- the paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "copy_mode"),
    # a plain array's source (gamma) streamed, a reference array's (beta) mirrored; beta streamed is every other
    # takeover test's (the operator view's, the fault sample's, the rebalance's)
    [pytest.param("gamma", None, marks=pytest.mark.on_celery_in_ci), ("beta", "mirror")],
)
def test_async_takeover_serves_the_volume_during_the_copy(lab, admin, services, api, volume, source, copy_mode):
    """gamma -> alpha, and beta -> alpha in mirror mode: attachable at once, used through Cinder while the copy
    runs."""
    vol = volume(source)
    vid, lun, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@alpha#pool1"
    model = seed(lab, source, lun)
    alpha = lab.backend("alpha")
    # a mirror copies only the allocated eighth of the seeded LUN (a stream copies every block): slower, so
    # that the copy is still going while the client below works
    speed = 4 if copy_mode == "mirror" else 24
    conf = {"volume_id": vid, "dest_host": dest, "speed_mib": speed, **({"copy_mode": copy_mode} if copy_mode else {})}
    run_id = api.trigger(DAG, conf)

    assert wait_until(lambda: state_of(admin, vid)[1] == "migrating_attachable", 120, 0.5), state_of(admin, vid)
    assert state_of(admin, vid) == ("available", "migrating_attachable", dest)
    assert alpha.get_lun(lun)["copy_mode"] == (copy_mode or "stream")  # the array's default: stream
    assert alpha.complete_migration_target(Volume(lun, GiB)).state is MigrationState.COPYING
    # a second run for the same volume meanwhile is refused and changes nothing
    second, state, tis = run_and_wait(api, {"volume_id": vid, "dest_host": f"{CINDER_HOST}@alpha#pool2"})
    assert state == "failed" and tis["validate_and_lock"]["state"] == "failed"
    assert "already migrating" in logs_of(api, second, "validate_and_lock", tis)
    assert state_of(admin, vid) == ("available", "migrating_attachable", dest)
    # the wait is handed to the triggerer: no worker slot held
    assert wait_until(lambda: api.task_instances(DAG, run_id)["wait_for_copy"]["state"] == "deferred", 60, 0.5)
    # ... which tells Cinder the copy's progress: cinder show has it
    assert_progress_in_cinder(admin, services, vid)

    info = use_through_cinder(admin, vid, model, 11)
    assert info["port"] == lab.config("alpha").nbd_port  # served by the target
    assert alpha.complete_migration_target(Volume(lun, GiB)).state is MigrationState.COPYING  # I/O was during it

    assert api.wait_run(DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    tis = api.task_instances(DAG, run_id)
    assert states(tis) == {
        "validate_and_lock": "success",
        "source_driver_migrate": "success",
        "target_takeover": "success",
        "wait_for_copy": "success",
        "drivers_skipped": "skipped",
        "host_copy": "skipped",
        "commit": "success",
        "rollback": "skipped",
    }
    wait_log = logs_of(api, run_id, "wait_for_copy", tis)
    assert "ETA" in wait_log and "MiB/s" in wait_log  # the trigger's progress lines
    assert_migrated(lab, admin, services, vid, dest, model, source)


def test_pool_move_by_the_source_driver(lab, admin, services, api, volume):
    """alpha pool -> alpha other pool: migrate_volume on the source moves it, nothing else runs."""
    vol = volume("alpha")
    vid, lun = vol["id"], f"volume-{vol['id']}"
    pool = vol["os-vol-host-attr:host"].split("#")[1]
    dest = f"{CINDER_HOST}@alpha#{'pool2' if pool == 'pool1' else 'pool1'}"
    model = seed(lab, "alpha", lun)
    run_id, state, tis = run_and_wait(api, {"volume_id": vid, "dest_host": dest})
    assert state == "success", states(tis)
    assert states(tis)["source_driver_migrate"] == "success"
    assert {states(tis)[t] for t in ("target_takeover", "host_copy", "wait_for_copy")} == {"skipped"}
    assert_migrated(lab, admin, services, vid, dest, model, "alpha")


@pytest.mark.parametrize(
    ("source", "dest", "extra", "asked_target"),
    [
        pytest.param(  # gamma cannot take a LUN over
            "alpha", f"{CINDER_HOST}@gamma#pool1", {}, True, marks=pytest.mark.on_celery_in_ci
        ),
        ("beta", f"{CINDER_HOST}@alpha#pool2", {"force_host_copy": True}, False),
        ("gamma", f"{CINDER_HOST}@ceph-hdd#ceph-hdd", {}, True),  # NBD to RBD: neither driver moves it
        # RBD to NBD (alpha would take it over: test_volume_migration_ceph.py), forced through the host
        ("ceph-ssd", f"{CINDER_HOST}@alpha#pool1", {"force_host_copy": True}, False),
    ],
    ids=["alpha-to-gamma", "forced-beta-to-alpha", "gamma-to-ceph", "ceph-to-alpha"],
)
def test_host_copy(lab, admin, services, api, ceph, volume, source, dest, extra, asked_target):
    vol = volume(source)
    vid, lun = vol["id"], f"volume-{vol['id']}"
    model = seed(lab, source, lun, ceph=ceph)
    run_id, state, tis = run_and_wait(api, {"volume_id": vid, "dest_host": dest, **extra})
    assert state == "success", states(tis)
    assert states(tis)["host_copy"] == "success"
    assert states(tis)["target_takeover"] == ("success" if asked_target else "skipped")
    assert states(tis)["wait_for_copy"] == "skipped"
    assert "host copy" in logs_of(api, run_id, "host_copy", tis)
    assert_migrated(lab, admin, services, vid, dest, model, source, ceph)


def test_airflow_holds_cinders_credentials_only(api):
    """Every backend is reached through Cinder: the lab's Airflow has one Connection, Cinder's."""
    assert api.connections() == {"cinder_default": "openstack_cinder"}


# ---- refusals ---------------------------------------------------------------------------------------
def test_bad_inputs_fail_clearly_and_change_nothing(lab, admin, api, volume):
    ok, in_use, broken, snapped = volume("gamma"), volume("gamma"), volume("gamma"), volume("gamma")
    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": in_use["id"], "connector": CONNECTOR}})
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    wait_status(admin, in_use["id"], "in-use")
    admin.action(broken["id"], "os-reset_status", {"status": "error"})
    snap = admin.request("POST", "/snapshots", {"snapshot": {"volume_id": snapped["id"]}})["snapshot"]
    alpha1 = f"{CINDER_HOST}@alpha#pool1"
    cases = {
        "unknown volume": ({"volume_id": str(uuid.uuid4()), "dest_host": alpha1}, "does not exist"),
        "unknown destination": ({"volume_id": ok["id"], "dest_host": f"{CINDER_HOST}@nowhere#pool1"},
                                f"no volume service {CINDER_HOST}@nowhere"),
        "unknown pool": ({"volume_id": ok["id"], "dest_host": f"{CINDER_HOST}@alpha#pool9"}, "not a pool Cinder knows"),
        "same host": ({"volume_id": ok["id"], "dest_host": ok["os-vol-host-attr:host"]}, "already on"),
        "volume in use": ({"volume_id": in_use["id"], "dest_host": alpha1}, "status is in-use"),
        "volume in error": ({"volume_id": broken["id"], "dest_host": alpha1}, "status is error"),
        "volume with a snapshot": ({"volume_id": snapped["id"], "dest_host": alpha1}, "it has snapshots"),
        "unknown parameter": ({"volume_id": ok["id"], "dest_host": alpha1, "colour": "blue"},
                              "unknown parameters: colour"),
        "unknown volume type": ({"volume_id": ok["id"], "dest_host": alpha1, "new_type": "gold"},
                                "volume type gold does not exist"),
    }  # fmt: skip
    volumes = [ok, in_use, broken, snapped]
    before = {v["id"]: state_of(admin, v["id"]) for v in volumes}
    arrays_before = luns(lab)
    runs = {name: api.trigger(DAG, conf) for name, (conf, _) in cases.items()}
    for name, run_id in runs.items():
        assert api.wait_run(DAG, run_id, RUN_TIMEOUT)["state"] == "failed", name
        tis = api.task_instances(DAG, run_id)
        assert tis["validate_and_lock"]["state"] == "failed", (name, states(tis))
        assert tis["validate_and_lock"]["try_number"] == 1, f"{name}: a refusal is not retried"
        assert cases[name][1] in logs_of(api, run_id, "validate_and_lock", tis), name
        assert "nothing to undo" in logs_of(api, run_id, "rollback", tis), name
    # malformed params are refused by the API itself, naming the parameter (the form uses the same schema)
    for conf, named in (
        ({"volume_id": "not-a-uuid", "dest_host": alpha1}, "volume_id"),
        ({"volume_id": ok["id"], "dest_host": "alpha"}, "dest_host"),
        ({"volume_id": ok["id"], "dest_host": alpha1, "speed_mib": -5}, "speed_mib"),
        ({"dest_host": alpha1}, "volume_id"),
    ):
        with pytest.raises(AirflowError, match=f"HTTP 400: Invalid input for param {named}"):
            api.trigger(DAG, conf)
    assert {v["id"]: state_of(admin, v["id"]) for v in volumes} == before
    assert luns(lab) == arrays_before
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    admin.action(broken["id"], "os-reset_status", {"status": "available"})
    assert wait_until(lambda: admin.request("GET", f"/snapshots/{snap['id']}")["snapshot"]["status"] != "creating", 30)
    admin.request("DELETE", f"/snapshots/{snap['id']}")
    wait_status(admin, in_use["id"], "available")


def refused(api, conf, expected):
    run_id, state, tis = run_and_wait(api, conf)
    assert state == "failed" and tis["validate_and_lock"]["state"] == "failed", states(tis)
    text = logs_of(api, run_id, "validate_and_lock", tis)
    assert expected in text, text[-2000:]


def test_refused_when_the_destination_service_is_down(lab, cinder, admin, api, volume):
    vol = volume("gamma")
    vid = vol["id"]
    before, arrays_before = state_of(admin, vid), luns(lab)
    beta = f"{CINDER_HOST}@beta#pool1"

    # the destination's volume service is down (its process stopped: no heartbeat)
    group = cinder.pid("cinder-volume")
    os.killpg(group, signal.SIGSTOP)
    try:
        services = lambda: {s["host"]: s["state"] for s in admin.volume_services()}  # noqa: E731
        assert wait_until(lambda: services().get(f"{CINDER_HOST}@beta") == "down", 90, 2.0), services()
        refused(api, {"volume_id": vid, "dest_host": beta}, f"volume service {CINDER_HOST}@beta is enabled and down")
    finally:
        os.killpg(group, signal.SIGCONT)
    assert wait_until(lambda: services().get(f"{CINDER_HOST}@beta") == "up", 60, 2.0)
    assert state_of(admin, vid) == before
    assert luns(lab) == arrays_before


def test_a_host_copy_past_its_deadline_rolls_back_without_retry_and_says_why(lab, admin, api, volume):
    """A forced host copy at 1 MiB/s in slices of task_timeout_s=15, with copy_timeout_s=60 from the lock: the slices
    go on from each other's checkpoints (rescheduled, not retried) until the deadline; then host_copy fails at
    once, without a retry, and rollback has Cinder delete the destination volume, keeps the source and tells
    Cinder why."""
    vol = volume("beta")
    vid, lun, source = vol["id"], f"volume-{vol['id']}", vol["os-vol-host-attr:host"]
    model = seed(lab, "beta", lun)  # 128 MiB of data: 128 s at 1 MiB/s
    alpha_before = luns(lab)["alpha"]
    conf = {"volume_id": vid, "dest_host": f"{CINDER_HOST}@alpha#pool1", "force_host_copy": True}
    run_id, state, tis = run_and_wait(api, {**conf, "speed_mib": 1, "copy_timeout_s": 60, "task_timeout_s": 15})
    assert state == "failed" and tis["host_copy"]["state"] == "failed", states(tis)
    assert tis["host_copy"]["try_number"] == 1 and tis["rollback"]["state"] == "success"  # no retry
    plan = api.xcom(DAG, run_id, "validate_and_lock", "plan")
    assert plan["copy_timeout_s"] == 60 and plan["copy_deadline_basis"] == "copy_timeout_s=60 as given (1 min)"
    log = api.task_log(DAG, run_id, "host_copy", 1)
    # each slice's first progress line: where it went on from (the one before's checkpoint), at no rate yet
    resumed = [float(p) for p in re.findall(r"host copy: copying: +([\d.]+)% \(\d+/\d+ MiB\) at 0\.0 MiB/s", log)]
    assert len(resumed) >= 3 and resumed == sorted(set(resumed)) and resumed[0] == 0.0, resumed
    assert log.count("slice ended at") == len(resumed) - 1 and "the copy deadline" in log
    assert "deleted by Cinder" in logs_of(api, run_id, "rollback", tis)
    v = admin.get_volume(vid)
    assert (v["status"], v["migration_status"], v["os-vol-host-attr:host"]) == ("available", "error", source)
    reason = v["metadata"]["async_migration_error"]
    assert re.match(rf"host_copy: .*host copy of volume {vid}: the copy deadline .* UTC has passed \(copy_timeout_s"
                    r"=60 as given \(1 min\)\), [\d.]+% copied", reason), reason  # fmt: skip
    assert wait_until(lambda: luns(lab)["alpha"] == alpha_before, 60, 0.5), luns(lab)["alpha"]
    assert model.mismatches(content_on(lab, "beta", lun)) == []


def test_a_64_gib_volume_at_1_mib_s_gets_a_derived_deadline_and_its_host_copy_runs_in_slices(admin, ceph, api,
                                                                                               volume):  # fmt: skip
    """A sparse 64 GiB volume (on Ceph: thin pools under Cinder's RBD driver; the lab arrays' pools are 40 GiB)
    with 36 MiB of data, host-copied to the other Ceph pool at speed_mib=1 in slices of task_timeout_s=10: the plan
    derives its deadline from size and speed (36 h 40 min, not a fixed day), the copy runs in slices that go on
    from each other's checkpoints (one try, rescheduled), and the volume arrives whole."""
    vol = volume("ceph-hdd", size=64)
    vid, lun = vol["id"], f"volume-{vol['id']}"
    offsets = [i * 8 * GiB for i in range(8)] + [64 * GiB - 4 * MiB]  # 36 MiB: over 30 s at 1 MiB/s
    blocks = {off: random.Random(off).randbytes(4 * MiB) for off in offsets}
    for off, data in blocks.items():
        ceph.write_image(CEPH_POOLS["ceph-hdd"], lun, data, off)
    dest = f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
    conf = {"volume_id": vid, "dest_host": dest, "force_host_copy": True, "speed_mib": 1, "task_timeout_s": 10}
    run_id, state, tis = run_and_wait(api, conf)
    plan = api.xcom(DAG, run_id, "validate_and_lock", "plan")
    lock_log = api.task_log(DAG, run_id, "validate_and_lock", 1)
    print(
        "\nplan:", {k: plan[k] for k in ("size", "speed_mib", "copy_timeout_s", "copy_deadline", "copy_deadline_basis")}
    )
    assert state == "success", states(tis)
    assert plan["copy_timeout_s"] == 2 * 64 * 1024 + 15 * 60
    assert plan["copy_deadline_basis"] == "derived: 64 GiB at speed_mib=1 is 18 h 12 min, x2 + 15 min = 36 h 40 min"
    line = f"the copy must be complete by {deadline_text(plan['copy_deadline'])} ({plan['copy_deadline_basis']})"
    assert line in lock_log, lock_log[-2000:]
    assert tis["host_copy"]["try_number"] == 1, states(tis)
    log = api.task_log(DAG, run_id, "host_copy", 1)
    slices = re.findall(r"slice ended at \d+, [\d.]+% copied", log)
    print("slices:", slices)
    assert len(slices) >= 2, log[-3000:]  # at 1 MiB/s, 36 MiB take three 10 s slices or more
    v = admin.get_volume(vid)
    assert (v["migration_status"], v["os-vol-host-attr:host"]) == ("success", dest)
    for off, data in blocks.items():
        assert ceph.read_image(CEPH_POOLS["ceph-ssd"], lun_of(v), off, len(data)) == data, off
    assert ceph.read_image(CEPH_POOLS["ceph-ssd"], lun_of(v), 12 * GiB, MiB) == bytes(MiB)


# ---- dead processes ----------------------------------------------------------------------------
def worker_of(ti):
    """The task's process and the LocalExecutor worker that supervises it."""
    pid = ti["pid"]
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    return pid, parent


def test_run_completes_after_the_worker_and_the_triggerer_die(lab, admin, services, api, airflow, volume):
    """SIGKILL the worker in the middle of target_takeover, then the triggerer during the wait. The takeover runs in
    alpha's cinder-volume: it goes on without the worker, and the task's retry reads its outcome."""
    vol = volume("beta")
    vid, lun, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@alpha#pool1"
    model = seed(lab, "beta", lun)
    alpha_api = lab.pid("alpha")
    run_id = api.trigger(DAG, {"volume_id": vid, "dest_host": dest, "speed_mib": 24})

    # freeze alpha's management API once validation is over: alpha's cinder-volume then hangs in its first call,
    # and the takeover task waits for its outcome
    assert wait_until(lambda: api.task_instances(DAG, run_id)["validate_and_lock"]["state"] == "success", 120, 0.1)
    os.kill(alpha_api, signal.SIGSTOP)
    try:
        assert wait_until(lambda: api.task_instances(DAG, run_id)["target_takeover"]["state"] == "running", 60, 0.2)
        time.sleep(3)  # well inside its call to alpha
        task, worker = worker_of(api.task_instances(DAG, run_id)["target_takeover"])
        for pid in (task, worker):
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(task) and not pid_alive(worker), 10)
    finally:
        os.kill(alpha_api, signal.SIGCONT)

    assert wait_until(lambda: state_of(admin, vid)[1] == "migrating_attachable", 180, 1.0), state_of(admin, vid)
    taken_over = lab.backend("alpha").get_lun(lun)
    assert taken_over["copy"]

    # the task's retry (once the scheduler found it dead) reads the outcome; the wait is deferred: kill the
    # triggerer that runs it and start another
    assert wait_until(lambda: api.task_instances(DAG, run_id)["wait_for_copy"]["state"] == "deferred", 180, 0.5)
    assert api.task_instances(DAG, run_id)["target_takeover"]["try_number"] >= 2
    handle = verify.connect(lab.backend("alpha").export_lun(lun).uri)
    stats = verify.random_io(handle, model, 100, random.Random(5), max_size=128 * 1024)
    handle.flush()
    model.flushed()
    handle.shutdown()
    lab.backend("alpha").unexport_lun(lun)
    assert not stats.errors and not stats.mismatches
    triggerer = airflow.pid("triggerer")
    os.killpg(triggerer, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(triggerer), 10)
    airflow.pid_path("triggerer").unlink()
    airflow.start("triggerer")

    assert api.wait_run(DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    tis = api.task_instances(DAG, run_id)
    assert tis["wait_for_copy"]["state"] == "success"
    assert lab.backend("alpha").get_lun(lun)["created"] == taken_over["created"]  # one takeover, never redone
    assert_migrated(lab, admin, services, vid, dest, model, "beta")


@pytest.mark.executors("local")
def test_killing_the_idle_worker_that_reads_the_task_queue_holds_up_no_task(airflow, api):
    """The idle LocalExecutor worker blocked in read() on the task queue holds the queue's read lock. SIGKILL it:
    the next run starts and succeeds. With Airflow's own LocalExecutor (a semaphore that nobody gives back) its
    first task stayed queued until the scheduler restarted."""
    airflow.wait_dags((FLOOR_DAG,), 120)
    reader = airflow.idle_worker_reading_tasks()
    assert reader, "no idle LocalExecutor worker in read()"
    os.kill(reader, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(reader), 10)
    run_id = api.trigger(FLOOR_DAG, {})
    assert api.wait_run(FLOOR_DAG, run_id, 60)["state"] == "success"
    assert wait_until(lambda: airflow.idle_worker_reading_tasks() not in (None, reader), 10)  # another one reads


def test_a_run_cleared_during_the_copy_resumes_without_a_second_takeover(lab, admin, services, api, volume):
    """Clear the whole run while it waits (as after losing a worker host): it starts over and finishes the same move."""
    vol = volume("beta")
    vid, lun, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@alpha#pool1"
    model = seed(lab, "beta", lun)
    run_id = api.trigger(DAG, {"volume_id": vid, "dest_host": dest, "speed_mib": 24})
    assert wait_until(lambda: api.task_instances(DAG, run_id)["wait_for_copy"]["state"] == "deferred", 120, 0.5)
    taken_over = lab.backend("alpha").get_lun(lun)
    assert taken_over["copy"] and state_of(admin, vid) == ("available", "migrating_attachable", dest)
    assert "validate_and_lock" in api.clear_run(DAG, run_id)

    assert api.wait_run(DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    tis = api.task_instances(DAG, run_id)
    assert tis["validate_and_lock"]["try_number"] == 2  # it ran again: the lock was the run's own
    assert tis["target_takeover"]["try_number"] == 2  # found its takeover, and the volume attachable already
    assert lab.backend("alpha").get_lun(lun)["created"] == taken_over["created"]  # the same takeover
    assert_migrated(lab, admin, services, vid, dest, model, "beta")


@pytest.mark.executors("celery")
@pytest.mark.on_celery_in_ci
def test_host_copy_resumes_on_the_other_worker_after_its_worker_host_dies(lab, admin, services, api, airflow, volume):
    """SIGKILL every process of the Celery worker that runs host_copy (its host is gone) once a checkpoint is saved:
    the retry runs on the other worker, starts from the checkpoint (first progress above 0%), the data is intact."""
    vol = volume("alpha")
    vid, lun, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@gamma#pool1"
    model = seed(lab, "alpha", lun)  # 128 MiB of data, one MiB in every 8: at 4 MiB/s ~32 s, a checkpoint every ~2 s
    run_id = api.trigger(DAG, {"volume_id": vid, "dest_host": dest, "speed_mib": 4})
    checkpoints = airflow.root / "migration-state"

    def saved_offset():
        found = [json.loads(p.read_text())["offset"] for p in checkpoints.glob(f"{lun}.*.checkpoint")]
        return max(found, default=0)

    assert wait_until(lambda: saved_offset() >= 256 * MiB, 120, 0.2), f"no checkpoint past 256 MiB in {checkpoints}"
    assert_progress_in_cinder(admin, services, vid)
    first = api.task_instances(DAG, run_id)["host_copy"]
    worker = airflow.component_of(first["pid"])
    assert worker in CELERY_WORKERS, f"host_copy's process {first['pid']} is in no Celery worker: {worker}"
    tree = process_tree(airflow.pid(worker))
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(pid_alive(p) for p in tree), 10)
    airflow.pid_path(worker).unlink()
    killed_at = saved_offset()
    other = next(w for w in CELERY_WORKERS if w != worker)
    try:
        # the scheduler notices the dead worker (heartbeat timeout, 30 s) and retries host_copy; the copy, paced,
        # still runs for many seconds: long enough to see which worker's process runs it
        ti = {}

        def retried():
            ti.update(api.task_instances(DAG, run_id)["host_copy"])
            return ti["try_number"] >= 2 and ti["state"] == "running" and bool(ti["pid"])

        assert wait_until(retried, 180, 0.5), ti
        assert airflow.component_of(ti["pid"]) == other
        assert api.wait_run(DAG, run_id, RUN_TIMEOUT)["state"] == "success"
        retry = api.task_instances(DAG, run_id)["host_copy"]
        assert retry["state"] == "success" and retry["try_number"] == ti["try_number"]
        log = api.task_log(DAG, run_id, "host_copy", retry["try_number"])
        first_progress = re.search(r"host copy: copying:\s+([\d.]+)%", log)
        assert first_progress and float(first_progress.group(1)) > 0, log
        resumed = int(re.search(r"resumed_from=(\d+)", log).group(1))
        assert resumed >= killed_at > 0, (resumed, killed_at)
        assert_migrated(lab, admin, services, vid, dest, model, "alpha")
    finally:
        airflow.start(worker)  # the host comes back
