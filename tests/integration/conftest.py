"""Fixtures for integration tests: the lab's services (PostgreSQL, RabbitMQ, Keystone) and Cinder, from nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from include.backends.base import MiB
from include.migration.errors import CinderError
from lab.env import port_open
from lab.fill import create_volumes
from lab.procutil import pid_alive, process_tree, wait_until
from lab.services.airflow import AirflowLab
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.ceph import CephLab
from lab.services.cinder import CINDER_VENV, CinderLab
from lab.services.openstack import Services

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


CONNECTOR = {"host": "testhost", "ip": "127.0.0.1", "initiator": "iqn.test", "multipath": False, "platform": "x86_64"}


def hook_for(services, user):
    return services.cinder_hook(user, retry_attempts=6, retry_seconds=60)


def running(component, what):
    """Fixture body: ``component.up()`` (timed, printed as ``what``), yield it, then ``down()``, every part stopped."""
    started = time.monotonic()
    component.up()
    print(f"\n{what} up in {time.monotonic() - started:.1f} s")
    try:
        yield component
    finally:
        assert all(component.down().values())


KEPT_IMAGE = (CEPH_POOLS["ceph-hdd"], "lab-kept-across-down-up")


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    """The lab's Ceph from nothing. At the end (after Cinder stopped): an image written, ``down()`` stops every
    daemon and its whole tree, ``up()`` again on the kept data (the everyday ``lab down; lab up``) reads it back."""
    cluster = CephLab(tmp_path_factory.mktemp("ceph"))
    started = time.monotonic()
    try:
        cluster.up()
        print(f"\nceph up from nothing (mon and OSD mkfs, pools) in {time.monotonic() - started:.1f} s")
        yield cluster
        data = os.urandom(MiB)
        cluster.write_image(*KEPT_IMAGE, data, size=4 * MiB)
        trees = {name: process_tree(pid) for name in cluster.names if (pid := cluster.pid(name))}
        assert len(trees) == 3, f"not every Ceph daemon runs: {trees}"
        assert all(cluster.down().values())
        left = [p for tree in trees.values() for p in tree if pid_alive(p)]
        assert not left, f"Ceph processes left after down: {left}"
        started = time.monotonic()
        cluster.up()
        print(f"ceph up again on its kept data in {time.monotonic() - started:.1f} s")
        assert cluster.read_image(*KEPT_IMAGE, length=MiB) == data
    finally:
        assert all(cluster.down().values())


@pytest.fixture(scope="session")
def cinder(lab, services, ceph, tmp_path_factory):
    yield from running(CinderLab(tmp_path_factory.mktemp("cinder"), lab, services, ceph), "cinder")


@pytest.fixture(scope="session")
def airflow(lab, services, cinder, executor, tmp_path_factory):
    airflow = AirflowLab(tmp_path_factory.mktemp("airflow"), lab, services, executor)
    yield from running(airflow, f"airflow on {executor} (db migrate, components healthy, DAG parsed)")


@pytest.fixture(scope="session")
def api(airflow):
    return airflow.api


@pytest.fixture(scope="session")
def admin(cinder, services):
    return hook_for(services, "admin")


@pytest.fixture(scope="session")
def member(cinder, services):
    return hook_for(services, "member")


def wait_status(hook, volume_id, status, timeout=60):
    volume = {}

    def reached():
        volume.update(hook.get_volume(volume_id))
        if volume["status"] == "error":
            raise AssertionError(f"volume {volume_id} went to error")
        return volume["status"] == status

    assert wait_until(reached, timeout, 0.5), f"volume {volume_id} is {volume.get('status')}, not {status}"
    return volume


@pytest.fixture
def volume(admin):
    """A 1 GiB volume on alpha, or on the backend named (``lab.fill.create_volumes``), deleted afterwards."""
    made = []

    def make(backend="alpha", size=1):
        (vol,) = create_volumes(admin, 1, backend, size, prefix="test", timeout=120)
        made.append(vol["id"])
        return vol

    yield make
    for volume_id in made:
        try:
            admin.request("DELETE", f"/volumes/{volume_id}")
        except CinderError:
            pass


def cinder_cli(services, user, *args):
    """The real cinder CLI with password auth through Keystone."""
    creds = services.credentials(user)
    env = dict(
        os.environ,
        OS_AUTH_URL=creds["auth_url"],
        OS_USERNAME=creds["username"],
        OS_PASSWORD=creds["password"],
        OS_PROJECT_NAME=creds["project_name"],
        OS_USER_DOMAIN_NAME=creds["user_domain_name"],
        OS_PROJECT_DOMAIN_NAME=creds["project_domain_name"],
        OS_IDENTITY_API_VERSION="3",
        OS_VOLUME_API_VERSION="3.71",
    )
    run = subprocess.run([str(CINDER_VENV / "bin" / "cinder"), *args], capture_output=True, text=True, env=env)
    return run.returncode, run.stdout + run.stderr
