"""Notices of failures by mail: an Airflow notifier on the project's DAGs (what they say: ``notices.py``).

``FailureNotice`` is the ``on_failure_callback`` of ``volume_migration``, ``volume_rebalance`` and
``volume_audit`` (the dag-processor calls it once when a run fails); the rebalance's ``summarize`` step calls
``send_failed_moves`` when moves failed in a run that itself succeeds.

The mail goes through the SMTP Connection ``migration_notices`` (Airflow's SMTP provider: host, port, login,
password; extra ``to``, the recipients, comma-separated; ``from_email``; ``disable_tls`` and ``disable_ssl`` for
a plain relay). Notices are opt-in: without that Connection nothing is sent and a log line says so. A mail that
cannot be sent is logged; it never fails a run or a step.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

from include.migration import notices
from include.migration.dispatch import MoveResult
from plugins.migration_runtime import FAILURE_KEY

log = logging.getLogger(__name__)

NOTICE_CONN_ID = "migration_notices"


def base_url() -> str:
    """Airflow's UI, as its API server names itself (``[api] base_url``), for the links."""
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="") or "http://localhost:8080"


def send(notice: notices.Notice, conn_id: str = NOTICE_CONN_ID) -> bool:
    """Mail ``notice`` through the SMTP Connection ``conn_id``; False (logged) when there is none or it failed."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        to = str(BaseHook.get_connection(conn_id).extra_dejson.get("to") or "")
    except AirflowNotFoundException:
        log.info("no Connection %s: no notice sent (%s)", conn_id, notice.subject)
        return False
    except Exception as exc:  # a notice never fails what it reports on
        log.warning("Connection %s not read (%s): no notice sent (%s)", conn_id, exc, notice.subject)
        return False
    recipients = [address.strip() for address in to.split(",") if address.strip()]
    if not recipients:
        log.warning('Connection %s names no recipient (extra "to"): no notice sent (%s)', conn_id, notice.subject)
        return False
    try:
        with SmtpHook(smtp_conn_id=conn_id) as smtp:
            smtp.send_email_smtp(to=recipients, subject=notice.subject, html_content=notice.html())
    except Exception as exc:  # a notice never fails what it reports on
        log.warning("notice %r not sent through %s: %s", notice.subject, conn_id, exc)
        return False
    log.info("notice sent to %s: %s", ", ".join(recipients), notice.subject)
    return True


def failed_steps(context: Any) -> list[tuple[str, str]]:
    """The run's failed steps, in the DAG's order, each with the reason it recorded (``""``: none)."""
    ti, dag, run_id = context.get("ti"), context["dag"], context["run_id"]
    if ti is None:
        return []
    states = ti.get_task_states(dag_id=dag.dag_id, run_ids=[run_id]).get(run_id) or {}
    failed = []
    for task_id in dag.task_ids:
        if states.get(task_id) != "failed":
            continue
        recorded = ti.xcom_pull(task_ids=task_id, key=FAILURE_KEY, dag_id=dag.dag_id, run_id=run_id)
        why = str(recorded or "")
        failed.append((task_id, why.removeprefix(f"{task_id}: ")))
    return failed


class FailureNotice(BaseNotifier):
    """A DAG's ``on_failure_callback``: mails what failed in the run (``notices.failed_run``)."""

    def __init__(self, conn_id: str = NOTICE_CONN_ID) -> None:
        super().__init__()
        self.conn_id = conn_id

    def notify(self, context: Any) -> None:
        dag_run = context.get("dag_run")
        conf = dict(getattr(dag_run, "conf", None) or context.get("params") or {})
        notice = notices.failed_run(context["dag"].dag_id, context["run_id"], conf, failed_steps(context), base_url(),
                                    str(context.get("reason") or ""))  # fmt: skip
        send(notice, self.conn_id)


def send_failed_moves(run_id: str, results: list[MoveResult], conn_id: str = NOTICE_CONN_ID) -> bool:
    """A rebalance's failed moves, mailed (nothing when none failed)."""
    notice = notices.failed_moves(run_id, results, base_url())
    return notice is not None and send(notice, conn_id)
