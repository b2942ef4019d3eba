"""Fixtures for integration tests: the lab's services (PostgreSQL, RabbitMQ, Keystone) from nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from include.lab.procutil import pid_alive, process_tree
from include.lab.services import Services, port_open

SERVICE_PORTS = ("postgres", "rabbitmq", "rabbitmq_dist", "epmd", "keystone")


def down_and_check(services: Services) -> None:
    """``down()``: every service reports stopped, its whole process tree is gone and its ports refuse."""
    trees = {name: process_tree(pid) for name, pid in services.pids().items() if pid}
    assert set(trees) == {"postgres", "rabbitmq", "epmd", "keystone"}, f"not all running before down: {trees}"
    start = time.monotonic()
    results = services.down()
    print(f"services down in {time.monotonic() - start:.1f} s")
    assert results == dict.fromkeys(("keystone", "rabbitmq", "epmd", "postgres"), True), results
    left = {name: [p for p in tree if pid_alive(p)] for name, tree in trees.items()}
    assert not any(left.values()), f"processes left: {left}"
    still_open = [name for name in SERVICE_PORTS if port_open(services.port(name))]
    assert not still_open, f"ports still open: {still_open}"
    assert services.pids() == dict.fromkeys(("keystone", "rabbitmq", "epmd", "postgres"))


@pytest.fixture(scope="session")
def services():
    """Services of a fresh lab in a temporary folder on free ports.

    At the end (after every test that uses them): ``down()`` must stop everything; then
    ``up()`` again on the kept data (the everyday ``lab down; lab up``) and ``down()`` again.
    Not under pytest's basetemp: that is 0700 and the postgres OS user must reach the cluster.
    """
    base = Path(tempfile.mkdtemp(prefix="lab-services-"))
    os.chmod(base, 0o711)
    svc = Services(base / "services")
    start = time.monotonic()
    try:
        svc.up()
        took = time.monotonic() - start
        print(f"\nservices up from nothing (initdb, db_sync, bootstrap, RabbitMQ's first boot) in {took:.1f} s")
        yield svc
        print()
        down_and_check(svc)
        start = time.monotonic()
        svc.up()
        print(f"services up again on their kept data in {time.monotonic() - start:.1f} s")
        assert all(row["ok"] for row in svc.status()), svc.status()
        svc.token("member")
        down_and_check(svc)
    finally:
        results = svc.down()  # after a failure above, or a no-op
        shutil.rmtree(base, ignore_errors=True)
        assert all(results.values()), f"services that did not stop: {results}"
