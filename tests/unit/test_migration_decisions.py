"""The flow's decisions and the run's parameters, without Airflow."""

from __future__ import annotations

import pytest

from include.migration.branches import after_source_driver, after_target_driver, choose_path, first_step
from include.migration.errors import InvalidParams
from include.migration.flow import backend_of, pool_of
from include.migration.request import MigrationRequest, parse_request
from include.migration.steps import Step

VOL = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"


def req(**kw):
    return parse_request({"volume_id": VOL, "dest_host": "lab@alpha#pool2", **kw})


def test_parse_defaults_and_parts():
    r = req()
    assert r == MigrationRequest(VOL, "lab@alpha#pool2")
    assert (backend_of(r.dest_host), pool_of(r.dest_host)) == ("alpha", "pool2")
    assert req(speed_mib=0).speed_mib == 0
    assert req(new_type="").new_type is None
    assert req(copy_mode="mirror").copy_mode == "mirror" and req(copy_mode=None).copy_mode is None


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"volume_id": "nope", "dest_host": "lab@alpha#pool1"}, "volume_id must be a volume UUID"),
        ({"volume_id": VOL, "dest_host": "lab@alpha"}, "dest_host must look like host@backend#pool"),
        ({"volume_id": VOL, "dest_host": "lab@alpha#p", "force_host_copy": "yes"}, "force_host_copy must be"),
        ({"volume_id": VOL, "dest_host": "lab@alpha#p", "speed_mib": -1}, "speed_mib must be between"),
        ({"volume_id": VOL, "dest_host": "lab@alpha#p", "speed_mib": 1.5}, "speed_mib must be a whole number"),
        ({"volume_id": VOL, "dest_host": "lab@alpha#p", "copy_timeout_s": 5}, "copy_timeout_s must be between"),
        ({"volume_id": VOL, "dest_host": "lab@alpha#p", "colour": "red"}, "unknown parameters: colour"),
        (
            {"volume_id": VOL, "dest_host": "lab@alpha#p", "copy_mode": "sync"},
            "copy_mode must be one of stream, mirror",
        ),
        (
            {"volume_id": VOL, "dest_host": "lab@alpha#p", "copy_mode": "mirror", "force_host_copy": True},
            "copy_mode is a takeover's",
        ),
        (
            {"volume_id": VOL, "dest_host": "lab@alpha#p", "copy_mode": "stream", "new_type": "gold"},
            "copy_mode is a takeover's",
        ),
    ],
)
def test_bad_params_are_refused_with_the_reason(conf, message):
    with pytest.raises(InvalidParams, match=message):
        parse_request(conf)


def test_every_problem_is_named_at_once():
    with pytest.raises(InvalidParams) as err:
        parse_request({"volume_id": 3, "dest_host": None})
    assert "volume_id" in str(err.value) and "dest_host" in str(err.value)


def test_blueprint_paths():
    assert first_step(req()) is Step.SOURCE_DRIVER
    assert first_step(req(force_host_copy=True)) is Step.HOST_COPY
    assert first_step(req(new_type="fast")) is Step.HOST_COPY
    assert after_source_driver(True) is Step.COMMIT
    assert after_source_driver(False) is Step.TARGET_TAKEOVER
    assert after_target_driver(False, False) is Step.HOST_COPY
    assert after_target_driver(True, False) is Step.COMMIT
    assert after_target_driver(True, True) is Step.WAIT_FOR_COPY
    assert choose_path(first_step(req())) is Step.SOURCE_DRIVER
    assert choose_path(first_step(req(force_host_copy=True))) is Step.DRIVERS_SKIPPED
