"""Real Cinder 29 with the lab drivers and the async-migration extension, through Keystone.

The hook (plugins/hooks/cinder.py) is the client: the same code the DAG uses.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid

import pytest

from include.backends.base import GiB, MiB, MigrationState, Volume
from include.cinder_plugin.names import ALIAS, ASYNC_TARGET_CAPABILITY, MANAGER_CAPABILITY
from include.migration.errors import CinderError
from lab import verify
from lab.errors import LabError
from lab.procutil import pid_alive, wait_until
from lab.services.cinder import CINDER_HOST
from tests.integration.conftest import CONNECTOR, cinder_cli, wait_status

pytestmark = pytest.mark.integration


def provisioned_gb(hook):
    pools = hook.request("GET", "/scheduler-stats/get_pools?detail=true")["pools"]
    # Cinder's RBD driver on a pool of its own (Ceph's) leaves this figure to the scheduler: the pools that say it
    said = [(p["name"], p["capabilities"].get("provisioned_capacity_gb")) for p in pools]
    return {name: gb for name, gb in said if gb is not None}


def array_gb(lab, host):
    """GiB the array behind ``host`` (lab@array#pool) holds in that pool, by LUN size."""
    array, pool = host.split("@")[1].split("#")
    return sum(lun["size"] for lun in lab.backend(array).list_luns() if lun["pool"] == pool) // GiB


def lun_of(lab, vol):
    array = vol["os-vol-host-attr:host"].split("@")[1].split("#")[0]
    return array, lab.backend(array).get_lun(f"volume-{vol['id']}")


def test_create_extend_delete_on_each_array(lab, admin, volume):
    for az in ("alpha", "beta", "gamma"):
        vol = volume(az)
        host = vol["os-vol-host-attr:host"]
        assert host.startswith(f"{CINDER_HOST}@{az}#pool")
        array, lun = lun_of(lab, vol)
        assert (array, lun["size"], lun["pool"]) == (az, GiB, host.split("#")[1])
        admin.action(vol["id"], "os-extend", {"new_size": 2})
        wait_status(admin, vol["id"], "available")
        assert wait_until(lambda a=array, v=vol: lab.backend(a).get_lun(f"volume-{v['id']}")["size"] == 2 * GiB, 30)
        admin.request("DELETE", f"/volumes/{vol['id']}")
        assert wait_until(lambda a=array, v=vol: all(
            lun["name"] != f"volume-{v['id']}" for lun in lab.backend(a).list_luns()), 60)  # fmt: skip


def test_pools_and_capabilities_reach_the_scheduler(admin):
    pools = admin.request("GET", "/scheduler-stats/get_pools?detail=true")["pools"]
    names = {p["name"] for p in pools}
    assert {f"{CINDER_HOST}@alpha#pool1", f"{CINDER_HOST}@alpha#pool2", f"{CINDER_HOST}@gamma#pool1"} <= names
    alpha1 = next(p for p in pools if p["name"] == f"{CINDER_HOST}@alpha#pool1")["capabilities"]
    assert alpha1["storage_protocol"] == "nbd" and alpha1[ASYNC_TARGET_CAPABILITY] is True
    assert alpha1["total_capacity_gb"] == 40
    # every backend's cinder-volume runs AsyncMigrationManager, which says so in each pool (validate_and_lock checks)
    assert {p["name"]: p["capabilities"].get(MANAGER_CAPABILITY) for p in pools} == dict.fromkeys(names, 1)
    assert ALIAS in admin.extension_aliases()


def test_attachment_gives_nbd_connection_info_that_works(lab, admin, volume):
    vol = volume("gamma")
    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": vol["id"], "connector": CONNECTOR}})
    info = att["attachment"]["connection_info"]
    assert info["driver_volume_type"] == "nbd"
    handle = verify.connect(info["uri"])
    handle.pwrite(b"cinder!" * 512, MiB)
    handle.flush()
    assert handle.pread(7, MiB) == b"cinder!"
    handle.shutdown()
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    assert wait_status(admin, vol["id"], "in-use")["status"] == "in-use"
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    wait_status(admin, vol["id"], "available")
    assert lab.backend("gamma").get_lun(f"volume-{vol['id']}")["exported"] is False


def test_cinder_pool_move_uses_the_driver(lab, admin, volume):
    vol = volume("alpha")
    src_pool = vol["os-vol-host-attr:host"].split("#")[1]
    dest = f"{CINDER_HOST}@alpha#{'pool2' if src_pool == 'pool1' else 'pool1'}"
    admin.action(vol["id"], "os-migrate_volume", {"host": dest, "force_host_copy": False, "lock_volume": True})

    def moved():
        v = admin.get_volume(vol["id"])
        return v["os-vol-host-attr:host"] == dest and v["os-vol-mig-status-attr:migstat"] == "success"

    assert wait_until(moved, 120, 1.0)
    assert lun_of(lab, admin.get_volume(vol["id"]))[1]["pool"] == dest.split("#")[1]


def test_async_migration_transitions(lab, admin, member, services, volume):
    """The extension's state machine alone (no data moves: the LUN stays on gamma and is removed at the end)."""
    vol = volume("gamma")
    vid, src = vol["id"], vol["os-vol-host-attr:host"]
    dest = f"{CINDER_HOST}@alpha#pool1"
    # refused before begin: nothing is migrating
    for action, args in (
        ("os-async_migration_attachable", {"host": dest}),
        ("os-async_migration_finish", {}),
        ("os-async_migration_fail", {"reason": "x"}),
    ):
        with pytest.raises(CinderError) as err:
            admin.action(vid, action, args)
        assert err.value.status in (400, 409), err.value
    with pytest.raises(CinderError, match="already on"):
        admin.begin_migration(vid, src)
    with pytest.raises(CinderError, match="no enabled volume service"):
        admin.begin_migration(vid, f"{CINDER_HOST}@nowhere#pool1")
    with pytest.raises(CinderError, match="host@backend#pool"):
        admin.action(vid, "os-async_migration_begin", {"host": "lab"})
    # a member is refused every action
    for action, args in (
        ("os-async_migration_begin", {"host": dest}),
        ("os-async_migration_attachable", {"host": dest}),
        ("os-async_migration_finish", {}),
        ("os-async_migration_fail", {"reason": "x"}),
    ):
        with pytest.raises(CinderError) as err:
            member.action(vid, action, args)
        assert err.value.status in (403, 404), err.value
    assert admin.get_volume(vid)["os-vol-mig-status-attr:migstat"] in (None, "success", "error")

    admin.begin_migration(vid, dest)
    v = admin.get_volume(vid)
    assert (v["status"], v["os-vol-mig-status-attr:migstat"]) == ("maintenance", "starting")
    with pytest.raises(CinderError, match="already migrating|cannot be migrated"):
        admin.begin_migration(vid, dest)
    with pytest.raises(CinderError, match="migrating to"):
        admin.mark_attachable(vid, f"{CINDER_HOST}@beta#pool1")

    admin.mark_attachable(vid, dest, provider_location="nbd://example/x")
    v = admin.get_volume(vid)
    assert (v["status"], v["os-vol-mig-status-attr:migstat"], v["os-vol-host-attr:host"]) == (
        "available", "migrating_attachable", dest)  # fmt: skip
    assert v["availability_zone"] == "alpha"
    with pytest.raises(CinderError, match="only a migration that is not attachable"):
        admin.fail_migration(vid, "too late")
    code, out = cinder_cli(services, "admin", "show", vid)
    assert code == 0, out
    assert "migrating_attachable" in out and dest in out
    # Cinder's own actions are refused meanwhile
    for call in (
        lambda: admin.request("DELETE", f"/volumes/{vid}"),
        lambda: admin.request("POST", "/snapshots", {"snapshot": {"volume_id": vid, "force": True}}),
        lambda: admin.action(vid, "os-retype", {"new_type": "__DEFAULT__", "migration_policy": "on-demand"}),
        lambda: admin.action(vid, "os-migrate_volume", {"host": f"{CINDER_HOST}@beta#pool1"}),
        lambda: admin.action(vid, "os-extend", {"new_size": 2}),
    ):
        with pytest.raises(CinderError) as err:
            call()
        assert err.value.status in (400, 409), err.value

    admin.finish_migration(vid)
    v = admin.get_volume(vid)
    assert (v["status"], v["os-vol-mig-status-attr:migstat"], v["os-vol-host-attr:host"]) == (
        "available", "success", dest)  # fmt: skip
    with pytest.raises(CinderError):
        admin.finish_migration(vid)
    lab.backend("gamma").delete_lun(f"volume-{vid}")


def test_fail_before_attachable_keeps_host_and_says_why(admin, volume):
    vol = volume("beta")
    vid, src = vol["id"], vol["os-vol-host-attr:host"]
    admin.begin_migration(vid, f"{CINDER_HOST}@alpha#pool2")
    admin.fail_migration(vid, "array alpha unreachable: connection refused")
    v = admin.get_volume(vid)
    assert (v["status"], v["os-vol-mig-status-attr:migstat"], v["os-vol-host-attr:host"]) == ("available", "error", src)
    assert v["metadata"]["async_migration_error"] == "array alpha unreachable: connection refused"
    # it can be migrated again afterwards
    admin.begin_migration(vid, f"{CINDER_HOST}@alpha#pool2")
    assert "async_migration_error" not in admin.get_volume(vid)["metadata"]
    admin.fail_migration(vid, "test cleanup")


def test_attach_during_takeover_is_served_by_the_target(lab, admin, volume):
    """The blueprint end to end by hand: takeover, attachable, attach/detach during the copy, finish."""
    vol = volume("gamma")
    vid = vol["id"]
    name, dest = f"volume-{vid}", f"{CINDER_HOST}@alpha#pool1"
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    src = f"{CINDER_HOST}@gamma#pool1"
    # the scheduler's numbers have caught up with both arrays (the new volume shows on gamma) before we count
    assert wait_until(lambda: all(provisioned_gb(admin)[h] == array_gb(lab, h) for h in (src, dest)), 40, 1.0)
    before = provisioned_gb(admin)
    admin.begin_migration(vid, dest)
    lun = Volume(name, GiB)
    moved, is_async, update = alpha.migrate_volume_target(lun, gamma, pool="pool1", speed_bps=32 * MiB)
    assert (moved, is_async) == (True, True)
    admin.mark_attachable(vid, dest, provider_location=update["provider_location"])

    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR}})
    info = att["attachment"]["connection_info"]
    assert info["port"] == lab.config("alpha").nbd_port  # served by the target's cinder-volume
    handle = verify.connect(info["uri"])
    handle.pwrite(b"during the copy" * 64, 512 * MiB)
    handle.flush()
    assert alpha.complete_migration_target(lun).state is MigrationState.COPYING
    handle.shutdown()
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    assert wait_status(admin, vid, "in-use")["os-vol-mig-status-attr:migstat"] == "migrating_attachable"
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    v = wait_status(admin, vid, "available")  # Cinder alone would leave it in-use
    assert v["os-vol-mig-status-attr:migstat"] == "migrating_attachable"
    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR}})
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    wait_status(admin, vid, "available")

    alpha.set_migration_speed(lun, 0)
    assert wait_until(lambda: alpha.complete_migration_target(lun).state is MigrationState.DONE, 120, 0.5)
    gamma.release_takeover(name)
    gamma.delete_lun(name)
    admin.finish_migration(vid)
    v = admin.get_volume(vid)
    assert (v["os-vol-mig-status-attr:migstat"], v["os-vol-host-attr:host"]) == ("success", dest)
    # the scheduler sees the space move with the volume (the arrays report it)
    assert wait_until(
        lambda: (lambda now: (now[dest], now[src]) == (before[dest] + 1, before[src] - 1))(provisioned_gb(admin)),
        40,
        1.0,
    ), (before, provisioned_gb(admin))
    handle = verify.connect(alpha.export_lun(name).uri)
    assert handle.pread(15 * 64, 512 * MiB) == b"during the copy" * 64
    handle.shutdown()
    alpha.unexport_lun(name)
    # the extend refused during the copy works now, on the new array
    admin.action(vid, "os-extend", {"new_size": 2})
    wait_status(admin, vid, "available")
    assert wait_until(lambda: alpha.get_lun(name)["size"] == 2 * GiB, 30)


