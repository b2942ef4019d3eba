"""The rebalance's wait between rounds (MigrationRunsTrigger), and the private Airflow APIs plugins/migration_runs.py
uses: this test fails when Airflow moves or changes them."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from plugins.triggers import migration_runs as trigger_module
from plugins.triggers.migration_runs import MigrationRunsTrigger


def events(trigger):
    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), 10))


@pytest.fixture
def runs(monkeypatch):
    """Run id -> state, as the API server would answer; each look is counted."""
    states = {"looks": 0}

    async def first_ended(run_ids):
        states["looks"] += 1
        return next(((r, states[r]) for r in run_ids if states.get(r) in ("success", "failed")), None)

    monkeypatch.setattr(trigger_module, "first_ended", first_ended)
    return states


def test_serialize_round_trip():
    trigger = MigrationRunsTrigger(["a", "b"], poll_interval=2.0, wake_after_s=30.0)
    path, kwargs = trigger.serialize()
    assert path == "plugins.triggers.migration_runs.MigrationRunsTrigger"
    assert MigrationRunsTrigger(**kwargs).serialize() == (path, kwargs)


def test_a_run_that_ends_is_one_event(runs):
    runs["b"] = "failed"
    assert events(MigrationRunsTrigger(["a", "b"], poll_interval=0.01)) == [
        {"status": "ended", "run_id": "b", "state": "failed"}
    ]


def test_with_none_ended_it_wakes_the_task_after_wake_after_s(runs):
    assert events(MigrationRunsTrigger(["a"], poll_interval=0.01, wake_after_s=0.05)) == [{"status": "look_again"}]
    assert runs["looks"] > 1  # it looked until then


def test_a_look_that_fails_wakes_the_task_to_look_for_itself(monkeypatch):
    async def broken(run_ids):
        raise ConnectionError("api-server restarting")

    monkeypatch.setattr(trigger_module, "first_ended", broken)
    assert events(MigrationRunsTrigger(["a"])) == [
        {"status": "look_again", "message": "ConnectionError: api-server restarting"}
    ]


def test_the_private_airflow_apis_we_use_are_where_we_use_them():
    from airflow.sdk.api.datamodels._generated import DagRunState
    from airflow.sdk.exceptions import ErrorType
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun

    assert "SUPERVISOR_COMMS" in task_runner.__annotations__  # set in a running task
    for name in ("get_dagrun_state", "get_dr_count"):
        assert {"dag_id"} <= set(inspect.signature(getattr(task_runner.RuntimeTaskInstance, name)).parameters)
    assert {"dag_id", "run_id", "conf", "note", "reset_dag_run"} <= set(TriggerDagRun.model_fields)
    assert ErrorType.DAGRUN_ALREADY_EXISTS and "error" in ErrorResponse.model_fields
    assert {DagRunState.SUCCESS.value, DagRunState.FAILED.value} == {"success", "failed"}
