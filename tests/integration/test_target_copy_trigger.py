"""The copy trigger against a real takeover through Cinder: the view it reads comes from alpha's cinder-volume."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from include.cinder_plugin.names import PROGRESS_KEY, TargetStep
from lab.procutil import wait_until
from lab.services.cinder import CINDER_HOST
from plugins.migration_runtime import CINDER_CONN_ID
from plugins.triggers.target_copy import TargetCopyTrigger

pytestmark = pytest.mark.integration

OWNER = "test:copy-trigger"


def test_trigger_yields_done_when_the_real_copy_ends_and_reports_progress_to_cinder(
    services, admin, volume, monkeypatch, tmp_path
):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CINDER_CONN_ID.upper()}", json.dumps(services.cinder_connection("admin")))
    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path))
    vid = volume("gamma")["id"]
    deadline = int(time.time()) + 120
    assert admin.begin_migration(vid, f"{CINDER_HOST}@alpha#pool1", OWNER, deadline)["deadline"] == deadline
    again = admin.begin_migration(vid, f"{CINDER_HOST}@alpha#pool1", OWNER, deadline + 3600)  # a retry's lock
    assert again["deadline"] == admin.migration(vid)["deadline"] == deadline  # kept as the first begin set it
    admin.target_migrate(vid, OWNER, speed_mib=128)
    assert wait_until(lambda: admin.migration(vid)["target_step"] != TargetStep.RUNNING, 120, 0.5)
    assert admin.migration(vid)["target_step"] == TargetStep.ATTACHABLE
    trigger = TargetCopyTrigger(vid, backend="alpha", poll_interval=0.2, deadline=deadline, owner=OWNER)

    async def collect():
        return [event async for event in trigger.run()]

    events = asyncio.run(asyncio.wait_for(collect(), 150))
    assert [e.payload["status"] for e in events] == ["done"]
    assert events[0].payload["progress"]["bytes_done"] == events[0].payload["progress"]["bytes_total"] > 0
    assert (admin.get_volume(vid).get("metadata") or {}).get(PROGRESS_KEY, "").startswith("done: 100.0%")
    admin.finish_migration(vid)
    assert admin.migration(vid)["migration_status"] == "success"