def test_extension_check_fails_loudly_when_the_alias_is_missing(cinder, monkeypatch):
    cinder.check_extension()  # loaded: passes
    monkeypatch.setattr("lab.services.cinder.EXTENSION_ALIAS", "os-not-loaded")
    with pytest.raises(LabError, match="did not load the os-not-loaded extension"):
        cinder.check_extension()


def test_hook_rides_through_a_cinder_api_restart_and_raises_4xx_at_once(cinder, admin, volume, caplog):
    vol = volume("alpha")
    caplog.set_level(logging.WARNING, logger="plugins.hooks.cinder")
    with pytest.raises(CinderError) as err:
        admin.get_volume(str(uuid.uuid4()))
    assert err.value.status == 404 and "retrying" not in caplog.text

    pid = cinder.pid("cinder-api")
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10)
    restarter = threading.Timer(3.0, cinder.start, args=("cinder-api",))
    restarter.start()
    try:
        started = time.monotonic()
        assert admin.get_volume(vol["id"])["id"] == vol["id"]  # refused, then answered after the restart
        print(f"get_volume rode through the restart in {time.monotonic() - started:.1f} s")
        assert "retrying" in caplog.text
    finally:
        restarter.join()


def test_tasks_share_one_keystone_token_and_one_keystone_refuses_is_replaced(services, volume, tmp_path):
    """Each task builds its own hook (a new process): with the cache, the second one does not log in."""
    vol = volume("alpha")
    cache = tmp_path / "keystone-tokens"
    first = services.cinder_hook("admin", token_cache=cache)
    assert first.get_volume(vol["id"])["id"] == vol["id"]
    (kept,) = cache.iterdir()
    assert (kept.stat().st_mode & 0o777, cache.stat().st_mode & 0o777) == (0o600, 0o700)
    token = first.session.get_token()
    second = services.cinder_hook("admin", token_cache=cache)
    assert second.session.get_token() == token  # installed from the cache: no login
    assert second.get_volume(vol["id"])["id"] == vol["id"]

    state = json.loads(kept.read_text())
    kept.write_text(json.dumps({**state, "auth_token": "gAAAA-not-a-token"}))  # unexpired, but Keystone refuses it
    third = services.cinder_hook("admin", token_cache=cache)
    assert third.session.get_token() == "gAAAA-not-a-token"
    assert third.get_volume(vol["id"])["id"] == vol["id"]  # Cinder said 401: logged in again, and answered
    renewed = json.loads(kept.read_text())["auth_token"]
    assert renewed not in ("gAAAA-not-a-token", token) and third.session.get_token() == renewed

    kept.write_text("not json")
    fourth = services.cinder_hook("admin", token_cache=cache)
    assert fourth.get_volume(vol["id"])["id"] == vol["id"]  # a broken cache costs a login, never a call
    assert json.loads(kept.read_text())["auth_token"] == fourth.session.get_token()


