"""Prometheus on the real lab: Debian's prometheus scrapes the operator view's /metrics with the scrape token, and
after a migration and an audit its HTTP API answers with the numbers (runs, time to attachable, bytes copied,
audit findings). /metrics refuses a scrape without the token or an Airflow login."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from include.backends.base import GiB, MiB
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG
from lab.procutil import wait_until
from lab.services.cinder import CINDER_HOST
from lab.services.prometheus import PrometheusLab
from tests.integration.migration_runs import leftover_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(airflow, tmp_path_factory):
    server = PrometheusLab(tmp_path_factory.mktemp("prometheus"), airflow)
    server.up()
    try:
        yield server
    finally:
        assert server.down()


def value(prometheus, expr):
    """The one value of an instant query, None when it has no series."""
    result = prometheus.query(expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def eventually(prometheus, expr, ok, timeout=60):
    """The query's value once ``ok`` holds for it (scraped every 2 s), within ``timeout``."""
    seen = []
    assert wait_until(lambda: ok(seen.append(value(prometheus, expr)) or seen[-1]), timeout, 1.0), (expr, seen[-5:])
    print(f"{expr} = {seen[-1]}")
    return seen[-1]


def scrape(airflow, token=None):
    request = urllib.request.Request(f"{airflow.url}/volume-migration/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_prometheus_finds_the_migration_and_the_audit(prometheus, airflow, api, admin, lab, volume):
    airflow.wait_dags((MIGRATION_DAG, AUDIT_DAG), 120)
    success = 'sum(cinder_volume_migration_runs_total{state="success"})'
    before = eventually(prometheus, success, lambda v: v is not None)
    vol = volume("beta")
    run_id = api.trigger(MIGRATION_DAG, {"volume_id": vol["id"], "dest_host": f"{CINDER_HOST}@alpha#pool1"})
    assert api.wait_run(MIGRATION_DAG, run_id, 300)["state"] == "success"

    eventually(prometheus, success, lambda v: v == before + 1)
    takeovers = 'cinder_volume_migration_time_to_attachable_seconds_count{path="takeover"}'
    assert eventually(prometheus, takeovers, lambda v: v is not None) >= 1
    buckets = 'cinder_volume_migration_time_to_attachable_seconds_bucket{path="takeover"}'
    p50 = f"histogram_quantile(0.5, sum by (le) ({buckets}))"
    assert 0 < eventually(prometheus, p50, lambda v: v is not None) <= 10  # a takeover is usable within seconds
    assert eventually(prometheus, 'cinder_volume_migration_bytes_copied_total{backend="alpha"}', lambda v: v) >= GiB
    assert eventually(prometheus, "sum(cinder_volume_migration_in_flight)", lambda v: v is not None) >= 0

    orphan = leftover_name(admin, "gamma")  # a leftover of this Cinder's: the audit finds it
    lab.backend("gamma").create_lun(orphan, 64 * MiB, "pool1")
    try:
        audit_run = api.trigger(AUDIT_DAG, {"repair": False})
        assert api.wait_run(AUDIT_DAG, audit_run, 180)["state"] == "failed"  # findings left: it fails
        eventually(prometheus, 'cinder_volume_audit_findings{kind="orphan_lun"}', lambda v: v and v >= 1)
        assert value(prometheus, 'cinder_volume_audit_findings{kind="foreign_lun"}') == 0
    finally:
        lab.backend("gamma").delete_lun(orphan)

    status, text = scrape(airflow)
    assert status == 401, text
    assert scrape(airflow, "not-the-token")[0] == 401
    status, text = scrape(airflow, airflow.metrics_token_path.read_text().strip())
    assert status == 200 and "# TYPE cinder_volume_migration_runs_total counter" in text, text[:500]
    assert status == 200 and 'cinder_volume_rebalance_moves_total{outcome="moved"}' in text
