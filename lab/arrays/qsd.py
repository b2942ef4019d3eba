"""One qemu-storage-daemon process and a synchronous QMP facade over qemu.qmp."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient

from include.backends.errors import BackendError
from lab.procutil import die_with_parent, wait_until

log = logging.getLogger(__name__)


class QMPCommandError(BackendError):
    """QEMU refused a QMP command."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc}")
        self.error_class = error_class
        self.desc = desc


class QMP:
    """qemu.qmp's asyncio client driven from any thread.

    The client lives on a private event loop thread; ``execute`` submits a
    command there and waits for its answer.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp-{name}", daemon=True)
        self._thread.start()
        self._client = QMPClient(name)

    def connect(self, path: str) -> None:
        asyncio.run_coroutine_threadsafe(self._client.connect(path), self._loop).result(10)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        # we poll query-jobs instead of reading events: keep the default event queue empty
        self._loop.call_soon_threadsafe(self._client.events.clear)
        future = asyncio.run_coroutine_threadsafe(self._client.execute(command, arguments), self._loop)
        try:
            return future.result(timeout)
        except ExecuteError as exc:
            raise QMPCommandError(command, exc.error_class, str(exc)) from None

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._client.disconnect(), self._loop).result(5)
        except Exception:  # already gone
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)


class StorageDaemon:
    """Starts qemu-storage-daemon with an inherited NBD listener and QMP on a unix socket."""

    def __init__(self, run_dir: Path, nbd_fd: int, log_path: Path) -> None:
        self.run_dir = run_dir
        self.nbd_fd = nbd_fd
        self.log_path = log_path
        self.qmp_path = run_dir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMP | None = None

    def start(self) -> QMP:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.qmp_path.exists():
            self.qmp_path.unlink()
        args = [
            "qemu-storage-daemon",
            "--chardev",
            f"socket,id=qmp0,path={self.qmp_path},server=on,wait=off",
            "--monitor",
            "chardev=qmp0",
            "--nbd-server",
            f"addr.type=fd,addr.str={self.nbd_fd},max-connections=0",
        ]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                pass_fds=(self.nbd_fd,),
                preexec_fn=die_with_parent,
            )
        if not wait_until(lambda: self.qmp_path.exists() or self.proc.poll() is not None, 15):
            raise BackendError("qemu-storage-daemon did not open its QMP socket in 15 s")
        if self.proc.poll() is not None:
            raise BackendError(f"qemu-storage-daemon exited with {self.proc.returncode}; see {self.log_path}")
        self.qmp = QMP(f"qsd-{os.getpid()}")
        self.qmp.connect(str(self.qmp_path))
        log.info("qemu-storage-daemon pid %s up", self.proc.pid)
        return self.qmp

    def stop(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=5)
            except Exception:
                pass
            self.qmp.close()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
