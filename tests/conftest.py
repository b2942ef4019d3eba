"""Shared fixtures: a real lab (alpha, beta, gamma) in a temporary folder on free ports."""

from __future__ import annotations

import random
import uuid

import pytest

from include.backends.base import MiB
from lab import verify
from lab.lab import Lab
from lab.procutil import wait_until

EXECUTOR_OPTION = "--executor"


def pytest_addoption(parser):
    parser.addoption(
        EXECUTOR_OPTION,
        choices=("local", "celery"),
        default="local",
        help="Airflow's executor in the integration tests' lab: local (LocalExecutor) or celery (Redis, two workers)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``executors(...)`` run only on those executors: deselected on the others, never skipped."""
    executor = config.getoption(EXECUTOR_OPTION)
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("executors")
        (keep if marker is None or executor in marker.args else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_session = {}  # "config": pytest's, once configured


def pytest_configure(config):
    _session["config"] = config


def pytest_runtest_logreport(report):
    """A failure's report at once, not only in the summary at the end: a run cut short (a hang, CI's time limit)
    still shows why its first failure failed."""
    config = _session.get("config")
    reporter = config.pluginmanager.get_plugin("terminalreporter") if config else None
    if report.failed and reporter is not None:
        printed = f"\n--- its stdout, the end:\n{report.capstdout[-2000:]}" if report.capstdout else ""
        reporter.write_line(f"\nFAILED {report.nodeid} ({report.when}):\n{report.longreprtext[-4000:]}{printed}")


@pytest.fixture(scope="session")
def executor(request):
    """The executor the lab's Airflow runs (``--executor``)."""
    return request.config.getoption(EXECUTOR_OPTION)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    # short timers so crash tests run quickly: a remote LUN fails I/O after 2 s
    # without its source, and a copy is flushed every second
    lab.configure(reconnect_delay=2, flush_interval=1.0)
    lab.up()
    try:
        yield lab
    finally:
        results = lab.down()
        assert all(results.values()), f"arrays that did not stop: {results}"


@pytest.fixture
def lun_name():
    return f"volume-{uuid.uuid4()}"


def fill_pattern(size: int, seed: int, *, hole_every: int = 4) -> bytes:
    """Random data with every ``hole_every``-th MiB left as zeros (holes on a sparse LUN)."""
    rng = random.Random(seed)
    out = bytearray(size)
    for off in range(0, size, MiB):
        if (off // MiB) % hole_every:
            out[off : off + MiB] = rng.randbytes(min(MiB, size - off))
    return bytes(out)


@pytest.fixture
def make_lun(lab):
    """Create a LUN on an array, fill it with a pattern; removes it (and its takeover) afterwards."""
    made = []

    def make(array: str, name: str, size: int, *, pool: str = "pool1", seed: int = 1) -> bytes:
        backend = lab.backend(array)
        backend.create_lun(name, size, pool)
        made.append((array, name))
        data = fill_pattern(size, seed)
        handle = verify.connect(backend.export_lun(name).uri)
        for off in range(0, size, MiB):  # zero MiBs stay holes
            block = data[off : off + MiB]
            if any(block):
                handle.pwrite(block, off)
        handle.flush()
        handle.shutdown()
        backend.unexport_lun(name)
        return data

    yield make
    for array, name in made:
        backend = lab.backend(array)
        for cleanup in (backend.release_takeover, backend.unexport_lun, backend.delete_lun):
            try:
                cleanup(name)
            except Exception:  # already deleted by the test, or the array is down
                pass


def wait_done(target, volume, timeout=120.0):
    """Poll ``complete_migration_target`` until a terminal state; returns the last progress."""
    progress = None

    def done():
        nonlocal progress
        progress = target.complete_migration_target(volume)
        return progress.state.terminal

    assert wait_until(done, timeout, 0.2), f"copy not finished after {timeout} s: {progress}"
    return progress


def finish_and_remove(target, volume):
    """Let a takeover run to its end unthrottled, then remove the target LUN."""
    try:
        target.set_migration_speed(volume, 0)
    except Exception:  # already ended
        pass
    wait_done(target, volume)
    target.unexport_lun(volume.name)
    target.delete_lun(volume.name)
