"""What the volume_migration tasks need from Airflow: hooks, the run's identity, failure records.

Kept apart from ``include/migration/flow.py`` (which knows nothing of
Airflow) and from the DAG file (which only wires tasks).

* ``cinder()``: the Cinder hook on the Connection ``cinder_default``;
* ``run_step(context)``: runs a task body; a refusal fails the task at once
  (no retry can fix bad input), and any failure is recorded as the XCom
  ``failure`` so that ``rollback`` can tell Cinder why;
* ``keep_result`` / ``driver_result``: a driver step's answer, kept for the
  steps after it; ``keep_plan`` / ``plan(context)``: what ``validate_and_lock``
  locked;
* ``host_copy_progress``: a host copy's progress, in the task log and in
  Cinder's volume metadata (``include/migration/cinder_progress.py``);
* ``state_dir()``: where host-copy checkpoints live (``MIGRATION_STATE_DIR``,
  else ``$AIRFLOW_HOME/migration-state``); ``token_cache()``: the Keystone
  tokens the tasks share, in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowTaskTimeout

from include.backends.base import MigrationProgress
from include.migration.cinder_progress import ProgressToCinder
from include.migration.deadlines import HOST_COPY_GRACE_S
from include.migration.errors import CopyDeadlinePassed, InconsistenciesLeft, InvalidParams, MigrationRefused
from include.migration.flow import Plan, describe_failure
from include.migration.steps import Step, run_owner

if TYPE_CHECKING:
    from plugins.hooks.cinder import CinderHook

log = logging.getLogger(__name__)

CINDER_CONN_ID = "cinder_default"
FAILURE_KEY = "failure"
PLAN_KEY = "plan"
RESULT_KEY = "result"


def schedule_from_env(variable: str, default: str) -> str | None:
    """A DAG's schedule from the environment of the dag-processor and scheduler: a cron expression or preset;
    ``none`` (or empty): only triggered."""
    value = os.environ.get(variable, default).strip()
    return None if value.lower() in ("", "none") else value


def cinder() -> CinderHook:
    """The Cinder hook of the steps (imported here: keystoneauth costs every task that parses the DAG 50 ms)."""
    from plugins.hooks.cinder import CinderHook

    return CinderHook(CINDER_CONN_ID, token_cache=token_cache())


def owner(context: Any) -> str:
    """Who holds the Cinder lock: this DAG run (stable across retries and clears)."""
    return run_owner(context["dag"].dag_id, context["run_id"])


def keep_plan(context: Any, plan: Plan) -> Plan:
    """Keep what ``validate_and_lock`` locked (XCom ``plan``) for the steps after it; returns it."""
    context["ti"].xcom_push(PLAN_KEY, plan.to_json())
    return plan


def plan(context: Any) -> Plan | None:
    data = context["ti"].xcom_pull(task_ids=Step.VALIDATE_AND_LOCK, key=PLAN_KEY)
    return Plan.from_json(data) if data else None


def keep_result(context: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Keep a driver step's answer (XCom ``result``) for the steps after it; returns it."""
    context["ti"].xcom_push(RESULT_KEY, result)
    return result


def driver_result(context: Any, step: Step) -> dict[str, Any] | None:
    """What a driver step (``source_driver_migrate``, ``target_takeover``) answered: moved, async, model_update."""
    return context["ti"].xcom_pull(task_ids=step, key=RESULT_KEY)


def progress_cinder() -> CinderHook:
    """The Cinder hook that progress reports go through: one try, a report that fails is skipped, not retried."""
    from plugins.hooks.cinder import CinderHook

    return CinderHook(CINDER_CONN_ID, retry_attempts=1, token_cache=token_cache())


def host_copy_progress(context: Any, plan: Plan) -> Callable[[MigrationProgress], None]:
    """Each progress of a host copy: into the task log, and to Cinder's volume metadata at a bounded rate."""
    to_cinder = ProgressToCinder(progress_cinder(), plan.volume_id, owner(context))

    def report(progress: MigrationProgress) -> None:
        log.info("host copy: %s", progress.describe())
        to_cinder(progress)

    return report


def state_dir() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "migration-state"
    return pathlib.Path(os.environ.get("MIGRATION_STATE_DIR") or default)


def token_cache() -> pathlib.Path:
    """Where the Keystone tokens of ``cinder_default`` are kept between tasks: in the state folder, owner only."""
    return state_dir() / "keystone-tokens"


def task_timeout_s(context: Any) -> int | None:
    """The run's ``task_timeout_s``: how long one try of a synchronous step, or one slice of a host copy, may take."""
    seconds = context["params"].get("task_timeout_s")
    return seconds if isinstance(seconds, int) and seconds > 0 else None


def apply_task_timeout(context: Any) -> None:
    """``pre_execute``: bound this try of a synchronous step by the run's ``task_timeout_s``; a host copy's slice,
    which stops itself after that long, gets ``HOST_COPY_GRACE_S`` more (its target's creation, the last flush)."""
    seconds = task_timeout_s(context)
    if seconds is not None:
        grace = HOST_COPY_GRACE_S if context["task"].task_id == Step.HOST_COPY else 0
        context["task"].execution_timeout = timedelta(seconds=seconds + grace)


def next_slice_unless_complete(done: dict[str, Any]) -> dict[str, Any]:
    """A host copy's answer; a slice that ended before the copy was complete has the task run again at once
    (rescheduled: the same try, on any worker, going on from the checkpoint), holding no worker slot between."""
    if not done.get("complete", True):
        raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=1))
    return done


@contextlib.contextmanager
def run_step(context: Any) -> Iterator[None]:
    """Run one step: refusals, a passed copy deadline (and an audit that leaves inconsistencies) fail without retry;
    every failure is kept for the rollback's reason."""
    ti = context["ti"]
    try:
        yield
    except (InvalidParams, MigrationRefused, CopyDeadlinePassed, InconsistenciesLeft) as exc:
        ti.xcom_push(FAILURE_KEY, describe_failure(ti.task_id, exc))
        raise AirflowFailException(str(exc)) from None
    except AirflowTaskTimeout:  # a BaseException: task_timeout_s passed
        seconds = context["params"].get("task_timeout_s")
        ti.xcom_push(FAILURE_KEY, f"{ti.task_id}: still running after task_timeout_s={seconds} s")
        raise
    except Exception as exc:
        ti.xcom_push(FAILURE_KEY, describe_failure(ti.task_id, exc))
        raise


def recorded_failures(ti: Any, steps: Iterable[Step], **run: str) -> list[str]:
    """The failures ``steps`` recorded (XCom ``failure``), first one first: of this run, or of ``dag_id``/``run_id``."""
    found = ti.xcom_pull(task_ids=list(steps), key=FAILURE_KEY, **run)
    return [r for r in (found if isinstance(found, list) else [found]) if r]


def failure_reason(context: Any, steps: tuple[Step, ...]) -> str:
    """The recorded failures of this run's ``steps``, first one first."""
    return "; ".join(recorded_failures(context["ti"], steps)) or "a step failed (see the Airflow run's logs)"
