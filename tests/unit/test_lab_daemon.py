"""The lab services' base (lab/services/daemon.py) with real, small processes: sh and sleep."""

from __future__ import annotations

import shutil
import sys

import pytest

from lab.errors import LabError
from lab.procutil import pid_alive, process_tree, wait_ready, wait_until
from lab.services.daemon import Daemons, run_cli


def test_run_cli_logs_the_command_and_its_output(tmp_path):
    log = tmp_path / "setup.log"
    assert run_cli(["echo", "hello"], log, timeout=10) == "hello\n"
    assert log.read_text() == "$ echo hello\nhello\n"


def test_run_cli_failure_names_the_log_and_the_last_lines(tmp_path):
    log = tmp_path / "setup.log"
    script = "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3"
    with pytest.raises(LabError) as err:
        run_cli(["sh", "-c", script], log, timeout=10, what="the tool")
    assert err.value.message == f"the tool failed (exit 3): line3 / line4 / line5 / line6 / line7; see {log}"
    assert "line1\n" in log.read_text()


def test_run_cli_timeout_names_the_log(tmp_path):
    log = tmp_path / "setup.log"
    with pytest.raises(LabError, match=f"sleep did not finish within 0 s; see {log}"):
        run_cli(["sleep", "5"], log, timeout=0.2)


class Sleepers(Daemons):
    names = ("first", "second")
    stop_timeout = 5.0

    def command(self, name: str) -> list[str]:
        # a child that leaves the session: SIGKILL to the session does not reach it, stop must
        return ["sh", "-c", "setsid sleep 60 & wait"] if name == "second" else ["sleep", "60"]


def test_daemons_start_once_and_stop_by_pid_with_their_whole_tree(tmp_path):
    if shutil.which("setsid") is None:
        pytest.skip("no setsid")
    sleepers = Sleepers(tmp_path)
    pids = sleepers.start_all()
    try:
        assert pids == {name: sleepers.pid(name) for name in Sleepers.names}
        assert (tmp_path / "first.pid").read_text() == str(pids["first"])
        assert sleepers.start("first") == pids["first"]  # running: nothing started
        assert wait_until(lambda: len(process_tree(pids["second"])) == 2, 5)
        tree = process_tree(pids["second"])
        assert sleepers.stop_all() == {"second": True, "first": True}
        assert not any(pid_alive(p) for p in [pids["first"], *tree])
        assert sleepers.pid("first") is None and not (tmp_path / "first.pid").exists()
        assert sleepers.stop("first")  # not running: nothing to do
    finally:
        sleepers.stop_all()


def test_wait_ready_fails_at_once_when_the_process_dies(tmp_path):
    class Quitter(Daemons):
        def command(self, name: str) -> list[str]:
            return [sys.executable, "-c", "raise SystemExit(1)"]

    pid = Quitter(tmp_path).start("quitter")
    log = tmp_path / "quitter.log"
    with pytest.raises(LabError, match=f"^quitter exited at start; see {log}$"):
        wait_ready(lambda: False, pids={"quitter": pid}, timeout=30, what="quitter", log=log)


def test_wait_ready_times_out_with_what_it_saw_and_returns_when_ready(tmp_path):
    seen: dict[str, str] = {}

    def probe() -> bool:
        seen["state"] = "starting"
        return False

    with pytest.raises(LabError, match=r"^thing not ready within 0 s: \{'state': 'starting'\}; see LOG$"):
        wait_ready(probe, pids={}, timeout=0.2, what="thing", log="LOG", seen=seen)
    calls = []
    wait_ready(lambda: calls.append(1) or len(calls) > 2, pids={}, timeout=5, what="thing", log="LOG", interval=0.01)
    assert len(calls) == 3
