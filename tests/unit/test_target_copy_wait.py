"""TargetCopyTrigger and TargetCopySensor, with a scripted adapter at the hook boundary."""

from __future__ import annotations

import asyncio

import pytest
from airflow.exceptions import AirflowException, TaskDeferred

from include.backends.base import MigrationProgress, MigrationState
from include.backends.errors import ArrayUnavailable, NotFound
from plugins.sensors.target_copy import TargetCopySensor
from plugins.triggers.target_copy import LONGEST_POLL_S, TargetCopyTrigger, next_poll_s
from tests.unit.test_cinder_progress import RecordingCinder

GiB = 1 << 30


def progress(state, done=0):
    return MigrationProgress(MigrationState(state), done, GiB, 64 << 20, 10.0, "")


class ScriptedAdapter:
    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def complete_migration_target(self, volume):
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


@pytest.fixture
def adapter(monkeypatch):
    holder = {}

    async def aadapter(self):
        return holder["adapter"]

    monkeypatch.setattr("plugins.hooks.storage_array.StorageArrayHook.aadapter", aadapter)
    return holder


def events(trigger):
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), 10))


def test_serialize_round_trip():
    trigger = TargetCopyTrigger(
        "alpha", "volume-1", GiB, poll_interval=0.5, timeout_s=60, started_at=100.0, volume_id="v-1", owner="run"
    )
    path, kwargs = trigger.serialize()
    assert path == "plugins.triggers.target_copy.TargetCopyTrigger"
    assert TargetCopyTrigger(**kwargs).serialize() == (path, kwargs)
    assert (kwargs["volume_id"], kwargs["owner"]) == ("v-1", "run")


class ProgressCinder(RecordingCinder):
    """The Cinder hook as the trigger uses it: fetched asynchronously first, then called in a thread."""

    connected = False

    async def aconnect(self):
        self.connected = True


def test_the_wait_reports_progress_to_cinder_once_per_period(adapter, monkeypatch):
    cinder = ProgressCinder()
    monkeypatch.setattr("plugins.triggers.target_copy.progress_cinder", lambda: cinder)
    polls = [progress("copying", i << 20) for i in range(1, 30)] + [progress("done", GiB)]
    adapter["adapter"] = ScriptedAdapter(polls)
    got = events(
        TargetCopyTrigger(
            "alpha", "volume-1", GiB, poll_interval=0.01, longest_poll_s=0.01, volume_id="v-1", owner="run"
        )
    )
    assert [e.payload["status"] for e in got] == ["done"]
    assert cinder.connected
    reported = [body["os-async_migration_progress"]["progress"] for _, _, body in cinder.sent]
    # 30 polls within a fraction of a second: the first one, then only the change to done
    assert reported == [polls[0].describe(), polls[-1].describe()]


def test_without_a_volume_id_nothing_goes_to_cinder(adapter, monkeypatch):
    monkeypatch.setattr("plugins.triggers.target_copy.progress_cinder", lambda: pytest.fail("Cinder was called"))
    adapter["adapter"] = ScriptedAdapter([progress("done", GiB)])
    assert [e.payload["status"] for e in events(TargetCopyTrigger("alpha", "volume-1", GiB))] == ["done"]


def test_one_done_event_after_progress_and_an_outage(adapter):
    adapter["adapter"] = ScriptedAdapter(
        [progress("copying", 1), ArrayUnavailable("restarting"), progress("copying", GiB // 2), progress("done", GiB)]
    )
    got = events(TargetCopyTrigger("alpha", "volume-1", GiB, poll_interval=0.01, longest_poll_s=0.01))
    assert [e.payload["status"] for e in got] == ["done"]
    assert got[0].payload["progress"]["bytes_done"] == GiB


@pytest.mark.parametrize(
    ("script", "status"),
    [([progress("failed")], "failed"), ([NotFound("no LUN named volume-1")], "failed")],
)
def test_failure_is_one_failed_event(adapter, script, status):
    adapter["adapter"] = ScriptedAdapter(script)
    got = events(TargetCopyTrigger("alpha", "volume-1", GiB, poll_interval=0.01, longest_poll_s=0.01))
    assert [e.payload["status"] for e in got] == [status]


def test_timeout_is_one_event(adapter):
    adapter["adapter"] = ScriptedAdapter([progress("copying", 5)])
    got = events(TargetCopyTrigger("alpha", "volume-1", GiB, poll_interval=0.01, longest_poll_s=0.01, timeout_s=0.05))
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert got[0].payload["progress"]["bytes_done"] == 5


def look(state, eta):
    return MigrationProgress(MigrationState(state), GiB // 2, GiB, 64 << 20, eta, "")


@pytest.mark.parametrize(
    ("progress_", "expected"),
    [
        (look("copying", 4000.0), LONGEST_POLL_S),  # far from the end: the longest
        (look("copying", 40.0), 10.0),  # a quarter of what is left
        (look("copying", 8.0), 5.0),  # near the end: the base interval
        (look("paused", 8.0), LONGEST_POLL_S),
        (look("waiting_for_source", None), LONGEST_POLL_S),
        (look("copying", None), LONGEST_POLL_S),  # no rate yet
        (None, 5.0),  # the last look failed (array unreachable): look again soon
    ],
    ids=["far", "quarter", "near", "paused", "waiting", "no-eta", "failed-look"],
)
def test_a_copy_is_looked_at_more_often_as_its_end_nears(progress_, expected):
    assert next_poll_s(progress_, 5.0) == expected
    assert next_poll_s(progress_, 60.0) == 60.0  # never more often than the sensor's poll_interval


def test_a_paused_copy_is_logged_once_a_minute_not_at_every_look(adapter, capsys):
    adapter["adapter"] = ScriptedAdapter([progress("paused", 5)] * 40 + [progress("copying", 6), progress("done", GiB)])
    got = events(TargetCopyTrigger("alpha", "volume-1", GiB, poll_interval=0.001, longest_poll_s=0.001))
    assert [e.payload["status"] for e in got] == ["done"] and adapter["adapter"].calls == 42
    out = capsys.readouterr().out  # the triggers' log lines (structlog writes them to stdout here)
    states = [line.split("copy of volume-1 on alpha: ")[1].split(":")[0] for line in out.splitlines()
              if "copy of volume-1 on alpha: " in line]  # fmt: skip
    assert states == ["paused", "copying", "done"]


def test_sensor_defers_and_resumes():
    sensor = TargetCopySensor(task_id="wait", backend="alpha", volume_name="volume-1", size=str(GiB))
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert isinstance(deferred.value.trigger, TargetCopyTrigger)
    assert deferred.value.trigger.size == GiB and deferred.value.method_name == "execute_complete"
    done = progress("done", GiB).to_json()
    assert sensor.execute_complete({}, {"status": "done", "progress": done}) == done
    with pytest.raises(AirflowException, match="ended timeout"):
        sensor.execute_complete({}, {"status": "timeout", "progress": progress("copying").to_json()})
    with pytest.raises(AirflowException, match="ended failed: no LUN"):
        sensor.execute_complete({}, {"status": "failed", "message": "no LUN"})
