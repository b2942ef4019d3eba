"""ProgressToCinder: a copy's progress into Cinder's volume metadata, at a bounded rate, never failing the copy."""

from __future__ import annotations

from include.backends.base import MigrationProgress, MigrationState
from include.migration.cinder_api import CinderApi
from include.migration.cinder_progress import REPORT_EVERY_S, ProgressToCinder
from include.migration.errors import CinderError
from tests.unit.fake_clock import Clock

GiB = 1 << 30


class RecordingCinder(CinderApi):
    """The Cinder boundary: records the actions sent; refuses them all while ``refuse`` is set."""

    def __init__(self):
        self.sent = []
        self.refuse = False

    def request(self, method, path, body=None):
        if self.refuse:
            raise CinderError("volume is not migrating", status=409)
        self.sent.append((method, path, body))


def progress(state="copying", done=0):
    return MigrationProgress(MigrationState(state), done, GiB, 32 << 20, 12.0, "")


def test_the_first_report_goes_at_once_then_one_per_period_and_each_change_of_state():
    cinder, clock = RecordingCinder(), Clock(1000.0)
    report = ProgressToCinder(cinder, "vol-1", "airflow:volume_migration/run", clock=clock)
    assert report(progress(done=1 << 20))
    clock.now += REPORT_EVERY_S - 1
    assert not report(progress(done=2 << 20))  # within the period: skipped
    assert report(progress("paused", done=2 << 20))  # a change of state: at once
    clock.now += 1
    assert not report(progress("paused", done=2 << 20))
    clock.now += REPORT_EVERY_S
    assert report(progress("paused", done=2 << 20))
    assert len(cinder.sent) == 3
    method, path, body = cinder.sent[0]
    assert (method, path) == ("POST", "/volumes/vol-1/action")
    args = body["os-async_migration_progress"]
    assert args["owner"] == "airflow:volume_migration/run"
    assert args["progress"] == progress(done=1 << 20).describe()
    assert args["progress"].startswith("copying:") and "MiB/s" in args["progress"]


def test_a_refused_report_is_logged_and_the_copy_goes_on(caplog):
    cinder, clock = RecordingCinder(), Clock(1000.0)
    cinder.refuse = True
    report = ProgressToCinder(cinder, "vol-1", clock=clock)
    assert report(progress()) is False  # no exception
    assert "not reported to Cinder" in caplog.text
    cinder.refuse = False
    clock.now += REPORT_EVERY_S
    assert report(progress())
    assert "owner" not in cinder.sent[0][2]["os-async_migration_progress"]
