"""CrashSafeLocalExecutor's FileLock: a holder killed with SIGKILL gives the lock back, unlike a semaphore."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time

import pytest

from plugins.executors.local_executor import CrashSafeLocalExecutor, FileLock


def hold_for_ever(lock: FileLock, taken) -> None:
    lock.acquire()
    taken.set()
    time.sleep(60)


def test_a_lock_whose_holder_is_killed_is_free_again(tmp_path):
    lock = FileLock(str(tmp_path / "lock"))
    ctx = multiprocessing.get_context("fork")
    taken = ctx.Event()
    holder = ctx.Process(target=hold_for_ever, args=(lock, taken))
    holder.start()
    try:
        assert taken.wait(10)
        assert not lock.acquire(block=False)  # held by the other process
        assert not lock.acquire(timeout=0.2)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert lock.acquire(timeout=5)
        lock.release()
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join(10)


def test_the_lock_is_reentrant_within_a_thread_and_exclusive_between_descriptors(tmp_path):
    """``multiprocessing.Value`` takes its lock again inside ``with value:`` (its ``value`` property)."""
    lock = FileLock(str(tmp_path / "lock"))
    other = FileLock(lock.path)  # another process's view of the same lock: its own descriptor
    with lock:
        assert lock.acquire(block=False)
        lock.release()
        assert not other.acquire(block=False)
    assert other.acquire(block=False)
    other.release()
    with pytest.raises(ValueError, match="does not hold it"):
        lock.release()


def test_a_value_with_the_lock_counts_and_pickles_as_its_path(tmp_path):
    lock = FileLock(str(tmp_path / "lock"))
    value = multiprocessing.Value("I", lock=lock)
    with value:
        value.value += 3
    assert value.value == 3
    assert pickle.loads(pickle.dumps(lock)).path == lock.path


def test_the_executor_runs_its_queues_on_file_locks_and_removes_them_at_the_end():
    executor = CrashSafeLocalExecutor(parallelism=2)
    executor.start()
    try:
        lock_dir = executor._lock_dir
        assert lock_dir and os.path.isdir(lock_dir)
        assert isinstance(executor.activity_queue._rlock, FileLock)
        assert isinstance(executor.result_queue._wlock, FileLock)
        assert isinstance(executor._unread_messages.get_lock(), FileLock)
        assert len(executor.workers) == 2 and all(p.is_alive() for p in executor.workers.values())
    finally:
        executor.end()
    assert not os.path.exists(lock_dir)
