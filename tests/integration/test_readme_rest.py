"""The README's REST example (the ``sh`` block after ``<!-- rest-example -->``), run verbatim on the lab.

The block reads its settings from the environment (``VAR=${VAR:-default}`` at its top),
so the test hands it the lab's values there and runs the block as the README
tells operators to: saved as a file, run with ``sh``. ``AIRFLOW_PASSWORD``
is left to the block's default, the lab's password file read from
``.lab/airflow/passwords.json`` (the test runs it in a folder where that is the
lab's file); the wrong-password test sets it through the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from include.migration.steps import MIGRATION_DAG
from lab.env import PROJECT_ROOT
from lab.services.cinder import CINDER_HOST

pytestmark = pytest.mark.integration

DAG = MIGRATION_DAG
MARKER = "<!-- rest-example -->"
BLOCK_TIMEOUT = 300  # s; the block's own limit (MAX_POLLS x 5 s) is below it
MAX_POLLS = 50
SETTINGS = ("AIRFLOW", "AIRFLOW_USER", "AIRFLOW_PASSWORD", "VOLUME_ID", "DEST_HOST", "MAX_POLLS")
STATE_LINE = re.compile(r"\d\d:\d\d:\d\d (\S+)")


def readme_block() -> str:
    """The text between the ``sh`` fence after the marker and its closing fence, verbatim."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme.count(MARKER) == 1, f"{MARKER} must mark exactly one block in README.md"
    found = re.search(re.escape(MARKER) + r"\n```sh\n(.*?\n)```\n", readme, re.DOTALL)
    assert found, f"no ```sh block directly after {MARKER} in README.md"
    return found.group(1)


def run_block(folder: Path, shell: str, **settings: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Save the block in ``folder`` and run it there with ``shell``; the settings come from the environment."""
    assert shutil.which("jq"), "the README's block needs jq (scripts/bootstrap.sh installs it)"
    script = folder / "rest-example.sh"
    script.write_text(readme_block())
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    env.update(settings)
    started = time.monotonic()
    result = subprocess.run(
        [shell, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
    )
    took = time.monotonic() - started
    print(f"\n{shell} rest-example.sh: exit {result.returncode} in {took:.1f} s")
    print(f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}---")
    return result, took


def run_count(api) -> int:
    return api.request("GET", f"/dags/{DAG}/dagRuns")["total_entries"]


def test_readme_block_migrates_a_volume(airflow, api, admin, volume, tmp_path):
    """beta -> alpha through the block: it prints the run, its states up to success, the tasks' states."""
    vid, dest = volume("beta")["id"], f"{CINDER_HOST}@alpha#pool1"
    # the block's default password: the lab's password file, as .lab/airflow/passwords.json
    (tmp_path / ".lab" / "airflow").mkdir(parents=True)
    (tmp_path / ".lab" / "airflow" / "passwords.json").symlink_to(airflow.root / "passwords.json")
    runs = run_count(api)

    result, took = run_block(
        tmp_path, "sh", AIRFLOW=airflow.url, VOLUME_ID=vid, DEST_HOST=dest, MAX_POLLS=str(MAX_POLLS)
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run manual__"), lines
    run_id = lines[0].removeprefix("run ")
    polled = [i for i, line in enumerate(lines) if STATE_LINE.fullmatch(line)]
    assert polled == list(range(1, len(polled) + 1)), lines  # one state line per poll, after the run id
    states = [STATE_LINE.fullmatch(lines[i]).group(1) for i in polled]
    assert states[-1] == "success" and set(states[:-1]) <= {"queued", "running"}, states
    printed = dict(line.split(" ", 1) for line in lines[polled[-1] + 1 :])
    tis = {task_id: ti["state"] for task_id, ti in api.task_instances(DAG, run_id).items()}
    assert printed == {task_id: "null" if state is None else state for task_id, state in tis.items()}
    assert printed["validate_and_lock"] == printed["commit"] == "success", printed
    # exactly this one run, with the conf the block sent
    assert run_count(api) == runs + 1
    run = api.run(DAG, run_id)
    assert (run["state"], run["conf"]) == ("success", {"volume_id": vid, "dest_host": dest})
    moved = admin.get_volume(vid)
    assert (moved["status"], moved["migration_status"], moved["os-vol-host-attr:host"]) == (
        "available",
        "success",
        dest,
    )
    assert took < BLOCK_TIMEOUT


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_readme_block_stops_on_a_wrong_password(airflow, api, tmp_path, shell):
    """A refused login ends the block at once with curl's HTTP error; nothing is triggered."""
    runs = run_count(api)
    result, took = run_block(
        tmp_path,
        shell,
        AIRFLOW=airflow.url,
        AIRFLOW_PASSWORD=f"wrong-{uuid.uuid4().hex[:8]}",
        VOLUME_ID=str(uuid.uuid4()),
        DEST_HOST=f"{CINDER_HOST}@alpha#pool1",
    )
    assert result.returncode != 0
    assert took < 30
    assert "The requested URL returned error: 401" in result.stderr
    assert "no token:" in result.stderr
    assert result.stdout == ""
    assert run_count(api) == runs
