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
import time
import urllib.parse

import pytest

from include.backends.base import GiB, MiB, MigrationState, Volume
from include.migration.steps import MIGRATION_DAG, Step
from lab.localhttp import http_call
from lab.procutil import wait_until
from lab.services.airflow_api import AirflowError
from lab.services.cinder import CINDER_HOST
from plugins.operator_view import URL_PREFIX
from tests.integration.test_volume_migration import RUN_TIMEOUT, assert_migrated, seed

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


def test_pause_resume_and_speed_of_a_running_copy(lab, admin, services, api, airflow, volume):
    vol = volume("beta")
    vid, lun, dest = vol["id"], f"volume-{vol['id']}", f"{CINDER_HOST}@alpha#pool1"
    model = seed(lab, "beta", lun)
    run_id = api.trigger(MIGRATION_DAG, {"volume_id": vid, "dest_host": dest, "speed_mib": 8})
    assert wait_until(lambda: api.task_instances(MIGRATION_DAG, run_id)[Step.WAIT_FOR_COPY]["state"] == "deferred",
                      120, 0.5)  # fmt: skip
    alpha, copied = lab.backend("alpha"), Volume(lun, GiB)
    row = {}

    def shown(**want):
        row.clear()
        row.update(row_of(api, run_id) or {})
        return all(row.get(k) == v for k, v in want.items())

    # the view shows the copy moving: takeover path, a percent that grows, a rate near the throttle
    assert wait_until(lambda: shown(copy_state="copying") and (row["rate_mib_s"] or 0) > 0, 30, 1.0), row
    assert (row["volume_id"], row["dest"], row["state"]) == (vid, dest, "running")
    assert row["source"].endswith("@beta#pool1") and row["path"] == "takeover (target driver)"
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
