"""What Prometheus scrapes, from the facts one scrape read (no Airflow, no Cinder)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from include.backends.base import GiB, MigrationProgress, MigrationState
from include.migration.metrics import ScrapeFacts, render
from include.migration.operator_rows import RunFacts

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TAKEOVER = {"validate_and_lock": "success", "source_driver_migrate": "success", "target_takeover": "success",
            "wait_for_copy": "success", "commit": "success", "host_copy": "skipped"}  # fmt: skip
HOST_COPY = {"validate_and_lock": "success", "drivers_skipped": "success", "host_copy": "success", "commit": "success"}


def plan(dest: str, size: int = GiB) -> dict:
    return {"volume_id": f"vol-{dest}", "dest_host": f"lab@{dest}#pool1", "size": size}


def run(run_id, state, tasks, dest="alpha", *, usable_s=None, done_s=None, size=GiB):
    ends = {}
    if usable_s is not None:
        ends["target_takeover" if "target_takeover" in tasks else "commit"] = T0 + timedelta(seconds=usable_s)
    return RunFacts(run_id, state, {}, tasks, plan(dest, size), started=T0,
                    ended=T0 + timedelta(seconds=done_s) if done_s else None, task_ended=ends)  # fmt: skip


def samples(facts: ScrapeFacts) -> dict[tuple[str, tuple], float]:
    text = render(facts).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_runs_times_bytes_and_running_copies():
    running = run("r4", "running", {**TAKEOVER, "wait_for_copy": "deferred", "commit": None}, dest="beta")
    facts = ScrapeFacts(
        runs=[
            run("r1", "success", TAKEOVER, usable_s=1.7, done_s=14, size=10 * GiB),
            run("r2", "success", HOST_COPY, dest="gamma", usable_s=40, done_s=40),
            run("r3", "failed", {"validate_and_lock": "failed"}),
            running,
        ],
        progress={"r4": MigrationProgress(MigrationState.COPYING, GiB // 4, GiB, rate_bps=50 << 20)},
    )
    got = samples(facts)
    assert got["cinder_volume_migration_runs_total", (("path", "takeover"), ("state", "success"))] == 1
    assert got["cinder_volume_migration_runs_total", (("path", "host_copy"), ("state", "success"))] == 1
    assert got["cinder_volume_migration_runs_total", (("path", "none"), ("state", "failed"))] == 1
    assert got["cinder_volume_migration_in_flight", (("path", "takeover"),)] == 1
    usable = "cinder_volume_migration_time_to_attachable_seconds"
    assert got[f"{usable}_bucket", (("le", "2.0"), ("path", "takeover"))] == 1
    assert got[f"{usable}_bucket", (("le", "1.0"), ("path", "takeover"))] == 0
    assert got[f"{usable}_sum", (("path", "takeover"),)] == 1.7
    assert got[f"{usable}_count", (("path", "host_copy"),)] == 1
    assert got[f"{usable}_bucket", (("le", "30.0"), ("path", "host_copy"))] == 0
    assert got["cinder_volume_migration_duration_seconds_sum", (("path", "takeover"),)] == 14
    assert got["cinder_volume_migration_bytes_copied_total", (("backend", "alpha"),)] == 10 * GiB
    assert got["cinder_volume_migration_bytes_copied_total", (("backend", "gamma"),)] == GiB
    assert got["cinder_volume_migration_copy_rate_bytes_per_second", (("backend", "beta"),)] == 50 << 20
    assert got["cinder_volume_migration_copy_progress_ratio", (("backend", "beta"), ("volume_id", "vol-beta"))] == 0.25


def test_rebalance_moves_and_the_last_audit():
    facts = ScrapeFacts(runs=[], rebalance_moves=["moved", "moved", "failed"], audit_kinds=["orphan_lun"] * 2,
                        audit_at=T0)  # fmt: skip
    got = samples(facts)
    assert got["cinder_volume_rebalance_moves_total", (("outcome", "moved"),)] == 2
    assert got["cinder_volume_rebalance_moves_total", (("outcome", "failed"),)] == 1
    assert got["cinder_volume_rebalance_moves_total", (("outcome", "not_started"),)] == 0
    assert got["cinder_volume_audit_findings", (("kind", "orphan_lun"),)] == 2
    assert got["cinder_volume_audit_findings", (("kind", "foreign_lun"),)] == 0
    assert got["cinder_volume_audit_last_run_timestamp_seconds", ()] == T0.timestamp()


def test_no_audit_yet_no_audit_metrics_and_no_runs_zeros():
    got = samples(ScrapeFacts(runs=[]))
    assert not any(name.startswith("cinder_volume_audit") for name, _ in got)
    assert got["cinder_volume_migration_runs_total", (("path", "takeover"), ("state", "failed"))] == 0
