"""volume_migration runs looked at and started from inside a task, over the task's own channel to the API server.

The channel ``TriggerDagRunOperator`` uses: no credentials to configure, and
each run started records its ``conf`` and a note naming who started it.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.api.datamodels._generated import DagRunState
from airflow.sdk.exceptions import ErrorType
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun

from include.migration.steps import MIGRATION_DAG

log = logging.getLogger(__name__)


def trigger(run_id: str, conf: dict[str, Any], note: str, *, clear_existing: bool = False) -> None:
    """Start run ``run_id`` of volume_migration with ``conf``. If it exists: followed as it is, or cleared (all its
    tasks run again, its conf kept) with ``clear_existing``."""
    answer = task_runner.SUPERVISOR_COMMS.send(
        TriggerDagRun(dag_id=MIGRATION_DAG, run_id=run_id, conf=conf, note=note, reset_dag_run=clear_existing)
    )
    if isinstance(answer, ErrorResponse):
        if answer.error != ErrorType.DAGRUN_ALREADY_EXISTS:
            raise RuntimeError(f"Airflow did not start run {run_id} of {MIGRATION_DAG}: {answer.detail}")
        log.info("run %s exists already: followed, not started again", run_id)


def existing(ti: Any, run_ids: list[str]) -> set[str]:
    """Which of ``run_ids`` exist (one call when none does)."""
    if not run_ids or not ti.get_dr_count(dag_id=MIGRATION_DAG, run_ids=list(run_ids)):
        return set()
    return {r for r in run_ids if ti.get_dr_count(dag_id=MIGRATION_DAG, run_ids=[r])}


def state(ti: Any, run_id: str) -> str:
    found = ti.get_dagrun_state(dag_id=MIGRATION_DAG, run_id=run_id)
    return found.value if isinstance(found, DagRunState) else str(found)


def state_if_any(ti: Any, run_id: str) -> str | None:
    """The run's state, None when there is no such run."""
    return state(ti, run_id) if existing(ti, [run_id]) else None


class MigrationRuns:
    """The runs as ``include.migration.audit_flow.Runs``, from inside task ``ti``; ``note`` marks the runs it
    resumes."""

    def __init__(self, ti: Any, note: str) -> None:
        self.ti, self.note = ti, note

    def state(self, run_id: str) -> str | None:
        return state_if_any(self.ti, run_id)

    def resume(self, run_id: str, conf: dict[str, Any]) -> None:
        trigger(run_id, conf, self.note, clear_existing=True)


async def first_ended(run_ids: list[str]) -> tuple[str, str] | None:
    """From a trigger: the first of ``run_ids`` that has ended, with its state (``success``, ``failed``), or None.
    Asked over the triggerer's channel to the API server, as ``state`` is from a task."""
    from asgiref.sync import sync_to_async

    for run_id in run_ids:
        found = await sync_to_async(task_runner.RuntimeTaskInstance.get_dagrun_state)(
            dag_id=MIGRATION_DAG, run_id=run_id
        )
        value = found.value if isinstance(found, DagRunState) else str(found)
        if value in (DagRunState.SUCCESS.value, DagRunState.FAILED.value):
            return run_id, value
    return None
