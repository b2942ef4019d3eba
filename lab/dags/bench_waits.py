"""bench_waits: many deferred waits in one triggerer, for bench/bulk.py.

One run maps the project's ``TargetCopySensor`` ``count`` times over one
volume: each mapped task starts on a worker, defers, and its
``TargetCopyTrigger`` reads the migration's view in Cinder every
``poll_interval`` seconds in the triggerer, as a migration's ``wait_for_copy``
does (without reports to Cinder: no owner). The bench points them all at one
paused takeover, so they wait until it ends.

Lab equipment: the lab's Airflow loads it from its own bundle (``lab``).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from plugins.sensors.target_copy import TargetCopySensor

WAITS_DAG = "bench_waits"
WAIT_TASK = "wait"


@dag(
    dag_id=WAITS_DAG,
    schedule=None,
    catchup=False,
    tags=["lab", "bench"],
    params={
        "volume_id": Param("", type="string"),
        "backend": Param("alpha", type="string"),
        "count": Param(10, type="integer", minimum=1, maximum=5000),
        "timeout_s": Param(3600, type="integer", minimum=1),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
)
def bench_waits() -> None:
    @task
    def names(**context: object) -> list[str]:
        params = context["params"]  # type: ignore[index]
        return [params["volume_id"]] * int(params["count"])  # type: ignore[index]

    TargetCopySensor.partial(
        task_id=WAIT_TASK,
        backend="{{ params.backend }}",
        deadline="{{ dag_run.start_date.timestamp() + params.timeout_s }}",
        poll_interval=5.0,
    ).expand(volume_id=names())


bench_waits()
