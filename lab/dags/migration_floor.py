"""migration_floor: Airflow's own floor for bench/attachable.py, a DAG of volume_migration's shape doing nothing.

Same task ids, same branches, same trigger rules, same defaults as
``dags/volume_migration.py``; every task is a Python callable that returns at
once and the branches take the async path (validate_and_lock -> source driver
-> target takeover -> wait_for_copy -> commit). Its time from the trigger to
the end of ``target_takeover`` (where a migration is attachable) is what
scheduling and task start cost alone.

Lab equipment: the lab's Airflow loads it from its own bundle (``lab``), never
from ``dags/`` (what Airflow ships to workers).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from include.migration.branches import after_source_driver, after_target_driver, choose_path
from include.migration.steps import Step

FLOOR_DAG = "migration_floor"


@dag(
    dag_id=FLOOR_DAG,
    schedule=None,
    catchup=False,
    tags=["lab", "bench"],
    max_active_runs=64,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=10)},
)
def migration_floor() -> None:
    @task.branch(task_id=Step.VALIDATE_AND_LOCK)
    def validate_and_lock() -> str:
        return choose_path(Step.SOURCE_DRIVER)

    @task.branch(task_id=Step.SOURCE_DRIVER)
    def source_driver_migrate() -> str:
        return after_source_driver(False)

    @task.branch(task_id=Step.TARGET_TAKEOVER)
    def target_takeover() -> str:
        return after_target_driver(True, True)

    @task(task_id=Step.WAIT_FOR_COPY)
    def wait_for_copy() -> None:
        return None

    @task(task_id=Step.HOST_COPY, trigger_rule="none_failed_min_one_success")
    def host_copy() -> None:
        return None

    @task(task_id=Step.COMMIT, trigger_rule="none_failed_min_one_success")
    def commit() -> None:
        return None

    @task(task_id=Step.ROLLBACK, trigger_rule="one_failed")
    def rollback() -> None:
        return None

    @task(task_id=Step.DRIVERS_SKIPPED)
    def drivers_skipped() -> None:
        return None

    plan, source, takeover = validate_and_lock(), source_driver_migrate(), target_takeover()
    wait, skipped, copied, done, undo = wait_for_copy(), drivers_skipped(), host_copy(), commit(), rollback()
    plan >> [source, skipped]
    source >> [takeover, done]
    takeover >> [wait, copied, done]
    wait >> done
    skipped >> copied >> done
    [plan, source, takeover, copied] >> undo


migration_floor()
