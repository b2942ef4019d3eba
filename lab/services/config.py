"""What the lab's OpenStack services are called and where they answer: ``services.json`` and what follows from it.

``ServicesConfig(root)`` writes ``root/services.json`` once (0600: free ports
and generated passwords, fixed from then on) and derives, without any process
running, the URLs of PostgreSQL, RabbitMQ, Keystone and Cinder's API, the
credentials of the lab's Keystone users and their ``openrc-<user>`` files.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path

from lab.env import HOST, free_port
from lab.errors import LabError
from lab.procutil import write_private
from plugins.provider_info import CINDER_CONN_TYPE

DB_USER = "lab"
RABBIT_USER = "lab"
REGION = "RegionOne"
DOMAIN = "Default"
PORTS = ("postgres", "rabbitmq", "rabbitmq_dist", "epmd", "keystone", "cinder_api")
PASSWORDS = ("postgres", "rabbitmq", "admin", "member", "cinder")
# user -> (project, roles on it)
KEYSTONE_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", ("admin",)),
    "member": ("demo", ("member",)),
    "cinder": ("service", ("admin", "service")),  # keystonemiddleware in Cinder; "service" for service tokens
}


class ServicesConfig:
    """Ports, passwords, URLs and credentials of the services under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._config: dict[str, dict[str, object]] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "services.json"

    def configured(self) -> bool:
        return self.config_path.exists()

    def configure(self) -> None:
        """Write ``services.json`` once: free ports and generated passwords, fixed from then on."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # the postgres OS user must reach postgres/ (nothing here is listable)
        if not self.configured():
            ports: dict[str, int] = {}
            for name in PORTS:
                port = free_port()
                while port in ports.values():
                    port = free_port()
                ports[name] = port
            config = {
                "ports": ports,
                "passwords": {name: secrets.token_hex(16) for name in PASSWORDS},
                "rabbitmq_node": f"lab-{ports['rabbitmq']}@localhost",
            }
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        for user in ("admin", "member"):
            write_private(self.root / f"openrc-{user}", self.openrc(user))

    @property
    def config(self) -> dict[str, dict[str, object]]:
        """``services.json`` as written (older files also hold ``host``, ``users`` and ``paths``: unread)."""
        if self._config is None:
            try:
                self._config = json.loads(self.config_path.read_text())
            except FileNotFoundError:
                raise LabError(f"services not configured: no {self.config_path}") from None
        return self._config

    def port(self, name: str) -> int:
        return int(self.config["ports"][name])  # type: ignore[call-overload]

    def password(self, name: str) -> str:
        return str(self.config["passwords"][name])

    @property
    def keystone_port(self) -> int:
        return self.port("keystone")

    @property
    def cinder_api_port(self) -> int:
        return self.port("cinder_api")

    @property
    def auth_url(self) -> str:
        return f"http://{HOST}:{self.keystone_port}/v3"

    @property
    def cinder_url(self) -> str:
        """The catalog's block-storage URL, as a template (Cinder fills in the project)."""
        return f"http://{HOST}:{self.cinder_api_port}/v3/%(project_id)s"

    @property
    def rabbit_node(self) -> str:
        return str(self.config["rabbitmq_node"])

    def database_url(self, db: str) -> str:
        return f"postgresql+psycopg2://{DB_USER}:{self.password('postgres')}@{HOST}:{self.port('postgres')}/{db}"

    def transport_url(self) -> str:
        return f"rabbit://{RABBIT_USER}:{self.password('rabbitmq')}@{HOST}:{self.port('rabbitmq')}/"

    def credentials(self, user: str) -> dict[str, str]:
        """Password credentials of ``admin`` (project admin), ``member`` (demo) or ``cinder`` (service)."""
        if user not in KEYSTONE_USERS:
            raise LabError(f"unknown lab user {user!r}: one of {', '.join(KEYSTONE_USERS)}")
        return {
            "auth_url": self.auth_url,
            "username": user,
            "password": self.password(user),
            "project_name": KEYSTONE_USERS[user][0],
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        }

    def cinder_connection(self, user: str) -> dict[str, object]:
        """``user``'s credentials as an Airflow Connection of type openstack_cinder (plugins/hooks/cinder.py)."""
        c = self.credentials(user)
        return {
            "conn_type": CINDER_CONN_TYPE,
            "host": c["auth_url"],
            "login": c["username"],
            "password": c["password"],
            "extra": {k: c[k] for k in ("project_name", "user_domain_name", "project_domain_name")},
        }

    def openrc(self, user: str) -> str:
        """Shell lines exporting the OS_* variables of ``user`` for the openstack/cinder clients."""
        c = self.credentials(user)
        env = {
            "OS_AUTH_TYPE": "password",
            "OS_AUTH_URL": c["auth_url"],
            "OS_IDENTITY_API_VERSION": "3",
            "OS_VOLUME_API_VERSION": "3",
            "OS_USERNAME": c["username"],
            "OS_PASSWORD": c["password"],
            "OS_PROJECT_NAME": c["project_name"],
            "OS_USER_DOMAIN_NAME": c["user_domain_name"],
            "OS_PROJECT_DOMAIN_NAME": c["project_domain_name"],
            "OS_REGION_NAME": REGION,
            "OS_INTERFACE": "public",
        }
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
