"""volume_rebalance: drain Cinder pools above a threshold onto emptier ones, a bounded number at a time.

    plan -> migrate -> summarize -> publish

``plan`` reads Cinder's pools and volumes, plans which volumes leave which
pools for where (``include/migration/planner.py``) and logs the plan as a
table; ``migrate`` runs one ``volume_migration`` per move (deferred between its
rounds: no worker slot held while they run), at most
``max_per_source`` off a pool, ``max_per_destination`` onto a pool and
``max_total`` in all at once, counting every migration in flight in Cinder
(an operator's by hand too); ``summarize`` logs what happened to every
volume and the pools before and after; ``publish`` emits it as an event of
the asset ``volume_rebalance`` (not for a dry run).

Schedule: ``VOLUME_REBALANCE_SCHEDULE`` in the environment of the
dag-processor and scheduler (a cron expression or preset; ``none``: only
triggered), default daily at 03:00. Trigger it from the UI form or
``POST /api/v2/dags/volume_rebalance/dagRuns`` with ``conf``; ``dry_run``
plans and changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from include.migration import rebalance_flow as flow
from include.migration.dispatch import MoveResult
from include.migration.planner import RebalancePlan
from include.migration.rebalance import REBALANCE_PARAMS_SCHEMA
from include.migration.steps import REBALANCE_DAG, RebalanceStep
from plugins import migration_runtime as rt
from plugins.notifiers.failure_notice import FailureNotice, send_failed_moves
from plugins.operators.rebalance_moves import RebalanceMovesOperator

PARAMS = {name: Param(**schema) for name, schema in REBALANCE_PARAMS_SCHEMA.items()}
REBALANCED = Asset("volume_rebalance")
DEFAULT_SCHEDULE = "0 3 * * *"


@dag(
    dag_id=REBALANCE_DAG,
    schedule=rt.schedule_from_env("VOLUME_REBALANCE_SCHEDULE", DEFAULT_SCHEDULE),
    catchup=False,
    params=PARAMS,
    tags=["cinder", "migration", "rebalance"],
    max_active_runs=1,  # one dispatcher at a time: the limits are counted in one place
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    on_failure_callback=FailureNotice(),  # a mail through the Connection migration_notices, if any
)
def volume_rebalance() -> None:
    @task(task_id=RebalanceStep.PLAN)
    def plan(**context: Any) -> dict[str, Any]:
        with rt.run_step(context):
            return flow.plan(dict(context["params"]), rt.cinder()).to_json()

    @task(task_id=RebalanceStep.SUMMARIZE)
    def summarize(planned: dict[str, Any], results: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        moves = [MoveResult.from_json(r) for r in results]
        done = flow.summary(dict(context["params"]), RebalancePlan.from_json(planned), moves, rt.cinder())
        send_failed_moves(context["run_id"], moves)  # the run succeeds: its failed moves are mailed here
        return done.to_json()

    @task(task_id=RebalanceStep.PUBLISH, outlets=[REBALANCED])
    def publish(summary: dict[str, Any], **context: Any) -> None:
        if summary["dry_run"]:
            raise AirflowSkipException("dry run: no asset event")
        context["outlet_events"][REBALANCED].extra = summary

    planned = plan()
    results = RebalanceMovesOperator(task_id=RebalanceStep.MIGRATE, planned=planned)  # deferred between rounds
    publish(summarize(planned, results.output))


volume_rebalance()
