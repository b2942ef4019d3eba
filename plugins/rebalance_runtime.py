"""What the volume_rebalance tasks need from Airflow: the dispatcher's ports, runs of volume_migration.

``AirflowPorts`` gives ``include.migration.dispatch`` its view of the world:
Cinder through the hook (``read_cloud``), and ``volume_migration`` runs
started and watched through the task's own channel to the Airflow API
server (the one ``TriggerDagRunOperator`` uses: no credentials to
configure, and each run records its ``conf`` and a note naming the
rebalance that started it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk.api.datamodels._generated import DagRunState
from airflow.sdk.exceptions import ErrorType
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun

from include.cinder_plugin.names import ERROR_KEY
from include.migration.cinder_api import CinderApi
from include.migration.dispatch import migration_conf
from include.migration.errors import CinderError
from include.migration.inventory import Cloud, read_cloud
from include.migration.planner import Move
from include.migration.steps import MIGRATION_DAG, Step
from plugins.migration_runtime import recorded_failures

log = logging.getLogger(__name__)


class AirflowPorts:
    """The dispatcher's ports inside a running task ``ti`` of a rebalance run."""

    def __init__(self, ti: Any, cinder: CinderApi, speed_mib: int | None) -> None:
        self.ti, self.cinder, self.speed_mib = ti, cinder, speed_mib

    def look(self) -> Cloud:
        return read_cloud(self.cinder)

    def start(self, move: Move, run_id: str) -> None:
        note = f"rebalance run {self.ti.run_id}: {move.source} -> {move.destination} ({move.path})"
        answer = task_runner.SUPERVISOR_COMMS.send(
            TriggerDagRun(dag_id=MIGRATION_DAG, run_id=run_id, conf=migration_conf(move, self.speed_mib), note=note)
        )
        if isinstance(answer, ErrorResponse):
            if answer.error != ErrorType.DAGRUN_ALREADY_EXISTS:
                raise RuntimeError(f"Airflow did not start run {run_id} of {MIGRATION_DAG}: {answer.detail}")
            log.info("run %s exists already: followed, not started again", run_id)

    def exists(self, run_ids: Sequence[str]) -> set[str]:
        if not run_ids or not self.ti.get_dr_count(dag_id=MIGRATION_DAG, run_ids=list(run_ids)):
            return set()
        return {r for r in run_ids if self.ti.get_dr_count(dag_id=MIGRATION_DAG, run_ids=[r])}

    def state(self, run_id: str) -> str:
        state = self.ti.get_dagrun_state(dag_id=MIGRATION_DAG, run_id=run_id)
        return state.value if isinstance(state, DagRunState) else str(state)

    def failure(self, run_id: str, volume_id: str) -> str:
        """The run's recorded failures (its steps' XCom ``failure``), else what Cinder kept, else its state."""
        reasons = recorded_failures(self.ti, Step, dag_id=MIGRATION_DAG, run_id=run_id)
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
        try:
            kept = (self.cinder.get_volume(volume_id).get("metadata") or {}).get(ERROR_KEY)
        except CinderError as exc:
            kept = f"(Cinder: {exc})"
        return kept or f"run {run_id} failed (see its task logs)"
