"""The operator view (``plugins/operator_view*.py``) in the lab's real api-server, on a real throttled copy.

Every route asks for Airflow's login and the DAG permission: anonymous and
forged requests are refused (401), the page sends a browser to the login
page, a viewer may watch but not pause (403). An admin watches a takeover's
copy move, pauses it (the array reports ``paused`` and the copy stops),
resumes it and changes its speed (the measured rate follows), through the
view's API, and the run ends as it would have.
"""

from __future__ import annotations

import http.client
import random
import time
import urllib.parse
from dataclasses import dataclass

import pytest

from include.backends.base import GiB, MiB, MigrationState, Volume
from include.cinder_plugin.names import ERROR_KEY
from include.migration.steps import MIGRATION_DAG, Step
from lab import verify
from lab.localhttp import http_call
from lab.procutil import wait_until
from lab.services.airflow_api import AirflowError
from lab.services.cinder import CINDER_HOST
from plugins.operator_view import URL_PREFIX
from tests.integration.conftest import CONNECTOR, wait_status
from tests.integration.migration_runs import RUN_TIMEOUT, assert_migrated, content_on, run_and_wait, seed

pytestmark = pytest.mark.integration

ROWS = "/api/migrations"


def view(api, method, path, body=None, **kw):
    return api.request(method, path, body, under=URL_PREFIX, **kw)


def row_of(api, run_id):
    rows = {row["run_id"]: row for row in view(api, "GET", ROWS)["migrations"]}
    return rows.get(run_id)


def status_of(call):
    with pytest.raises(AirflowError) as refused:
        call()
    return refused.value.status


def test_every_route_needs_a_login_and_the_dag_permission(airflow, api):
    base = f"{airflow.url}{URL_PREFIX}"
    some_run = urllib.parse.quote("manual__2026-01-01T00:00:00+00:00", safe="")
    anonymous = [("GET", f"{base}{ROWS}", None), ("POST", f"{base}{ROWS}/{some_run}/pause", {})]
    for method, url, body in anonymous:
        for headers in ({}, {"Authorization": "Bearer forged.jwt.token"}, {"Cookie": "_token=forged"}):
            status, _, raw = http_call(method, url, body=body, headers=headers)
            assert status == 401, (method, url, headers, raw[:200])
    # a browser without a login is sent to Airflow's login page, and back here after it
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(airflow.url).netloc, timeout=30)
    conn.request("GET", f"{URL_PREFIX}/")
    answer = conn.getresponse()
    assert answer.status == 303 and "/login?next=" in answer.getheader("Location"), answer.getheader("Location")
    assert urllib.parse.quote(URL_PREFIX, safe="") in answer.getheader("Location")
    conn.close()

    # a viewer may read, not act
    viewer = airflow.viewer_api
    assert "migrations" in view(viewer, "GET", ROWS)
    assert status_of(lambda: view(viewer, "POST", f"{ROWS}/{some_run}/pause", {})) == 403
    # the admin may act; this run does not exist
    assert status_of(lambda: view(api, "POST", f"{ROWS}/{some_run}/pause", {})) == 404
    # the page itself, with the UI's cookie
    status, headers, raw = http_call("GET", f"{base}/", headers={"Cookie": f"_token={api.token()}"})
    assert status == 200 and b"<title>Volume migrations</title>" in raw
    # and Airflow lists the page in its menu
    plugins = {p["name"]: p for p in api.request("GET", "/plugins")["plugins"]}
    entry = plugins["volume_migration_operator_view"]
    assert [v["href"] for v in entry["external_views"]] == ["volume-migration/"]
    assert [a["url_prefix"] for a in entry["fastapi_apps"]] == [URL_PREFIX]


def measured_rate(array, volume, seconds=4.0):
    """MiB/s the copy advances over ``seconds``, from the array's own counter."""
    first = array.complete_migration_target(volume)
    time.sleep(seconds)
    second = array.complete_migration_target(volume)
    return (second.bytes_done - first.bytes_done) / MiB / seconds, second


@dataclass
class Copying:
    """A seeded 1 GiB volume moving from beta to alpha#pool1, its run waiting (deferred) for the array's copy."""

    volume: dict
    run_id: str
    model: verify.DataModel
    dest: str = f"{CINDER_HOST}@alpha#pool1"

    @property
    def lun(self):
        return f"volume-{self.volume['id']}"


def start_copy(lab, api, volume, **conf):
    vol = volume("beta")
    model = seed(lab, "beta", f"volume-{vol['id']}")
    copying = Copying(vol, "", model)
    copying.run_id = api.trigger(MIGRATION_DAG, {"volume_id": vol["id"], "dest_host": copying.dest, **conf})

    def waiting():
        return api.task_instances(MIGRATION_DAG, copying.run_id)[Step.WAIT_FOR_COPY]["state"] == "deferred"

    assert wait_until(waiting, 120, 0.5)
    return copying


