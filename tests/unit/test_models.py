"""Pure pieces: progress and state enums, error round trips, request validation, the data model."""

from __future__ import annotations

import pytest

from include.backends.base import TERMINAL_STATES, ConnectionInfo, MigrationProgress, MigrationState
from include.backends.errors import Conflict, InvalidRequest, NotFound, PoolFull, error_from_json
from lab.arrays.apiserver import Router, optional_int, require_name, require_size
from lab.verify import SECTOR, DataModel


def test_terminal_states_are_done_and_failed():
    assert {MigrationState.DONE, MigrationState.FAILED} == TERMINAL_STATES
    assert [s for s in MigrationState if s.terminal] == [MigrationState.DONE, MigrationState.FAILED]


def test_progress_round_trip_and_description():
    p = MigrationProgress(MigrationState.COPYING, 256 << 20, 1024 << 20, 64 << 20, 12.0, "")
    assert MigrationProgress.from_json(p.to_json()) == p
    assert p.percent == 25.0
    assert p.describe() == "copying:  25.0% (256/1024 MiB) at 64.0 MiB/s, ETA 12s"
    waiting = MigrationProgress(MigrationState.WAITING_FOR_SOURCE, 0, 0, 0.0, None, "source down")
    assert waiting.percent == 100.0 and waiting.describe().endswith("ETA -; source down")


def test_connection_info_uri():
    info = ConnectionInfo("127.0.0.1", 10809, "volume-1")
    assert info.uri == "nbd://127.0.0.1:10809/volume-1"
    assert ConnectionInfo.from_json(info.to_json()) == info
    assert info.to_json()["driver_volume_type"] == "nbd"


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (404, {"error": "not_found", "message": "no LUN"}, NotFound),
        (409, {"error": "conflict", "message": "busy"}, Conflict),
        (507, {"error": "pool_full", "message": "full"}, PoolFull),
    ],
)
def test_errors_come_back_as_the_class_the_array_raised(status, body, cls):
    err = error_from_json(status, body)
    assert type(err) is cls and str(err) == body["message"]


def test_unknown_error_body_still_says_the_status():
    assert str(error_from_json(502, None)) == "array answered HTTP 502"


@pytest.mark.parametrize("value", [None, "", "a b", "../x", "x" * 200, 5])
def test_require_name_refuses(value):
    with pytest.raises(InvalidRequest):
        require_name({"name": value})


@pytest.mark.parametrize("value", [None, 0, -512, 513, True, "1024", 1.5])
def test_require_size_refuses(value):
    with pytest.raises(InvalidRequest):
        require_size({"size": value})


def test_validators_accept_good_values():
    assert require_name({"name": "volume-1b2c.x_y"}) == "volume-1b2c.x_y"
    assert require_size({"size": 1 << 30}) == 1 << 30
    assert optional_int({}, "speed_bps") is None
    assert optional_int({"speed_bps": 0}, "speed_bps") == 0
    with pytest.raises(InvalidRequest):
        optional_int({"speed_bps": -1}, "speed_bps")


def test_router_dispatch():
    r = Router()
    r.add("GET", r"/v1/luns/(?P<name>[^/]+)", lambda m, b: m["name"])
    assert r.dispatch("GET", "/v1/luns/abc", {}) == "abc"
    with pytest.raises(InvalidRequest, match="not allowed"):
        r.dispatch("POST", "/v1/luns/abc", {})
    with pytest.raises(NotFound, match="no such API path"):
        r.dispatch("GET", "/v2/x", {})


def sector(fill: int) -> bytes:
    return bytes([fill]) * SECTOR


def test_model_exact_and_crash_checks():
    model = DataModel(8 * SECTOR)
    model.write(0, sector(1) * 2)
    model.flushed()
    model.write(SECTOR, sector(2))  # not flushed
    image = bytearray(model.current)
    assert model.mismatches(bytes(image)) == []
    # after a crash the unflushed write may be missing: still fine
    lost_unflushed = sector(1) * 2 + bytes(6 * SECTOR)
    assert model.crash_violations(lost_unflushed) == []
    # a flushed write missing is a violation
    lost_flushed = bytes(SECTOR) + sector(2) + bytes(6 * SECTOR)
    assert model.crash_violations(lost_flushed) == [0]
    # bytes never written at an offset are a violation too
    garbage = sector(1) * 2 + bytes(5 * SECTOR) + sector(9)
    assert model.crash_violations(garbage) == [7 * SECTOR]
    assert model.mismatches(garbage) == [SECTOR, 7 * SECTOR]


def test_model_failed_write_may_or_may_not_land():
    model = DataModel(4 * SECTOR)
    model.maybe_written(0, sector(3))
    assert model.crash_violations(sector(3) + bytes(3 * SECTOR)) == []
    assert model.crash_violations(bytes(4 * SECTOR)) == []
    model.adopt(sector(3) + bytes(3 * SECTOR))
    assert model.mismatches(sector(3) + bytes(3 * SECTOR)) == []
