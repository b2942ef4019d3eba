"""volume_migration: move one Cinder volume to another pool, usable while its data is copied.

One run migrates one volume, along the blueprint "async volume migration
between backends" (see README.md):

    validate_and_lock -> choose_path
      -> source_driver_migrate (migrate_volume)   --moved--------------------> commit
           -> target_takeover (migrate_volume_target) --moved, sync----------> commit
                -> mark_attachable -> wait_for_copy (deferrable) ------------> commit
                -> host_copy (the target cannot take it over) ---------------> commit
      -> drivers_skipped (force_host_copy / new_type) -> host_copy ----------> commit
    any failure before the volume is attachable -> rollback (source intact)

Trigger it from the UI (a validated form), ``POST /api/v2/dags/volume_migration/dagRuns``
with ``conf``, or another DAG. Connections: ``cinder_default`` (Keystone,
admin) and one ``storage_array_<backend>`` per Cinder backend.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, task

from include.migration import flow
from include.migration.paths import Step, after_source_driver, after_target_driver
from include.migration.request import PARAMS_SCHEMA
from plugins import migration_runtime as rt
from plugins.sensors.target_copy import TargetCopySensor

PARAMS = {name: Param(**schema) for name, schema in PARAMS_SCHEMA.items()}
BEFORE_ATTACHABLE = [
    "validate_and_lock",
    "choose_path",
    "source_driver_migrate",
    "target_takeover",
    "mark_attachable",
    "host_copy",
]
PLAN = "ti.xcom_pull(task_ids='validate_and_lock')"


@dag(
    dag_id="volume_migration",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["cinder", "migration"],
    max_active_runs=16,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "pre_execute": rt.apply_task_timeout,
    },
    doc_md=__doc__,
)
def volume_migration() -> None:
    @task
    def validate_and_lock(**context: Any) -> dict[str, Any]:
        with rt.step(context):
            return flow.validate_and_lock(dict(context["params"]), rt.owner(context), rt.cinder(), rt.arrays).to_json()

    @task.branch
    def choose_path(plan: dict[str, Any]) -> str:
        return "source_driver_migrate" if plan["path"] == Step.SOURCE_DRIVER.value else "drivers_skipped"

    @task.branch
    def source_driver_migrate(**context: Any) -> str:
        with rt.step(context):
            result = flow.source_driver_migrate(rt.plan(context), rt.arrays)
        context["ti"].xcom_push(rt.RESULT_KEY, result)
        return after_source_driver(result["moved"]).value

    @task.branch
    def target_takeover(**context: Any) -> str:
        with rt.step(context):
            result = flow.target_takeover(rt.plan(context), rt.arrays)
        context["ti"].xcom_push(rt.RESULT_KEY, result)
        return after_target_driver(result["moved"], result["async"]).value

    @task
    def mark_attachable(**context: Any) -> None:
        result = context["ti"].xcom_pull(task_ids="target_takeover", key=rt.RESULT_KEY)
        with rt.step(context):
            flow.mark_attachable(rt.plan(context), rt.cinder(), result["model_update"])

    @task(trigger_rule="none_failed_min_one_success")
    def host_copy(**context: Any) -> dict[str, Any]:
        def progress(p: Any) -> None:
            rt.log.info("host copy: %.1f%% done at %.1f MiB/s, ETA %s s", 100 * p.bytes_done / max(p.bytes_total, 1),
                        p.rate_bps / 2**20, "-" if p.eta_seconds is None else round(p.eta_seconds))  # fmt: skip

        with rt.step(context):
            return flow.host_copy(rt.plan(context), rt.arrays, rt.state_dir(), progress)

    @task(trigger_rule="none_failed_min_one_success")
    def commit(**context: Any) -> None:
        ti = context["ti"]
        results = [ti.xcom_pull(task_ids=t, key=rt.RESULT_KEY) for t in ("source_driver_migrate", "target_takeover")]
        results.append({"model_update": ti.xcom_pull(task_ids="host_copy")})
        update = next((r["model_update"] for r in results if r and r.get("model_update")), None)
        flow.commit(rt.plan(context), rt.cinder(), rt.arrays, update)

    @task(trigger_rule="one_failed", retries=5)
    def rollback(**context: Any) -> str:
        done = flow.rollback(rt.plan(context), rt.cinder(), rt.arrays, rt.failure_reason(context, BEFORE_ATTACHABLE))
        rt.log.warning("%s", done)
        return done

    plan = validate_and_lock()
    path = choose_path(plan)
    source = source_driver_migrate()
    takeover = target_takeover()
    attachable = mark_attachable()
    wait = TargetCopySensor(
        task_id="wait_for_copy",
        backend=f"{{{{ {PLAN}['dest_backend'] }}}}",
        volume_name=f"{{{{ {PLAN}['lun'] }}}}",
        size=f"{{{{ {PLAN}['size'] }}}}",
        copy_timeout_s=f"{{{{ {PLAN}['copy_timeout_s'] }}}}",
        poll_interval=5.0,
        pre_execute=None,
    )
    skipped = EmptyOperator(task_id="drivers_skipped", doc="force_host_copy or a new volume type: no driver is asked")
    copied = host_copy()
    done = commit()
    undo = rollback()

    path >> [source, skipped]
    source >> [takeover, done]
    takeover >> [attachable, copied, done]
    attachable >> wait >> done
    skipped >> copied >> done
    [plan, path, source, takeover, attachable, copied] >> undo


volume_migration()