def test_pause_resume_and_speed_of_a_running_copy(lab, admin, services, api, airflow, volume):
    copying = start_copy(lab, api, volume, speed_mib=8)
    vid, lun, dest, model, run_id = copying.volume["id"], copying.lun, copying.dest, copying.model, copying.run_id
    alpha, copied = lab.backend("alpha"), Volume(lun, GiB)
    row = {}

    def shown(**want):
        row.clear()
        row.update(row_of(api, run_id) or {})
        return all(row.get(k) == v for k, v in want.items())

    # the view shows the copy moving: takeover path, a percent that grows, a rate near the throttle
    assert wait_until(lambda: shown(copy_state="copying") and (row["rate_mib_s"] or 0) > 0, 30, 1.0), row
    assert (row["volume_id"], row["dest"], row["state"]) == (vid, dest, "running")
    assert row["source"].startswith(f"{CINDER_HOST}@beta#") and row["path"] == "takeover (target driver)"
    assert row["controls"] == ["pause", "speed"]
    first_percent = row["percent"]
    assert wait_until(lambda: shown() and row["percent"] > first_percent, 20, 1.0), row
    rate, _ = measured_rate(alpha, copied)
    assert 4 <= rate <= 12, rate  # 8 MiB/s asked

    # pause: the array says paused, the copy stops, the view shows it and offers resume
    answer = view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/pause", {})
    assert answer["progress"]["state"] == "paused" and answer["by"] == "admin"
    assert alpha.complete_migration_target(copied).state is MigrationState.PAUSED
    rate, paused = measured_rate(alpha, copied, 3.0)
    assert rate == 0, rate
    assert wait_until(lambda: shown(copy_state="paused") and row["rate_mib_s"] == 0, 30, 1.0), row
    assert row["controls"] == ["resume", "speed"]
    refused = status_of(lambda: view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/pause", {}))
    assert refused == 409  # already paused
    refused = status_of(lambda: view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/abandon", {}))
    assert refused == 409  # a stream copy: the target has writes the source has not
    assert alpha.complete_migration_target(copied).state is MigrationState.PAUSED

    # resume, and a new speed: the measured rate follows it
    view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/resume", {})
    assert alpha.complete_migration_target(copied).state is MigrationState.COPYING
    view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/speed", {"speed_mib": 32})
    time.sleep(2)  # the array's throttle settles
    rate, after = measured_rate(alpha, copied)
    assert after.bytes_done > paused.bytes_done
    assert 20 <= rate <= 40, rate  # 32 MiB/s asked, 4x the first
    assert status_of(lambda: view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/speed", {})) == 422

    # unthrottled to the end: the run finishes as any run does, and the view says so
    view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/speed", {"speed_mib": 0})
    assert api.wait_run(MIGRATION_DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    assert shown(state="success", copy_state="done", percent=100.0, controls=[]), row
    assert status_of(lambda: view(api, "POST", f"{ROWS}/{urllib.parse.quote(run_id, safe='')}/resume", {})) == 409
    assert_migrated(lab, admin, services, vid, dest, model, "beta")


def test_abandon_a_mirror_before_its_switch_over_loses_no_write(lab, admin, services, api, airflow, volume):
    """A client writes through Cinder during a mirror-mode copy, detaches; the operator abandons: the volume is
    back on its source with every write, the target LUN is gone, the run failed with a note saying who."""
    copying = start_copy(lab, api, volume, speed_mib=2, copy_mode="mirror")
    vid, lun, dest, model, run_id = copying.volume["id"], copying.lun, copying.dest, copying.model, copying.run_id
    source_host = copying.volume["os-vol-host-attr:host"]
    run = urllib.parse.quote(run_id, safe="")

    att = admin.request("POST", "/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR}})
    info = att["attachment"]["connection_info"]
    assert info["port"] == lab.config("alpha").nbd_port  # the client uses the destination's export
    handle = verify.connect(info["uri"])
    stats = verify.random_io(handle, model, 200, random.Random(23), max_size=256 * 1024)
    handle.flush()
    model.flushed()
    handle.shutdown()
    assert not stats.errors and not stats.mismatches and stats.writes > 50, stats
    admin.request("POST", f"/attachments/{att['attachment']['id']}/action", {"os-complete": {}})
    wait_status(admin, vid, "in-use")
    # attached: refused, and nothing changes
    assert status_of(lambda: view(api, "POST", f"{ROWS}/{run}/abandon", {})) == 409
    assert alpha_copy(lab, lun).state is MigrationState.COPYING
    admin.request("DELETE", f"/attachments/{att['attachment']['id']}")
    wait_status(admin, vid, "available")

    assert "abandon" in row_of(api, run_id)["controls"]
    answer = view(api, "POST", f"{ROWS}/{run}/abandon", {})
    assert answer["done"] == f"abandoned: copy given up on alpha, volume back on {source_host}", answer
    v = admin.get_volume(vid)
    assert (v["status"], v["migration_status"], v["os-vol-host-attr:host"]) == ("available", "error", source_host)
    assert v["metadata"][ERROR_KEY].startswith("abandoned by admin"), v["metadata"]
    assert lun not in {x["name"] for x in lab.backend("alpha").list_luns()}
    assert not lab.backend("beta").get_lun(lun)["takeover_export"]
    # every write the client made through the destination is on the source
    assert model.mismatches(content_on(lab, "beta", lun)) == []
    ended = api.wait_run(MIGRATION_DAG, run_id, 60)
    assert ended["state"] == "failed" and "abandoned by admin" in ended["note"], ended
    assert row_of(api, run_id)["controls"] == []
    # and the volume can be used and moved again
    again, state, _ = run_and_wait(api, {"volume_id": vid, "dest_host": dest})
    assert state == "success"
    assert model.mismatches(content_on(lab, "alpha", lun)) == []


def alpha_copy(lab, lun):
    return lab.backend("alpha").complete_migration_target(Volume(lun, GiB))
