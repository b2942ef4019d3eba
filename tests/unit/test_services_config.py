"""Services configuration without processes: ports fixed once, secrets private, URLs and credentials."""

from __future__ import annotations

import json
import stat

import pytest

from lab.errors import LabError
from lab.services.openstack import Services


def test_configure_once_private_and_stable(tmp_path):
    services = Services(tmp_path / "services")
    with pytest.raises(LabError, match="not configured"):
        services.port("keystone")
    assert services.down() == {} and services.status() == []
    services.configure()
    config = json.loads(services.config_path.read_text())
    ports = config["ports"]
    assert set(ports) == {"postgres", "rabbitmq", "rabbitmq_dist", "epmd", "keystone", "cinder_api"}
    assert len(set(ports.values())) == len(ports)
    assert len(set(config["passwords"].values())) == 5
    Services(tmp_path / "services").configure()  # a second time changes nothing
    assert json.loads(services.config_path.read_text()) == config
    for name in ("services.json", "openrc-admin", "openrc-member"):
        assert stat.S_IMODE((services.root / name).stat().st_mode) == 0o600


def test_urls_and_credentials(tmp_path):
    services = Services(tmp_path / "services")
    services.configure()
    p = services.port
    assert services.database_url("cinder") == (
        f"postgresql+psycopg2://lab:{services.password('postgres')}@127.0.0.1:{p('postgres')}/cinder"
    )
    assert services.transport_url() == f"rabbit://lab:{services.password('rabbitmq')}@127.0.0.1:{p('rabbitmq')}/"
    assert services.rabbit_node == f"lab-{p('rabbitmq')}@localhost"
    assert services.cinder_url == f"http://127.0.0.1:{services.cinder_api_port}/v3/%(project_id)s"
    projects = {user: services.credentials(user)["project_name"] for user in ("admin", "member", "cinder")}
    assert projects == {"admin": "admin", "member": "demo", "cinder": "service"}
    creds = services.credentials("member")
    assert creds["auth_url"] == f"http://127.0.0.1:{services.keystone_port}/v3"
    assert creds["user_domain_name"] == creds["project_domain_name"] == "Default"
    rc = services.openrc("admin").splitlines()
    assert f"export OS_PASSWORD={services.password('admin')}" in rc
    assert "export OS_IDENTITY_API_VERSION=3" in rc and "export OS_VOLUME_API_VERSION=3" in rc
    with pytest.raises(LabError, match="unknown lab user"):
        services.credentials("guest")


def test_an_older_services_json_still_reads(tmp_path):
    """Files written before ``host``, ``users`` and ``paths`` were dropped (derived, never read) keep working."""
    services = Services(tmp_path / "services")
    services.configure()
    config = json.loads(services.config_path.read_text())
    assert set(config) == {"ports", "passwords", "rabbitmq_node"}
    config.update(host="127.0.0.1", users={"postgres": "lab", "rabbitmq": "lab"}, paths={"root": str(services.root)})
    services.config_path.write_text(json.dumps(config))
    older = Services(tmp_path / "services")
    older.configure()  # written once: left as it is
    assert json.loads(older.config_path.read_text()) == config
    assert older.port("keystone") == config["ports"]["keystone"]
    assert older.rabbit_node == config["rabbitmq_node"]
    assert older.credentials("admin")["password"] == config["passwords"]["admin"]
