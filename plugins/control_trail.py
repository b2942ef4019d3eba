"""The operator view's audit trail: every control used on a copy, in Airflow's own audit log.

Each pause, resume, speed or abandon that the view's API is asked for, done or
refused, becomes one row of Airflow's ``Log`` table (the UI's Browse -> Audit
Log, ``GET /api/v2/eventLogs``): event ``volume_migration.operator_view.<control>``,
the run, the user as owner, and in ``extra`` what was asked and the result.
``trails`` reads them back for the view's rows.
"""

from __future__ import annotations

import json
from typing import Any

from include.migration.operator_rows import trail_entry
from include.migration.steps import MIGRATION_DAG

AUDIT_EVENT_PREFIX = "volume_migration.operator_view."  # Airflow's audit log: one entry per control used


def record_control(session: Any, run_id: str, user: Any, what: str, result: str) -> None:
    """Who did what to which run, when, and the result, in Airflow's own audit log (the UI's Browse -> Audit Log,
    ``GET /api/v2/eventLogs``); the row's trail reads it back."""
    from airflow.models.log import Log

    name = user.get_name() if hasattr(user, "get_name") else str(user)
    event = f"{AUDIT_EVENT_PREFIX}{what.split()[0]}"
    extra = json.dumps({"what": what, "result": result[:500]})
    session.add(Log(event=event, owner=name, owner_display_name=name, extra=extra, dag_id=MIGRATION_DAG,
                    run_id=run_id))  # fmt: skip
    session.commit()


def trails(session: Any, run_ids: list[str]) -> dict[str, tuple[dict[str, str], ...]]:
    """The controls used on each run, oldest first, as Airflow's audit log keeps them (``record_control``)."""
    from airflow.models.log import Log
    from sqlalchemy import select

    found: dict[str, list[dict[str, str]]] = {}
    if not run_ids:
        return {}
    query = select(Log).where(Log.dag_id == MIGRATION_DAG, Log.run_id.in_(run_ids),
                              Log.event.like(f"{AUDIT_EVENT_PREFIX}%")).order_by(Log.id)  # fmt: skip
    for entry in session.scalars(query):
        try:
            extra = json.loads(entry.extra or "{}")
        except ValueError:
            extra = {}
        found.setdefault(entry.run_id, []).append(trail_entry(entry.dttm, entry.owner, entry.event, extra))
    return {run_id: tuple(entries) for run_id, entries in found.items()}
