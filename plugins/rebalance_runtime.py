"""What the volume_rebalance tasks need from Airflow: the dispatcher's ports, runs of volume_migration.

``AirflowPorts`` gives ``include.migration.dispatch`` its view of the world:
Cinder through the hook (``read_cloud``), and ``volume_migration`` runs
started and watched through ``plugins/migration_runs.py`` (each run's note
names the rebalance that started it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from include.cinder_plugin.names import ERROR_KEY
from include.migration.cinder_api import CinderApi
from include.migration.dispatch import migration_conf
from include.migration.errors import CinderError
from include.migration.inventory import Cloud, read_cloud
from include.migration.planner import Move
from include.migration.steps import MIGRATION_DAG, Step
from plugins import migration_runs
from plugins.migration_runtime import recorded_failures


class AirflowPorts:
    """The dispatcher's ports inside a running task ``ti`` of a rebalance run."""

    def __init__(self, ti: Any, cinder: CinderApi, speed_mib: int | None) -> None:
        self.ti, self.cinder, self.speed_mib = ti, cinder, speed_mib

    def look(self) -> Cloud:
        return read_cloud(self.cinder)

    def start(self, move: Move, run_id: str) -> None:
        note = f"rebalance run {self.ti.run_id}: {move.source} -> {move.destination} ({move.path})"
        migration_runs.trigger(run_id, migration_conf(move, self.speed_mib), note)

    def exists(self, run_ids: Sequence[str]) -> set[str]:
        return migration_runs.existing(self.ti, list(run_ids))

    def state(self, run_id: str) -> str:
        return migration_runs.state(self.ti, run_id)

    def failure(self, run_id: str, volume_id: str) -> str:
        """The run's recorded failures (its steps' XCom ``failure``), else what Cinder kept, else its state."""
        reasons = recorded_failures(self.ti, Step, dag_id=MIGRATION_DAG, run_id=run_id)
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
        try:
            kept = (self.cinder.get_volume(volume_id).get("metadata") or {}).get(ERROR_KEY)
        except CinderError as exc:
            kept = f"(Cinder: {exc})"
        return kept or f"run {run_id} failed (see its task logs)"
