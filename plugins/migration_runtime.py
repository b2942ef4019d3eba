"""What the volume_migration tasks need from Airflow: hooks, the run's identity, failure records.

Kept apart from ``include/migration/flow.py`` (which knows nothing of
Airflow) and from the DAG file (which only wires tasks).

* ``cinder()``: the Cinder hook on the Connection ``cinder_default``;
* ``arrays(backend)``: the array adapter of a Cinder backend, from the
  Connection ``storage_array_<backend>``; a missing or incomplete Connection
  is a LookupError/ValueError that says which one to add;
* ``step(context)``: runs a task body; a refusal fails the task at once
  (no retry can fix bad input), and any failure is recorded as the XCom
  ``failure`` so that ``rollback`` can tell Cinder why;
* ``state_dir()``: where host-copy checkpoints live (``MIGRATION_STATE_DIR``,
  else ``$AIRFLOW_HOME/migration-state``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowTaskTimeout

from include.backends.base import BackendDriver
from include.migration.flow import MigrationRefused, Plan, describe_failure
from include.migration.request import InvalidRequest
from plugins.hooks.cinder import CinderHook
from plugins.hooks.storage_array import StorageArrayHook, conn_id_for

log = logging.getLogger(__name__)

CINDER_CONN_ID = "cinder_default"
FAILURE_KEY = "failure"
RESULT_KEY = "result"


def cinder() -> CinderHook:
    return CinderHook(CINDER_CONN_ID)


def arrays(backend: str) -> BackendDriver:
    """The adapter for a Cinder backend; LookupError names the Connection to add when there is none."""
    try:
        return StorageArrayHook.for_backend(backend).adapter
    except AirflowNotFoundException:
        raise LookupError(
            f"no Airflow Connection {conn_id_for(backend)} (type storage_array) says which array serves it"
        ) from None


def owner(context: Any) -> str:
    """Who holds the Cinder lock: this DAG run (stable across retries and clears)."""
    return f"airflow:{context['dag'].dag_id}/{context['run_id']}"


def plan(context: Any) -> Plan | None:
    data = context["ti"].xcom_pull(task_ids="validate_and_lock")
    return Plan.from_json(data) if data else None


def state_dir() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "migration-state"
    return pathlib.Path(os.environ.get("MIGRATION_STATE_DIR") or default)


def apply_task_timeout(context: Any) -> None:
    """``pre_execute``: bound this try of a synchronous step by the run's ``task_timeout_s``."""
    seconds = context["params"].get("task_timeout_s")
    if isinstance(seconds, int) and seconds > 0:
        context["task"].execution_timeout = timedelta(seconds=seconds)


@contextlib.contextmanager
def step(context: Any) -> Iterator[None]:
    """Run one step: refusals fail without retry; every failure is kept for the rollback's reason."""
    ti = context["ti"]
    try:
        yield
    except (InvalidRequest, MigrationRefused) as exc:
        ti.xcom_push(FAILURE_KEY, describe_failure(ti.task_id, exc))
        raise AirflowFailException(str(exc)) from None
    except AirflowTaskTimeout:  # a BaseException: task_timeout_s passed
        seconds = context["params"].get("task_timeout_s")
        ti.xcom_push(FAILURE_KEY, f"{ti.task_id}: still running after task_timeout_s={seconds} s")
        raise
    except Exception as exc:
        ti.xcom_push(FAILURE_KEY, describe_failure(ti.task_id, exc))
        raise


def failure_reason(context: Any, task_ids: list[str]) -> str:
    """The recorded failures of this run's steps, first one first."""
    found = context["ti"].xcom_pull(task_ids=task_ids, key=FAILURE_KEY)
    reasons = [r for r in (found if isinstance(found, list) else [found]) if r]
    return "; ".join(reasons) or "a step failed (see the Airflow run's logs)"
