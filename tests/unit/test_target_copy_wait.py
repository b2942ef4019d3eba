"""TargetCopyTrigger and TargetCopySensor, with a scripted Cinder at the hook boundary."""

from __future__ import annotations

import asyncio
import time

import pytest
from airflow.exceptions import AirflowException, TaskDeferred
from airflow.sdk.exceptions import AirflowFailException

from include.backends.base import MigrationProgress, MigrationState
from include.migration.errors import CinderError
from plugins.sensors.target_copy import TargetCopySensor
from plugins.triggers.target_copy import LONGEST_POLL_S, TargetCopyTrigger, next_poll_s

GiB = 1 << 30


def progress(state, done=0):
    return MigrationProgress(MigrationState(state), done, GiB, 64 << 20, 10.0, "")


def view(copy=None, status="migrating_attachable", copy_error=None):
    """The migration as ``CinderApi.migration`` shows it."""
    found = {"volume_id": "v-1", "migration_status": status, "copy": copy.to_json() if copy else None}
    return {**found, "copy_error": copy_error} if copy_error else found


class ScriptedCinder:
    """The Cinder hook as the trigger and the sensor use it: ``migration`` answers the script in turn (its last
    item again and again), raising the CinderErrors in it; ``report_progress`` records what it is told."""

    def __init__(self, script):
        self.script = list(script)
        self.looks = []
        self.reported = []
        self.connected = False

    async def aconnect(self):
        self.connected = True

    def migration(self, volume_id):
        self.looks.append(volume_id)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item

    def report_progress(self, volume_id, progress, owner=None):
        self.reported.append((volume_id, progress, owner))


@pytest.fixture
def cinder(monkeypatch):
    """Set ``cinder["cinder"]`` to a ScriptedCinder: the trigger and the sensor get it from ``progress_cinder``."""
    holder = {}

    def progress_cinder():
        return holder["cinder"]

    monkeypatch.setattr("plugins.triggers.target_copy.progress_cinder", progress_cinder)
    monkeypatch.setattr("plugins.sensors.target_copy.progress_cinder", progress_cinder)
    return holder


def events(trigger):
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), 10))


def fast(**kwargs):
    kwargs.setdefault("deadline", time.time() + 3600)
    return TargetCopyTrigger("v-1", backend="alpha", poll_interval=0.01, longest_poll_s=0.01, **kwargs)


def test_serialize_round_trip():
    trigger = TargetCopyTrigger(
        "v-1", backend="alpha", poll_interval=0.5, deadline=1_800_000_000.0, owner="run", longest_poll_s=7.0
    )
    path, kwargs = trigger.serialize()
    assert path == "plugins.triggers.target_copy.TargetCopyTrigger"
    assert TargetCopyTrigger(**kwargs).serialize() == (path, kwargs)
    assert (kwargs["volume_id"], kwargs["backend"], kwargs["owner"]) == ("v-1", "alpha", "run")
    assert (kwargs["deadline"], kwargs["longest_poll_s"]) == (1_800_000_000.0, 7.0)


def test_the_wait_reports_progress_to_cinder_once_per_period(cinder):
    polls = [progress("copying", i << 20) for i in range(1, 30)] + [progress("done", GiB)]
    cinder["cinder"] = scripted = ScriptedCinder([view(p) for p in polls])
    got = events(fast(owner="run"))
    assert [e.payload["status"] for e in got] == ["done"]
    assert scripted.connected and len(scripted.looks) == 30 and set(scripted.looks) == {"v-1"}
    # 30 looks within a fraction of a second: the first one, then only the change to done
    assert scripted.reported == [("v-1", polls[0].describe(), "run"), ("v-1", polls[-1].describe(), "run")]


def test_without_an_owner_the_progress_goes_to_cinder_without_one(cinder):
    cinder["cinder"] = scripted = ScriptedCinder([view(progress("done", GiB))])
    assert [e.payload["status"] for e in events(fast())] == ["done"]
    assert scripted.reported == [("v-1", progress("done", GiB).describe(), None)]


