"""The copy trigger against a real takeover on the lab arrays (Connection from the environment)."""

from __future__ import annotations

import asyncio
import json

import pytest

from include.backends.base import MiB, Volume
from plugins.hooks.storage_array import conn_id_for
from plugins.triggers.target_copy import TargetCopyTrigger

pytestmark = pytest.mark.integration


def test_trigger_yields_done_when_the_real_copy_ends(lab, make_lun, lun_name, monkeypatch):
    config = lab.config("alpha")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id_for('alpha').upper()}",
        json.dumps({"conn_type": "storage_array", "host": config.url, "password": config.token,
                    "extra": {"kind": "reference"}}),
    )  # fmt: skip
    make_lun("gamma", lun_name, 32 * MiB)
    volume = Volume(lun_name, 32 * MiB)
    lab.backend("alpha").migrate_volume_target(volume, lab.backend("gamma"), pool="pool1", speed_bps=16 * MiB)
    trigger = TargetCopyTrigger("alpha", lun_name, volume.size, poll_interval=0.2, timeout_s=60)

    async def collect():
        return [event async for event in trigger.run()]

    events = asyncio.run(asyncio.wait_for(collect(), 90))
    assert [e.payload["status"] for e in events] == ["done"]
    assert events[0].payload["progress"]["bytes_done"] == volume.size
    alpha = lab.backend("alpha")
    alpha.unexport_lun(lun_name)
    alpha.delete_lun(lun_name)