def test_begin_refuses_in_use_error_and_snapshotted_volumes(admin, volume):
    dest = f"{CINDER_HOST}@alpha#pool2"
    in_use = volume("gamma")
    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": in_use["id"], "connector": CONNECTOR}})
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    wait_status(admin, in_use["id"], "in-use")
    with pytest.raises(CinderError, match="status is in-use, not available") as err:
        admin.begin_migration(in_use["id"], dest)
    assert err.value.status == 400
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    wait_status(admin, in_use["id"], "available")

    broken = volume("gamma")
    admin.action(broken["id"], "os-reset_status", {"status": "error"})
    with pytest.raises(CinderError, match="status is error, not available"):
        admin.begin_migration(broken["id"], dest)
    admin.action(broken["id"], "os-reset_status", {"status": "available"})

    snapped = volume("gamma")
    snap = admin.request("POST", "/snapshots", {"snapshot": {"volume_id": snapped["id"]}})["snapshot"]
    with pytest.raises(CinderError, match="it has snapshots"):
        admin.begin_migration(snapped["id"], dest)
    for v in (in_use, broken, snapped):  # none of them changed
        now = admin.get_volume(v["id"])
        assert now["os-vol-mig-status-attr:migstat"] in (None, "success", "error")
        assert now["os-vol-host-attr:host"] == v["os-vol-host-attr:host"]
    assert wait_until(lambda: admin.request("GET", f"/snapshots/{snap['id']}")["snapshot"]["status"] != "creating", 30)
    admin.request("DELETE", f"/snapshots/{snap['id']}")
    assert wait_until(lambda: not any(
        s["id"] == snap["id"] for s in admin.request("GET", "/snapshots")["snapshots"]), 30)  # fmt: skip


