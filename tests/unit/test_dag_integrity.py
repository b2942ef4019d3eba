"""Every DAG imports without credentials or network, has tags and retries, and does no I/O while parsed.

The DAG folders (the project's, and the lab's bench DAG) are parsed in a
fresh interpreter with an empty AIRFLOW_HOME and no Connections at all; an
audit hook records every network call, process start and file written while
the DAG files are parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from include.migration.rebalance import REBALANCE_PARAMS_SCHEMA
from include.migration.steps import AuditStep, RebalanceStep, Step

ROOT = Path(__file__).resolve().parents[2]

PARSE = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag

    events = []
    WATCHED = ("socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.posix_spawn", "os.exec")

    def audit(event, args):
        if event.startswith(WATCHED):
            events.append(f"{event} {args!r}"[:200])
        elif event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            events.append(f"open for writing {args[0]!r}")

    sys.addaudithook(audit)
    bags = [DagBag(folder) for folder in sys.argv[1:]]
    parsed = list(events)  # what parsing did; the report below adds nothing to watch
    from airflow.serialization.serialized_objects import DagSerialization

    dags = {dag_id: dag for bag in bags for dag_id, dag in bag.dags.items()}
    unserializable = {}
    for dag_id, dag in dags.items():  # what the dag-processor does next: a DAG it cannot store does not run
        try:
            DagSerialization.to_dict(dag)
        except Exception as exc:
            unserializable[dag_id] = str(exc)[:2000]
    report = {
        "import_errors": {k: str(v) for bag in bags for k, v in bag.import_errors.items()},
        "unserializable": unserializable,
        "events": parsed,
        "dags": {
            dag_id: {
                "tags": sorted(dag.tags),
                "tasks": {t.task_id: t.retries for t in dag.tasks},
                "params": sorted(dag.params.keys()),
                "schedule": getattr(dag.timetable, "expression", None),
                "max_active_runs": dag.max_active_runs,
                "outlets": {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets},
                "shape": sorted([t.task_id, sorted(t.downstream_task_ids), str(t.trigger_rule)] for t in dag.tasks),
            }
            for dag_id, dag in dags.items()
        },
    }
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OS_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/unused.db",
        PYTHONPATH=str(ROOT),
        http_proxy="http://127.0.0.1:9",  # anything that tries the network fails loudly
        https_proxy="http://127.0.0.1:9",
    )
    run = subprocess.run(
        [sys.executable, "-c", PARSE, str(ROOT / "dags"), str(ROOT / "lab" / "dags")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert run.returncode == 0 and line, run.stderr[-3000:]
    return json.loads(line.removeprefix("REPORT "))


def test_every_dag_imports_without_errors(report):
    assert report["import_errors"] == {}


def test_every_dag_serializes_as_the_dag_processor_stores_it(report):
    assert report["unserializable"] == {}
    assert {"volume_migration", "volume_rebalance", "volume_audit"} <= set(report["dags"])


def test_no_network_process_or_file_writes_at_parse_time(report):
    assert report["events"] == []


def test_dags_have_tags_and_every_task_retries(report):
    for dag_id, dag in report["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        no_retries = [task for task, retries in dag["tasks"].items() if not retries]
        assert not no_retries, f"{dag_id}: tasks without retries: {no_retries}"


def test_volume_migration_reads_like_the_blueprint(report):
    dag = report["dags"]["volume_migration"]
    assert set(dag["tasks"]) == {
        "validate_and_lock",
        "source_driver_migrate",
        "target_takeover",
        "wait_for_copy",
        "drivers_skipped",
        "host_copy",
        "commit",
        "rollback",
    }
    assert set(dag["tasks"]) == set(Step), "the task ids are the flow's Step names, all of them"
    assert dag["params"] == sorted(
        [
            "volume_id",
            "dest_host",
            "force_host_copy",
            "new_type",
            "copy_mode",
            "speed_mib",
            "copy_timeout_s",
            "task_timeout_s",
        ]
    )


def test_the_bench_floor_has_the_shape_of_volume_migration(report):
    """bench/attachable.py compares volume_migration with Airflow's floor: the same tasks, edges and rules."""
    assert report["dags"]["migration_floor"]["shape"] == report["dags"]["volume_migration"]["shape"]


def test_volume_rebalance_plans_migrates_and_publishes(report):
    dag = report["dags"]["volume_rebalance"]
    assert set(dag["tasks"]) == set(RebalanceStep)
    assert dag["params"] == sorted(REBALANCE_PARAMS_SCHEMA)
    assert dag["schedule"] == "0 3 * * *", "daily at 03:00 unless VOLUME_REBALANCE_SCHEDULE says otherwise"
    assert dag["max_active_runs"] == 1, "one dispatcher at a time counts the limits"
    assert dag["outlets"] == {RebalanceStep.PUBLISH: ["volume_rebalance"]}


def test_volume_audit_finds_then_repairs_only_when_asked(report):
    dag = report["dags"]["volume_audit"]
    assert dag["shape"] == [[AuditStep.FIND, [AuditStep.REPAIR], "TriggerRule.ALL_SUCCESS"],
                            [AuditStep.REPAIR, [], "TriggerRule.ALL_SUCCESS"]]  # fmt: skip
    assert dag["params"] == ["repair"]
    assert dag["schedule"] == "0 * * * *", "hourly unless VOLUME_AUDIT_SCHEDULE says otherwise"
    assert dag["max_active_runs"] == 1, "one repair at a time"
