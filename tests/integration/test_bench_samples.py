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