def test_begin_is_owned_a_retry_by_the_owner_passes_and_others_are_refused(lab, admin, volume):
    vol = volume("beta")
    vid, src, dest = vol["id"], vol["os-vol-host-attr:host"], f"{CINDER_HOST}@alpha#pool1"
    assert vid not in admin.migration_locks()
    lock = admin.begin_migration(vid, dest, owner="run-a", deadline=2_000_000_000)
    assert lock == {"source_host": src, "host": dest, "owner": "run-a", "deadline": 2_000_000_000,
                    "migration_status": "starting"}  # fmt: skip
    # the lock is listed by the extension's own resource: who moves it, from where, to where
    listed = admin.migration_locks()[vid]
    assert (listed["source_host"], listed["dest_host"], listed["owner"], listed["migration_status"]) == (
        src, dest, "run-a", "starting")  # fmt: skip
    # and Cinder's own views carry nothing of the extension's
    assert [k for k in admin.get_volume(vid) if "async" in k] == []
    assert [k for v in admin.list_volumes() for k in v if "async" in k] == []
    assert admin.begin_migration(vid, dest, owner="run-a") == lock  # the same run again: nothing changes
    assert admin.begin_migration(vid, dest, owner="run-a", deadline=2_100_000_000) == lock  # its deadline kept
    with pytest.raises(CinderError, match="already migrating"):
        admin.begin_migration(vid, dest, owner="run-b")
    with pytest.raises(CinderError, match="locked by run-a, not run-b") as err:
        admin.fail_migration(vid, "not mine", owner="run-b")
    assert err.value.status == 409
    admin.mark_attachable(vid, dest)
    # once attachable, the owner still gets its lock back (a re-run learns where the volume came from)
    assert admin.begin_migration(vid, dest, owner="run-a")["source_host"] == src
    with pytest.raises(CinderError, match="already migrating"):
        admin.begin_migration(vid, dest, owner="run-b")
    admin.finish_migration(vid)
    v = admin.get_volume(vid)
    assert (v["migration_status"], v["os-vol-host-attr:host"]) == ("success", dest)
    assert vid not in admin.migration_locks()
    lab.backend("beta").delete_lun(f"volume-{vid}")  # state transitions only: the data never moved
