"""Process helpers for the lab: children that die with their parent, TCP listeners."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lab.errors import LabError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the thread that forked it exits.

    An array daemon that is killed takes its data-plane server with it, the
    way a crashed controller takes its target ports down.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def nodelay_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY set before listen().

    Accepted sockets inherit TCP_NODELAY on Linux; QEMU 7.2's NBD server does
    not set it itself, which costs 30x in IOPS through a remote node
    (DESIGN.md section 4). The socket is inheritable so a child can take it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_ready(
    probe: Callable[[], bool],
    *,
    pids: dict[str, int],
    timeout: float,
    what: str,
    log: Path | str,
    interval: float = 0.1,
    seen: object = None,
) -> None:
    """Poll ``probe`` until it is true.

    LabError "<name> exited at start; see <log>" as soon as a process of ``pids`` (name -> PID) is gone,
    "<what> not ready within <timeout> s; see <log>" when time is up (with ``seen``, what the probe saw
    last, if given: it is formatted then).
    """

    def ready() -> bool:
        for name, pid in pids.items():
            if not pid_alive(pid):
                raise LabError(f"{name} exited at start; see {log}")
        return probe()

    if not wait_until(ready, timeout, interval):
        state = "" if seen is None else f": {seen}"
        raise LabError(f"{what} not ready within {timeout:.0f} s{state}; see {log}")


def read_pid(path: Path) -> int | None:
    """The PID a PID file names (its first word), if that process is alive; else None."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (created so, never world-readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is dead for our purposes
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, ..., utime (11), stime (12)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. True if the process is gone."""
    if not pid_alive(pid):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if wait_until(lambda: not pid_alive(pid), timeout):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return wait_until(lambda: not pid_alive(pid), 5.0)


def spawn_daemon(
    cmd: list[str], *, log_path: Path, pid_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start ``cmd`` in a session of its own (it outlives us), output appended to ``log_path``.

    Its PID goes to ``pid_path``; when that file already names a live process, nothing is started.
    ``env`` None: our environment.
    """
    pid = read_pid(pid_path)
    if pid is not None:
        return pid
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    pid_path.write_text(str(proc.pid))
    return proc.pid


def stop_daemon(pid_path: Path, timeout: float = 20.0) -> bool:
    """Stop what ``spawn_daemon`` started: SIGTERM, then SIGKILL to its whole session. True if it is gone."""
    pid = read_pid(pid_path)
    if pid is None:
        return True
    ok = stop_pid(pid, timeout=timeout)
    try:  # children it forked into its session (worker processes): none may be left
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if ok:
        pid_path.unlink(missing_ok=True)
    return ok


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive (parents from /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if pid_alive(p):
            tree.append(p)
            todo.extend(children.get(p, []))
    return tree


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, KiB (VmRSS summed: shared pages count per process)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total


def comm(pid: int) -> str:
    """The command name of ``pid`` (/proc/<pid>/comm, at most 15 characters); "" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (/proc/<pid>/stat); None if it is gone."""
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string (what setproctitle sets); "" if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def blocked_in_read(pid: int) -> bool:
    """Whether ``pid`` waits in the read system call (/proc/<pid>/syscall: its number, x86_64 or aarch64)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return False
    return first == {"aarch64": "63"}.get(platform.machine(), "0")


def descendant_named(pid: int, prefixes: tuple[str, ...]) -> int | None:
    """The first process in ``process_tree(pid)`` whose command name starts with one of ``prefixes``."""
    return next((p for p in process_tree(pid) if comm(p).startswith(prefixes)), None)


def cpu_ticks(pid: int) -> int:
    """CPU time ``pid`` has used, user + system, in clock ticks (os.sysconf("SC_CLK_TCK")); 0 if it is gone."""
    try:
        fields = _stat_fields(pid)
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)
