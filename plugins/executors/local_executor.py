"""Airflow's LocalExecutor, with queue locks that a killed worker cannot keep.

The LocalExecutor hands tasks to its workers over one ``multiprocessing.SimpleQueue``.
Its idle workers all call ``get()``: one of them reads the pipe while it holds the
queue's read lock, the others wait for that lock. The lock is a POSIX semaphore,
and nobody gives it back if its holder dies. SIGKILL that worker and every other
worker, and every worker the executor starts in its place, waits on it for ever: new
tasks stay ``queued`` until the scheduler restarts (seen on the lab, Airflow 3.3.2).
The result queue's write lock and the lock of the counter of unread tasks are
taken by the workers too, for shorter moments, with the same risk.

``CrashSafeLocalExecutor`` swaps these three locks for ``flock`` locks on files of its
own. The kernel releases an ``flock`` lock when the last descriptor of it closes,
and a process's descriptors close when it dies. Each ``acquire`` opens a new
descriptor and ``release`` closes it, so a task process forked from a worker never
inherits one. Everything else is Airflow's executor.

Not covered: a worker killed in the middle of reading one task message (after its
4-byte header, before its body) leaves the pipe out of step; an idle worker waits
before the header, with nothing read.

Use it with ``AIRFLOW__CORE__EXECUTOR=plugins.executors.local_executor.CrashSafeLocalExecutor``.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from airflow.executors.local_executor import LocalExecutor


class FileLock:
    """A re-entrant lock between processes and threads that the kernel releases when its holder dies.

    ``flock`` on a file: each outermost ``acquire`` opens a descriptor of its own and the matching ``release``
    closes it. Re-entrant like the lock of a ``multiprocessing.Value``, whose ``value`` property takes the lock
    again inside ``with value:``. It pickles as its path, so the spawn start method hands it to a worker like the
    semaphore it replaces.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._held: dict[int, list[int]] = {}  # thread id -> [descriptor that holds the lock, depth]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; with ``block=False`` or a ``timeout`` (s), False if it stays taken."""
        held = self._held.get(threading.get_ident())
        if held is not None:
            held[1] += 1
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if block and deadline is None else fcntl.LOCK_NB))
                    break
                except BlockingIOError:
                    if not block or time.monotonic() >= deadline:
                        os.close(fd)
                        return False
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        self._held[threading.get_ident()] = [fd, 1]
        return True

    def release(self) -> None:
        held = self._held.get(threading.get_ident())
        if held is None:
            raise ValueError(f"lock {self.path} released by a thread that does not hold it")
        held[1] -= 1
        if held[1] == 0:
            del self._held[threading.get_ident()]
            os.close(held[0])  # closing the only descriptor of the lock releases it

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class CrashSafeLocalExecutor(LocalExecutor):
    """The LocalExecutor whose workers can be killed at any moment without blocking the others (module docstring)."""

    _lock_dir: str | None = None

    def _spawn_worker(self) -> None:
        self._use_file_locks()
        super()._spawn_worker()

    def _use_file_locks(self) -> None:
        """Before the first worker starts: the queues' and the counter's locks become ``FileLock`` s."""
        if self._lock_dir is not None:
            return
        self._lock_dir = tempfile.mkdtemp(prefix="airflow-local-executor-")
        self.activity_queue._rlock = FileLock(os.path.join(self._lock_dir, "activity-read"))
        self.result_queue._wlock = FileLock(os.path.join(self._lock_dir, "result-write"))
        unread = multiprocessing.Value(ctypes.c_uint, lock=FileLock(os.path.join(self._lock_dir, "unread")))
        unread.value = self._unread_messages.value
        self._unread_messages = unread

    def end(self) -> None:
        try:
            super().end()
        finally:
            if self._lock_dir is not None:
                shutil.rmtree(self._lock_dir, ignore_errors=True)
                self._lock_dir = None
