"""The small base of the lab's services: one-shot commands with a log, daemons by PID, the wait until they answer.

- ``run_cli``: a command that must succeed (``initdb``, ``rabbitmqctl``, ``keystone-manage``,
  ``cinder-manage``, ``airflow db migrate``), its output appended to a log;
- ``Daemons``: the long-running processes of one service by name, each in a
  session of its own with ``<root>/<name>.pid``, stopped by PID with every
  process of its tree (``procutil.spawn_daemon`` and ``stop_daemon``);
- ``wait_ready`` (in ``procutil``, which ``Lab`` shares): poll until a service
  answers, failing as soon as one of its processes has died.

Every failure is a ``LabError`` naming the log to read.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from lab.errors import LabError
from lab.procutil import process_tree, read_pid, spawn_daemon, stop_daemon, stop_pid


def run_cli(
    cmd: list[str],
    log: Path,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    what: str = "",
) -> str:
    """Run a one-shot command, append it and its output to ``log``; returns its stdout.

    LabError naming the log when it fails (with its last lines) or does not finish within ``timeout``.
    """
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{what or cmd[0]} did not finish within {timeout:.0f} s; see {log}") from None
    with open(log, "a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what or cmd[0]} failed (exit {proc.returncode}): {' / '.join(detail)}; see {log}")
    return proc.stdout


def left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic), at least one: a last step always gets a chance."""
    return max(deadline - time.monotonic(), 1.0)


def stop_tree(pid_path: Path, timeout: float = 20.0) -> bool:
    """Stop the daemon a PID file names and every process of its tree; True if all are gone.

    ``stop_daemon`` (SIGTERM, then SIGKILL to its session), then each descendant that is
    still there (one that left the session) gets SIGTERM, then SIGKILL, and is waited for.
    """
    pid = read_pid(pid_path)
    if pid is None:
        return True
    tree = process_tree(pid)  # before it goes: orphans are no longer its descendants
    ok = stop_daemon(pid_path, timeout)
    for child in tree[1:]:
        ok = stop_pid(child, 5) and ok
    return ok


class Daemons:
    """The daemons of one service, by name, under ``root``.

    A subclass names them (``names``, in start order) and says how each runs: ``command``,
    and ``log_path``, ``env`` and ``cwd`` where the defaults do not fit. Each runs in a session
    of its own, its PID in ``<root>/<name>.pid``; ``start`` is a no-op while it runs.
    """

    names: tuple[str, ...] = ()
    stop_timeout = 20.0

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def command(self, name: str) -> list[str]:
        raise NotImplementedError

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def env(self) -> dict[str, str] | None:
        """The daemons' environment; None: ours."""
        return None

    def cwd(self) -> Path | None:
        return None

    def pid_path(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The PID of ``name`` if it runs."""
        return read_pid(self.pid_path(name))

    def start(self, name: str) -> int:
        """Start ``name`` unless it runs; returns its PID."""
        return spawn_daemon(
            self.command(name),
            log_path=self.log_path(name),
            pid_path=self.pid_path(name),
            env=self.env(),
            cwd=self.cwd(),
        )

    def stop(self, name: str) -> bool:
        return stop_tree(self.pid_path(name), self.stop_timeout)

    def start_all(self) -> dict[str, int]:
        return {name: self.start(name) for name in self.names}

    def stop_all(self) -> dict[str, bool]:
        """Stop every daemon, the last started first; returns {name: stopped}."""
        return {name: self.stop(name) for name in reversed(self.names)}
