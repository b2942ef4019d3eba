"""The DAGs' ids, the steps of their runs (each a task of `dags/`) and who a run is as a lock owner, named once here."""

from __future__ import annotations

import enum

MIGRATION_DAG = "volume_migration"  # one volume's migration: the steps below
REBALANCE_DAG = "volume_rebalance"  # plans moves between pools and runs a MIGRATION_DAG run for each
AUDIT_DAG = "volume_audit"  # reconciles Cinder, the arrays and the MIGRATION_DAG runs; repairs on request

OWNER_PREFIX = "airflow:"  # a run as the owner of Cinder's migration lock: airflow:<dag id>/<run id>


def run_owner(dag_id: str, run_id: str) -> str:
    """The lock owner that stands for run ``run_id`` of ``dag_id`` (stable across retries and clears)."""
    return f"{OWNER_PREFIX}{dag_id}/{run_id}"


def owner_run(owner: str | None) -> tuple[str, str] | None:
    """(dag id, run id) of a lock owner that ``run_owner`` made; None for any other owner."""
    if not owner or not owner.startswith(OWNER_PREFIX):
        return None
    dag_id, sep, run_id = owner[len(OWNER_PREFIX) :].partition("/")
    return (dag_id, run_id) if sep and dag_id and run_id else None


class Step(enum.StrEnum):
    """Task ids of the volume_migration DAG, in the blueprint's order."""

    VALIDATE_AND_LOCK = "validate_and_lock"  # and the first branch: ask the drivers, or skip them
    SOURCE_DRIVER = "source_driver_migrate"  # blueprint step 1: migrate_volume on the source
    TARGET_TAKEOVER = "target_takeover"  # blueprint step 2: migrate_volume_target; async: marks attachable
    DRIVERS_SKIPPED = "drivers_skipped"  # force_host_copy or a new volume type: no driver is asked
    HOST_COPY = "host_copy"  # blueprint step 3: the generic copy through this host
    WAIT_FOR_COPY = "wait_for_copy"  # complete_migration_target, deferred
    COMMIT = "commit"
    ROLLBACK = "rollback"


# The steps whose failure is undone by ROLLBACK: the volume was not yet served by the target.
BEFORE_ATTACHABLE = (Step.VALIDATE_AND_LOCK, Step.SOURCE_DRIVER, Step.TARGET_TAKEOVER, Step.HOST_COPY)
# The steps whose XCom "result" carries the driver's model_update, in the order commit looks at them.
DRIVER_STEPS = (Step.SOURCE_DRIVER, Step.TARGET_TAKEOVER)


class RebalanceStep(enum.StrEnum):
    """Task ids of the volume_rebalance DAG, in order."""

    PLAN = "plan"  # read Cinder, validate the params against it, plan, log the plan
    MIGRATE = "migrate"  # one volume_migration run per move, under the limits
    SUMMARIZE = "summarize"  # every volume's result and the pools before and after, in the log
    PUBLISH = "publish"  # the summary as an asset event (not for a dry run)


class AuditStep(enum.StrEnum):
    """Task ids of the volume_audit DAG, in order."""

    FIND = "find"  # read the arrays, Cinder and the runs; log every inconsistency with the action that fixes it
    REPAIR = "repair"  # with the param repair: check each safe case again, then fix it; else skipped
