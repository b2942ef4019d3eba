"""Failure notices: what they say (plain functions), and the mail they make, received by a real SMTP server on
127.0.0.1 (aiosmtpd) through Airflow's SMTP hook and a Connection given in the environment."""

from __future__ import annotations

import json

import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from include.migration import notices
from include.migration.dispatch import MoveResult, Outcome
from lab.env import free_port
from lab.mailbox import Mailbox
from plugins.notifiers.failure_notice import NOTICE_CONN_ID, FailureNotice, failed_steps, send, send_failed_moves

BASE = "http://airflow.example:8080"
VOLUME = "11111111-1111-1111-1111-111111111111"


def test_a_failed_migration_says_which_volume_where_each_failed_step_why_and_links_to_its_log():
    conf = {"volume_id": VOLUME, "dest_host": "lab@alpha#pool1"}
    notice = notices.failed_run("volume_migration", "manual__1", conf,
                                [("validate_and_lock", "pool lab@alpha#pool1 has 0 GiB free")], BASE)  # fmt: skip
    assert notice.subject == f"[volume migration] volume_migration failed: volume {VOLUME} to lab@alpha#pool1"
    assert "step validate_and_lock: pool lab@alpha#pool1 has 0 GiB free" in notice.lines
    assert f"  log: {BASE}/dags/volume_migration/runs/manual__1/tasks/validate_and_lock" in notice.lines
    assert notice.lines[-1] == f"run: {BASE}/dags/volume_migration/runs/manual__1"
    page = notice.html()
    assert page.count("<a href=") == 2 and f'<a href="{BASE}/dags/volume_migration/runs/manual__1">' in page
    unrecorded = notices.failed_run("volume_audit", "scheduled__2", {"repair": True}, [("find", "")], BASE)
    assert "step find: failed (its log says why)" in unrecorded.lines and "the audit with repair" in unrecorded.subject
    assert "no step failed (task_failure)" in notices.failed_run("volume_rebalance", "r", {}, [], BASE,
                                                                 "task_failure").lines  # fmt: skip


def test_a_rebalance_mails_its_failed_moves_only():
    moved = MoveResult("a", 1 << 30, "lab@beta#pool1", "lab@alpha#pool1", "takeover", Outcome.MOVED, run_id="m1")
    failed = MoveResult(VOLUME, 1 << 30, "lab@beta#pool1", "lab@alpha#pool1", "takeover", Outcome.FAILED,
                        "target_takeover: array alpha is full", "m2")  # fmt: skip
    assert notices.failed_moves("r1", [moved], BASE) is None
    notice = notices.failed_moves("r1", [moved, failed], BASE)
    assert notice.subject == "[volume migration] volume_rebalance: 1 moves failed"
    assert (f"volume {VOLUME}: lab@beta#pool1 -> lab@alpha#pool1 (takeover): target_takeover: array alpha is full"
            in notice.lines)  # fmt: skip
    assert f"  run: {BASE}/dags/volume_migration/runs/m2" in notice.lines


class FakeTi:
    """The task instance a DAG callback gets, at its boundary: the run's task states and the failures recorded."""

    def __init__(self, states, recorded):
        self.states, self.recorded = states, recorded

    def get_task_states(self, dag_id, run_ids):
        return {run_ids[0]: self.states}

    def xcom_pull(self, task_ids, key, dag_id, run_id):
        assert key == "failure"
        return self.recorded.get(task_ids)


def migration_dag():
    """A DAG of the migration's first steps (the real volume_migration needs its params to parse)."""
    with DAG("volume_migration", schedule=None) as dag:
        for task_id in ("validate_and_lock", "source_driver_migrate", "target_takeover", "wait_for_copy", "rollback"):
            EmptyOperator(task_id=task_id)
    return dag


def test_the_failed_steps_are_read_in_the_dags_order_with_what_each_recorded():
    ti = FakeTi({"rollback": "success", "wait_for_copy": "failed", "validate_and_lock": "success",
                 "target_takeover": "failed"}, {"target_takeover": "target_takeover: the array refused"})  # fmt: skip
    found = failed_steps({"ti": ti, "dag": migration_dag(), "run_id": "r1"})
    assert found == [("target_takeover", "the array refused"), ("wait_for_copy", "")]
    assert failed_steps({"dag": migration_dag(), "run_id": "r1"}) == []  # a callback without a task instance


@pytest.fixture
def inbox(monkeypatch):
    """A real SMTP server on 127.0.0.1, and the Connection ``migration_notices`` to it in the environment."""
    with Mailbox() as box:
        fields = box.connection("ops@example.org, oncall@example.org")
        monkeypatch.setenv(f"AIRFLOW_CONN_{NOTICE_CONN_ID.upper()}", json.dumps({"conn_type": "smtp", **fields}))
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE)
        yield box


def test_a_failed_run_is_mailed_to_each_recipient_of_the_connection(inbox):
    ti = FakeTi({"validate_and_lock": "failed"}, {"validate_and_lock": f"validate_and_lock: volume {VOLUME} is in-use"})
    FailureNotice()({"ti": ti, "dag": migration_dag(), "run_id": "manual__9", "params": {"volume_id": VOLUME}})
    [mail] = inbox.mails
    assert mail["To"] == "ops@example.org, oncall@example.org" and mail["From"] == "airflow@lab.example"
    assert mail["Subject"].startswith("[volume migration] volume_migration failed: volume " + VOLUME)
    body = Mailbox.text(mail)
    assert f"step validate_and_lock: volume {VOLUME} is in-use" in body
    assert f'<a href="{BASE}/dags/volume_migration/runs/manual__9/tasks/validate_and_lock">' in body
    moved = MoveResult(VOLUME, 1, "s", "d", "host_copy", Outcome.FAILED, "host_copy: read error", "m3")
    assert send_failed_moves("r2", [moved]) and len(inbox.mails) == 2


def test_without_the_connection_or_a_server_nothing_is_sent_and_nothing_fails(monkeypatch):
    notice = notices.failed_run("volume_audit", "r", {}, [], BASE)
    monkeypatch.delenv(f"AIRFLOW_CONN_{NOTICE_CONN_ID.upper()}", raising=False)
    assert send(notice) is False
    extra = {"to": "ops@example.org", "disable_ssl": True, "disable_tls": True, "retry_limit": 0}
    closed = {"conn_type": "smtp", "host": "127.0.0.1", "port": free_port(), "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{NOTICE_CONN_ID.upper()}", json.dumps(closed))
    assert send(notice) is False  # nobody listens there: logged, not raised
    monkeypatch.setenv(f"AIRFLOW_CONN_{NOTICE_CONN_ID.upper()}", '{"conn_type": "smtp", "port": "not a port"}')
    assert send(notice) is False  # a Connection Airflow cannot parse is none: logged, not raised
