"""The lab's OpenStack services: Keystone tokens and catalog, PostgreSQL, RabbitMQ.

Stopping them by PID (every process and port gone) and starting them again on
their data is checked when the session fixture ``services`` ends (conftest.py).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.env import port_open
from lab.procutil import process_tree
from lab.services.openstack import Services
from lab.services.postgres import pg_bindir

pytestmark = pytest.mark.integration

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_token(services: Services, user: str, password: str, project: str):
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}},
            },
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
        }
    }
    req = urllib.request.Request(
        f"{services.auth_url}/auth/tokens",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with NO_PROXY.open(req, timeout=30) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read() or b"{}")


@pytest.mark.parametrize("user", ["admin", "member", "cinder"])
def test_users_get_tokens(services, user):
    creds = services.credentials(user)
    assert creds["auth_url"] == f"http://127.0.0.1:{services.keystone_port}/v3"
    status, headers, body = post_token(services, creds["username"], creds["password"], creds["project_name"])
    assert status == 201, body
    assert headers["X-Subject-Token"]
    assert body["token"]["project"]["name"] == {"admin": "admin", "member": "demo", "cinder": "service"}[user]
    roles = {r["name"] for r in body["token"]["roles"]}
    assert ("admin" in roles) == (user != "member"), roles
    assert "member" in roles or "admin" in roles


def test_wrong_password_is_refused(services):
    status, headers, _ = post_token(services, "member", "not-the-password", "demo")
    assert status == 401
    assert "X-Subject-Token" not in headers


def test_catalog_holds_cinder_endpoints(services):
    _, token = services.token("admin")
    by_type = {entry["type"]: entry for entry in token["catalog"]}
    for service_type in ("block-storage", "volumev3"):  # official type, and the one cinderclient asks for
        endpoints = by_type[service_type]["endpoints"]
        assert {e["interface"] for e in endpoints} == {"public", "internal", "admin"}
        for e in endpoints:
            assert e["url"] == f"http://127.0.0.1:{services.cinder_api_port}/v3/{token['project']['id']}"
            assert e["region_id"] == "RegionOne"
    assert by_type["identity"]["endpoints"][0]["url"] == services.auth_url


def test_postgres_accepts_lab_user_on_cinder_db(services):
    port = services.port("postgres")
    assert port_open(port)
    assert services.database_url("cinder") == (
        f"postgresql+psycopg2://lab:{services.password('postgres')}@127.0.0.1:{port}/cinder"
    )
    cmd = [str(pg_bindir() / "psql"), "-X", "-tA", "-h", "127.0.0.1", "-p", str(port), "-U", "lab", "-d", "cinder"]
    env = {**os.environ, "PGPASSWORD": services.password("postgres"), "PGCONNECT_TIMEOUT": "10"}
    query = "select current_user, current_database()"
    out = subprocess.run([*cmd, "-c", query], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lab|cinder"
    env["PGPASSWORD"] = "wrong"
    out = subprocess.run([*cmd, "-c", "select 1"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "password authentication failed" in out.stderr


def test_rabbitmq_has_our_user_and_no_guest(services):
    users = [line.split()[0] for line in services.rabbitmqctl("list_users", "--no-table-headers").splitlines() if line]
    assert users == ["lab"]
    perms = services.rabbitmqctl("list_permissions", "-p", "/", "--no-table-headers").split()
    assert perms == ["lab", ".*", ".*", ".*"]
    assert (
        services.transport_url()
        == f"rabbit://lab:{services.password('rabbitmq')}@127.0.0.1:{services.port('rabbitmq')}/"
    )


def test_rabbitmq_speaks_amqp(services):
    with socket.create_connection(("127.0.0.1", services.port("rabbitmq")), timeout=10) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        frame = s.recv(7)
    # a method frame on channel 0: Connection.Start
    assert frame[0] == 1 and frame[1:3] == b"\x00\x00", frame


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # /proc/net/tcp*


def listening(pids) -> list[tuple[str, int]]:
    """(hex local address, port) of the TCP sockets in LISTEN held by ``pids`` (from /proc, no ss needed)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append((address, int(port, 16)))
    return found


def test_everything_listens_on_loopback_only(services):
    pids = {p for pid in services.pids().values() if pid for p in process_tree(pid)}
    sockets = listening(pids)
    ports = {port for _, port in sockets}
    for name in ("postgres", "rabbitmq", "rabbitmq_dist", "epmd", "keystone"):
        assert services.port(name) in ports, name
    assert all(address in LOOPBACK for address, _ in sockets), sockets


def test_up_again_is_a_no_op(services):
    before = services.pids()
    start = time.monotonic()
    assert services.up() == before
    assert time.monotonic() - start < 5


def test_secrets_are_private(services):
    for name in ("services.json", "openrc-admin", "openrc-member"):
        assert stat.S_IMODE((services.root / name).stat().st_mode) == 0o600
    rc = (services.root / "openrc-member").read_text()
    for line in (
        f"export OS_AUTH_URL=http://127.0.0.1:{services.keystone_port}/v3",
        "export OS_IDENTITY_API_VERSION=3",
        "export OS_VOLUME_API_VERSION=3",
        "export OS_USERNAME=member",
        "export OS_PROJECT_NAME=demo",
    ):
        assert line in rc.splitlines()
    assert services.openrc("admin") == (services.root / "openrc-admin").read_text()


def test_status_and_memory(services):
    rows = services.status()
    assert {r["service"] for r in rows} == {"postgres", "rabbitmq", "epmd", "keystone"}
    assert all(r["ok"] for r in rows), rows
    print()
    for r in rows:
        print(f"{r['service']:9} pid {r['pid']:>7} port {r['port']:>5} RSS {r['rss_mib']:7.1f} MiB (process tree)")
    print(f"{'total':9} {'':27} RSS {sum(r['rss_mib'] for r in rows):7.1f} MiB")
