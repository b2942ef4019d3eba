"""A small sample of the bench commands, so that they keep working; the full runs are bench/ commands.

Each runs the command as an operator would (a fresh interpreter, the project
root on PYTHONPATH) and checks what it prints and writes, not how fast: speed
targets live in the benchmarks' own tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_dataplane_sample_verifies_its_copies_and_stops_its_lab(tmp_path):
    out = tmp_path / "dataplane.json"
    run = bench("bench/dataplane.py", "--quick", "--only", "sparse_host_copy", "--output", str(out), timeout=300)
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 5 |")]
    assert len(rows) == 2 and all("data verified" in row for row in rows), run.stdout
    assert "lab stopped: {'alpha': True, 'beta': True, 'gamma': True}" in run.stderr
    table = json.loads(out.read_text())["table"]
    assert [row["path"] for row in table] == ["gamma->alpha", "alpha->gamma"]


def test_planner_bench_brings_every_pool_under_the_threshold(tmp_path):
    out = tmp_path / "planner.json"
    run = bench("bench/rebalance_planner.py", "--volumes", "2000", "--pools", "10", "--repeat", "1",
                "--output", str(out), timeout=120)  # fmt: skip
    result = json.loads(out.read_text())["result"]
    assert result["volumes"] == 2000 and result["pools_over_before"] > 0 and result["pools_over_after"] == 0
    assert result["moves"] + result["skipped"] == 2000
    assert f"| 2000 | 10 | {result['pools_over_before']} -> 0 |" in run.stdout


def test_attachable_and_bulk_benches_measure_on_the_session_lab(lab, airflow, api, admin):
    """bench/attachable.py and bench/bulk.py, their smallest case each, in-process on the tests' own lab."""
    from bench import attachable, bulk
    from lab.dags.bench_waits import WAITS_DAG
    from lab.dags.migration_floor import FLOOR_DAG

    airflow.wait_dags((FLOOR_DAG, WAITS_DAG), 120)
    rows, floor = attachable.one_case(api, admin, 1, 1), attachable.floor_case(api, 1)
    assert [r["run_state"] for r in rows + floor] == ["success", "success"], rows + floor
    for row in rows + floor:
        assert row["attachable_s"] > 0
        assert all(row["tasks"][step]["run_s"] > 0 for step in attachable.BEFORE_ATTACHABLE), row
    assert "p50 ratio to the floor" in attachable.table("1x1", rows, floor)

    triggerer = airflow.pid("triggerer")
    moved = bulk.bulk(lab, api, admin, 1, triggerer)
    assert (moved["succeeded"], moved["data_verified"]) == (1, True), moved
    assert moved["copy_mibs"] > 0 and moved["qemu_img_convert_mibs"] > 0 and moved["triggerer_peak_rss_mib"] > 0
    waited = bulk.waits(lab, api, admin, 5, triggerer, sample_s=1.5)
    assert (waited["deferred"], waited["run_state"]) == (5, "success"), waited
    assert "5 deferred waits" in bulk.table({"bulk": [moved], "waits": waited})
