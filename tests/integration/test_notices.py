"""Failure notices on the real lab: a failed volume_migration and an audit that leaves findings each send one mail
through the Connection ``migration_notices`` (set through Airflow's REST API, as an operator sets it) to a real
SMTP server on 127.0.0.1; the mail says what failed, the step, the reason and links to the run."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from include.backends.base import MiB
from include.migration.notices import TAG
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG, AuditStep, Step
from lab.mailbox import Mailbox
from plugins.notifiers.failure_notice import NOTICE_CONN_ID
from tests.integration.migration_runs import leftover_name

pytestmark = pytest.mark.integration

MAIL_WAIT_S = 120  # the dag-processor runs a failed run's callback on its next loop


@pytest.fixture
def mailbox(api):
    with Mailbox() as box:
        api.set_connection(NOTICE_CONN_ID, "smtp", **box.connection("ops@lab.example"))
        try:
            yield box
        finally:
            api.delete_connection(NOTICE_CONN_ID)


def test_a_failed_migration_and_an_audit_with_findings_are_each_mailed(mailbox, api, airflow, admin, lab):
    airflow.wait_dags((MIGRATION_DAG, AUDIT_DAG), 120)
    missing = str(uuid.uuid4())  # no such volume: validate_and_lock refuses it, the run fails
    run_id = api.trigger(MIGRATION_DAG, {"volume_id": missing, "dest_host": "lab@alpha#pool1"})
    assert api.wait_run(MIGRATION_DAG, run_id, 180)["state"] == "failed"
    mail = mailbox.wait_for(missing, MAIL_WAIT_S)
    assert mail is not None, [m["Subject"] for m in mailbox.mails]
    body = Mailbox.text(mail)
    assert mail["Subject"] == f"{TAG} {MIGRATION_DAG} failed: volume {missing} to lab@alpha#pool1", mail["Subject"]
    assert mail["To"] == "ops@lab.example"
    assert f"step {Step.VALIDATE_AND_LOCK}: " in body and missing in body.split(f"step {Step.VALIDATE_AND_LOCK}: ")[1]
    run_link = f"{airflow.url}/dags/{MIGRATION_DAG}/runs/{quote(run_id, safe='')}"  # Airflow's UI: the run's page
    assert f'<a href="{run_link}/tasks/{Step.VALIDATE_AND_LOCK}">' in body, body
    assert f'<a href="{run_link}">' in body, body

    # an orphan of this Cinder's on gamma: the audit (without repair) leaves it and fails, and says so by mail
    orphan = leftover_name(admin, "gamma")
    lab.backend("gamma").create_lun(orphan, 64 * MiB, "pool1")
    try:
        audit_run = api.trigger(AUDIT_DAG, {"repair": False})
        assert api.wait_run(AUDIT_DAG, audit_run, 180)["state"] == "failed"
        mail = mailbox.wait_for(f"{AUDIT_DAG} failed", MAIL_WAIT_S, orphan)  # not another test's audit, mailed late
        assert mail is not None, [m["Subject"] for m in mailbox.mails]
        body = Mailbox.text(mail)
        assert mail["Subject"] == f"{TAG} {AUDIT_DAG} failed: the audit"
        assert f"step {AuditStep.REPAIR}: " in body and "inconsistencies left for an operator" in body, body
        assert f"orphan_lun gamma/{orphan}" in body, body
    finally:
        lab.backend("gamma").delete_lun(orphan)
