"""volume_migration: move one Cinder volume to another pool, usable while its data is copied.

One run migrates one volume, along the blueprint "async volume migration
between backends" (see README.md):

    validate_and_lock
      -> source_driver_migrate (migrate_volume)   --moved--------------------> commit
           -> target_takeover (migrate_volume_target) --moved, sync----------> commit
                --moved, async (marked attachable) -> wait_for_copy ---------> commit
                -> host_copy (the target cannot take it over) ---------------> commit
      -> drivers_skipped (force_host_copy / new_type) -> host_copy ----------> commit
    any failure before the volume is attachable -> rollback (source intact)

Three tasks run before a volume is attachable, each a branch of the blueprint.

Trigger it from the UI (a validated form), ``POST /api/v2/dags/volume_migration/dagRuns``
with ``conf``, or another DAG. One Connection: ``cinder_default`` (Keystone,
admin). The driver steps run in the backends' cinder-volume services, asked
through Cinder: step 1 in the source's, the takeover and its background copy
in the destination's. The host copy runs on the worker, over connections
that each volume's cinder-volume opens for it (os-brick's connectors, or
libnbd), so any backend behind a Cinder driver takes part without Airflow
knowing its array.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, task

from include.migration import flow, validation
from include.migration.branches import after_source_driver, after_target_driver, choose_path
from include.migration.request import PARAMS_SCHEMA
from include.migration.steps import BEFORE_ATTACHABLE, MIGRATION_DAG, Step
from plugins import migration_runtime as rt
from plugins.notifiers.failure_notice import FailureNotice
from plugins.sensors.target_copy import TargetCopySensor

PARAMS = {name: Param(**schema) for name, schema in PARAMS_SCHEMA.items()}
PLAN = f"ti.xcom_pull(task_ids='{Step.VALIDATE_AND_LOCK}', key='{rt.PLAN_KEY}')"


@dag(
    dag_id=MIGRATION_DAG,
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["cinder", "migration"],
    max_active_runs=64,  # a run waiting for its copy holds no worker slot; a rebalance caps its copies per pool
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "pre_execute": rt.apply_task_timeout,
    },
    doc_md=__doc__,
    on_failure_callback=FailureNotice(),  # a mail through the Connection migration_notices, if any
)
def volume_migration() -> None:
    @task.branch(task_id=Step.VALIDATE_AND_LOCK)
    def validate_and_lock(**context: Any) -> str:
        with rt.run_step(context):
            plan = rt.keep_plan(context, validation.validate_and_lock(dict(context["params"]), rt.owner(context),
                                                                      rt.cinder()))  # fmt: skip
        return choose_path(plan.path)

    @task.branch(task_id=Step.SOURCE_DRIVER)
    def source_driver_migrate(**context: Any) -> str:
        with rt.run_step(context):
            result = rt.keep_result(context, flow.source_driver_migrate(rt.plan(context), rt.cinder()))
        return after_source_driver(result["moved"])

    @task.branch(task_id=Step.TARGET_TAKEOVER)
    def target_takeover(**context: Any) -> str:
        with rt.run_step(context):
            result = rt.keep_result(context, flow.target_takeover(rt.plan(context), rt.cinder()))
        return after_target_driver(result["moved"], result["async"])

    @task(task_id=Step.HOST_COPY, trigger_rule="none_failed_min_one_success")
    def host_copy(**context: Any) -> dict[str, Any]:
        with rt.run_step(context):
            plan = rt.plan(context)
            done = flow.host_copy(plan, rt.cinder(), rt.state_dir(), rt.host_copy_progress(context, plan),
                                  slice_s=rt.task_timeout_s(context))  # fmt: skip
        return rt.next_slice_unless_complete(done)  # a slice that ended early: rescheduled, from its checkpoint

    @task(task_id=Step.COMMIT, trigger_rule="none_failed_min_one_success")
    def commit(**context: Any) -> None:
        flow.commit(rt.plan(context), rt.cinder())

    @task(task_id=Step.ROLLBACK, trigger_rule="one_failed", retries=5)
    def rollback(**context: Any) -> str:
        done = flow.rollback(rt.plan(context), rt.cinder(), rt.failure_reason(context, BEFORE_ATTACHABLE))
        rt.log.warning("%s", done)
        return done

    plan = validate_and_lock()
    source = source_driver_migrate()
    takeover = target_takeover()
    wait = TargetCopySensor(
        task_id=Step.WAIT_FOR_COPY,
        volume_id=f"{{{{ {PLAN}['volume_id'] }}}}",
        backend=f"{{{{ {PLAN}['dest_backend'] }}}}",
        deadline=f"{{{{ {PLAN}['copy_deadline'] }}}}",  # set once with the lock: the wait's retries keep it
        lock_owner=f"{{{{ {PLAN}['owner'] }}}}",
        poll_interval=5.0,
        pre_execute=None,
    )
    skipped = EmptyOperator(
        task_id=Step.DRIVERS_SKIPPED, doc="force_host_copy or a new volume type: no driver is asked"
    )
    copied = host_copy()
    done = commit()
    undo = rollback()

    plan >> [source, skipped]
    source >> [takeover, done]
    takeover >> [wait, copied, done]
    wait >> done
    skipped >> copied >> done
    [plan, source, takeover, copied] >> undo


volume_migration()
