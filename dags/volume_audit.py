"""volume_audit: reconcile Cinder, what its backends hold and the volume_migration runs; repair only when asked.

    find -> repair

``find`` reads what every backend holds (asked of its own cinder-volume
through Cinder), then Cinder's volumes, then the runs that hold migration
locks, and logs a table of what disagrees, each line with the
action that fixes it (``include/migration/audit.py``): volumes locked for a
migration with no live run, LUNs that no volume owns, takeovers that no
volume points to, volumes whose host does not hold their LUN, arrays it
could not read. ``repair`` changes nothing unless the param ``repair`` is
true; then it reads again and fixes the cases that are safe (resume the
run that owns a stuck volume; abort an unowned takeover; release a stale
takeover export; delete an orphan LUN whose data is nowhere needed), each
by the backend's own driver through Cinder. The run
ends failed while anything is left for an operator.

Schedule: ``VOLUME_AUDIT_SCHEDULE`` in the environment of the dag-processor
and scheduler (a cron expression or preset; ``none``: only triggered),
default hourly; scheduled runs report and do not repair. Trigger it from
the UI or ``POST /api/v2/dags/volume_audit/dagRuns`` with
``{"conf": {"repair": true}}`` to repair.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from include.migration import audit_flow as flow
from include.migration.audit import Finding
from include.migration.steps import AUDIT_DAG, AuditStep
from plugins import migration_runtime as rt
from plugins.migration_runs import MigrationRuns
from plugins.notifiers.failure_notice import FailureNotice

DEFAULT_SCHEDULE = "@hourly"
PARAMS = {
    "repair": Param(False, type="boolean", title="repair",
                    description="fix the inconsistencies that are safe to fix (else only report them)"),
}  # fmt: skip


def runs(context: Any) -> MigrationRuns:
    return MigrationRuns(context["ti"], f"resumed by {AUDIT_DAG} run {context['run_id']}")


@dag(
    dag_id=AUDIT_DAG,
    schedule=rt.schedule_from_env("VOLUME_AUDIT_SCHEDULE", DEFAULT_SCHEDULE),
    catchup=False,
    params=PARAMS,
    tags=["cinder", "migration", "audit"],
    max_active_runs=1,  # one repair at a time
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    on_failure_callback=FailureNotice(),  # a mail through the Connection migration_notices, if any
)
def volume_audit() -> None:
    @task(task_id=AuditStep.FIND)
    def find(**context: Any) -> list[dict[str, Any]]:
        with rt.run_step(context):
            return [f.to_json() for f in flow.audit(rt.cinder(), runs(context))]

    @task(task_id=AuditStep.REPAIR)
    def repair(found: list[dict[str, Any]], **context: Any) -> str:
        findings = [Finding.from_json(f) for f in found]
        with rt.run_step(context):
            return flow.repair(findings, context["params"]["repair"], rt.cinder(), runs(context))

    repair(find())


volume_audit()