def test_one_done_event_after_progress_and_an_outage(cinder):
    cinder["cinder"] = scripted = ScriptedCinder(
        [
            view(progress("copying", 1)),
            CinderError("service unavailable", status=503),
            CinderError("connection refused"),  # not reached at all: no status
            view(copy_error="the destination's cinder-volume did not answer"),
            view(progress("copying", GiB // 2)),
            view(progress("done", GiB)),
        ]
    )
    got = events(fast())
    assert [e.payload["status"] for e in got] == ["done"]
    assert got[0].payload["progress"]["bytes_done"] == GiB and got[0].payload["progress"]["state"] == "done"
    assert len(scripted.looks) == 6


def test_a_migration_already_finished_is_done_with_the_last_progress_seen(cinder):
    cinder["cinder"] = ScriptedCinder([view(progress("copying", GiB // 2)), view(status="success")])
    got = events(fast())
    assert [e.payload["status"] for e in got] == ["done"]
    assert got[0].payload["progress"] == progress("copying", GiB // 2).to_json()
    assert got[0].payload["message"] == "the migration is already finished"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([view(progress("copying", 1)), view(MigrationProgress(MigrationState.FAILED, 1, GiB, message="LUN lost"))],
         "LUN lost"),
        ([view(progress("copying", 1)), CinderError("no migration of volume v-1", status=404)],
         "no migration of volume v-1"),
        ([view(progress("copying", 1)), view(status="error")], "no longer attachable"),
    ],
    ids=["failed-copy", "404", "not-attachable"],
)  # fmt: skip
def test_failure_is_one_failed_event(cinder, script, message):
    cinder["cinder"] = scripted = ScriptedCinder(script)
    got = events(fast())
    assert [e.payload["status"] for e in got] == ["failed"]
    assert message in got[0].payload["message"]
    assert len(scripted.looks) == 2  # no look after the failure


def test_timeout_is_one_event(cinder):
    cinder["cinder"] = scripted = ScriptedCinder([view(progress("copying", 5))])
    got = events(fast(deadline=time.time() + 0.05))
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert got[0].payload["progress"]["bytes_done"] == 5
    assert len(scripted.looks) > 1  # it polled until the timeout passed


def test_a_trigger_made_again_keeps_the_deadline_and_times_out_at_once(cinder):
    """A retry of the wait, or a triggerer restart, makes the trigger again with the migration's deadline: the
    clock does not start over."""
    cinder["cinder"] = scripted = ScriptedCinder([view(copy_error="not now")])
    got = events(fast(deadline=time.time() - 1))
    assert [e.payload for e in got] == [{"status": "timeout", "progress": None}]
    assert len(scripted.looks) == 1


def test_a_copy_found_done_after_its_deadline_is_done(cinder):
    """An operator clears a wait that met its deadline once the copy ended: the wait commits it."""
    cinder["cinder"] = ScriptedCinder([view(progress("done", GiB))])
    assert [e.payload["status"] for e in events(fast(deadline=time.time() - 1))] == ["done"]


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


def test_a_paused_copy_is_logged_once_a_minute_not_at_every_look(cinder, capsys):
    script = [view(progress("paused", 5))] * 40 + [view(progress("copying", 6)), view(progress("done", GiB))]
    cinder["cinder"] = scripted = ScriptedCinder(script)
    got = events(
        TargetCopyTrigger("v-1", backend="alpha", poll_interval=0.001, longest_poll_s=0.001, deadline=time.time() + 60)
    )
    assert [e.payload["status"] for e in got] == ["done"] and len(scripted.looks) == 42
    out = capsys.readouterr().out  # the triggers' log lines (structlog writes them to stdout here)
    states = [line.split("copy of volume v-1 on alpha: ")[1].split(":")[0] for line in out.splitlines()
              if "copy of volume v-1 on alpha: " in line]  # fmt: skip
    assert states == ["paused", "copying", "done"]


def test_sensor_defers_and_resumes():
    sensor = TargetCopySensor(
        task_id="wait", volume_id="v-1", backend="alpha", poll_interval=2.0, deadline="1800000000.5", lock_owner="run"
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, TargetCopyTrigger) and deferred.value.method_name == "execute_complete"
    assert (trigger.volume_id, trigger.backend, trigger.owner) == ("v-1", "alpha", "run")
    assert (trigger.poll_interval, trigger.deadline) == (2.0, 1_800_000_000.5)
    done = progress("done", GiB).to_json()
    assert sensor.execute_complete({}, {"status": "done", "message": "", "progress": done}) == done
    with pytest.raises(
        AirflowFailException, match="not complete at its deadline 2027-01-15 08:00:00 UTC; the copy goes on"
    ):
        sensor.execute_complete({}, {"status": "timeout", "progress": progress("copying").to_json()})
    with pytest.raises(AirflowException, match="ended failed: no migration of volume v-1"):
        sensor.execute_complete({}, {"status": "failed", "message": "no migration of volume v-1"})


def test_sensor_without_a_lock_owner_defers_without_an_owner():
    sensor = TargetCopySensor(task_id="wait", volume_id="v-1", lock_owner="", deadline=time.time() + 60)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.trigger.owner is None


def test_a_sensor_that_does_not_defer_pokes_until_done(cinder):
    cinder["cinder"] = scripted = ScriptedCinder([view(progress("copying", 1)), view(progress("done", GiB))])
    sensor = TargetCopySensor(
        task_id="wait", volume_id="v-1", backend="alpha", deferrable=False, deadline=time.time() + 60
    )
    assert sensor.poke({}) is False
    assert sensor.poke({}) is True
    assert scripted.looks == ["v-1", "v-1"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (view(MigrationProgress(MigrationState.FAILED, 1, GiB, message="LUN lost")), "LUN lost"),
        (view(status="error"), "no longer attachable"),
    ],
    ids=["failed-copy", "not-attachable"],
)
def test_a_sensor_that_does_not_defer_fails_on_a_failed_copy(cinder, answer, message):
    cinder["cinder"] = ScriptedCinder([answer])
    sensor = TargetCopySensor(
        task_id="wait", volume_id="v-1", backend="alpha", deferrable=False, deadline=time.time() + 60
    )
    with pytest.raises(AirflowException, match=f"copy of volume v-1 on alpha failed: .*{message}"):
        sensor.poke({})


def test_a_plan_without_a_deadline_waits_a_day():
    """A run locked before deadlines were kept with the lock renders its deadline as "None"."""
    sensor = TargetCopySensor(task_id="wait", volume_id="v-1", deadline="None")
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert before + 24 * 3600 - 1 <= deferred.value.trigger.deadline <= time.time() + 24 * 3600
