"""Keystone in the lab: Keystone 30 from ``.venv-keystone`` under uWSGI, in ``<services>/keystone``.

Its database is ``keystone`` on the lab's PostgreSQL; fernet tokens. The
first start runs ``keystone-manage`` (db_sync, key setup, bootstrap); every
start then ensures, through Keystone's API, the projects ``admin``, ``demo``
and ``service``, the users ``admin``, ``member`` and ``cinder`` and the Cinder
block-storage endpoints in the catalog.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from pathlib import Path

from lab.env import HOST, PROJECT_ROOT
from lab.errors import LabError
from lab.localhttp import http_call
from lab.procutil import wait_ready, write_private
from lab.services.config import DOMAIN, KEYSTONE_USERS, REGION, ServicesConfig
from lab.services.daemon import Daemons, left, run_cli

KEYSTONE_VENV = PROJECT_ROOT / ".venv-keystone"
# python-cinderclient 9 asks keystoneauth for "volumev3"; keystoneauth matches it to the official
# type "block-storage" through os-service-types' aliases. Both are registered, so that clients
# that compare the type literally (curl, scripts) find the endpoint too.
CINDER_SERVICES = (("cinderv3", "block-storage"), ("cinderv3", "volumev3"))
INTERFACES = ("public", "internal", "admin")


class Keystone(Daemons):
    """Keystone under ``root`` (``<services>/keystone``): uWSGI's PID in ``uwsgi.pid``."""

    names = ("uwsgi",)

    def __init__(self, root: Path, config: ServicesConfig, venv: Path = KEYSTONE_VENV) -> None:
        super().__init__(root)
        self.config = config
        self.venv = Path(venv)

    @property
    def log(self) -> Path:
        return self.root / "keystone.log"

    def log_path(self, name: str) -> Path:
        return self.log

    def env(self, **extra: str) -> dict[str, str]:
        """Our environment without what would leak into Keystone's virtualenv or its config (OS_*)."""
        dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("OS_")}
        env["OS_KEYSTONE_CONFIG_DIR"] = str(self.root)
        env.update(extra)
        return env

    def cwd(self) -> Path:
        return self.root

    def command(self, name: str) -> list[str]:
        return [
            str(self.venv / "bin" / "uwsgi"),
            *("--http-socket", f"{HOST}:{self.config.keystone_port}"),
            *("--virtualenv", str(self.venv)),
            *("--module", "keystone.wsgi.api:application"),
            *("--env", f"OS_KEYSTONE_CONFIG_DIR={self.root}"),
            *("--master", "--processes", "2", "--need-app", "--die-on-term", "--no-orphans", "--thunder-lock"),
            # each worker loads the app itself (as devstack does): no DB pool or thread crosses a fork;
            # as little memory as sharing it after a fork (PSS), less RSS
            "--lazy-apps",
            # without it, clients see intermittent connection resets on token requests (DESIGN.md 5)
            *("--add-header", "Connection: close"),
            *("--buffer-size", "65535"),  # tokens and catalogs in headers
            *("--pidfile", str(self.pid_path(name))),
        ]

    def _conf(self) -> str:
        k = self.root
        return f"""# written by lab/services/keystone.py
[DEFAULT]
debug = false

[database]
connection = {self.config.database_url("keystone")}

[token]
provider = fernet

[fernet_tokens]
key_repository = {k / "fernet-keys"}

[fernet_receipts]
key_repository = {k / "fernet-keys"}

[credential]
key_repository = {k / "credential-keys"}

[identity]
# the lowest bcrypt cost: password checks in milliseconds (a lab on 127.0.0.1)
password_hash_rounds = 4
# bcrypt's own limit (else a warning on every password check)
max_password_length = 72
"""

    def _manage(self, *args: str, timeout: float, env: dict[str, str] | None = None) -> None:
        run_cli(
            [str(self.venv / "bin" / "keystone-manage"), "--config-file", str(self.root / "keystone.conf"), *args],
            self.root / "keystone-manage.log",
            timeout=timeout,
            env=self.env(**(env or {})),
            cwd=self.root,
            what=f"keystone-manage {args[0]}",
        )

    def _bootstrap(self, deadline: float) -> None:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        self._manage("db_sync", timeout=left(deadline))
        for what in ("fernet_setup", "credential_setup"):
            self._manage(what, "--keystone-user", user, "--keystone-group", group, timeout=60)
        self._manage(
            "bootstrap",
            *("--bootstrap-username", "admin", "--bootstrap-project-name", "admin"),
            *("--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone"),
            *("--bootstrap-region-id", REGION),
            *(f"--bootstrap-{i}-url={self.config.auth_url}" for i in INTERFACES),
            timeout=left(deadline),
            env={"OS_BOOTSTRAP_PASSWORD": self.config.password("admin")},  # not on the command line
        )

    def ready(self) -> bool:
        """Whether Keystone answers ``GET /v3``."""
        try:
            status, _, _ = self.request("GET", "/v3", timeout=2)
        except LabError:
            return False
        return status == 200

    def up(self, deadline: float) -> int:
        """Bootstrap once, start uWSGI unless it runs, wait until Keystone answers; its PID."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_private(self.root / "keystone.conf", self._conf())
        stamp = self.root / "bootstrapped"
        if not stamp.exists():
            self._bootstrap(deadline)
            stamp.write_text("db_sync, fernet_setup, credential_setup, bootstrap done\n")
        started = self.pid("uwsgi") is None
        pid = self.start("uwsgi")
        wait_ready(
            self.ready,
            pids={"Keystone (uWSGI)": pid},
            timeout=left(deadline),
            what=f"Keystone on {self.config.auth_url}",
            log=self.log,
        )
        if started:  # idempotent, so a restart also repairs what is missing
            self._setup()
        return pid

    # ---- API ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
        *,
        token: str | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], dict[str, object]]:
        """One call to Keystone's API (``path`` like ``/v3/projects``): (status, headers, JSON body)."""
        headers = {"Accept": "application/json", "Connection": "close"}
        if token:
            headers["X-Auth-Token"] = token
        url = f"http://{HOST}:{self.config.keystone_port}{path}"
        try:
            status, resp_headers, raw = http_call(method, url, body=body, headers=headers, timeout=timeout)
        except OSError as exc:
            raise LabError(f"Keystone at {url} unreachable: {exc}; see {self.log}") from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return status, resp_headers, payload

    def token(self, user: str) -> tuple[str, dict[str, object]]:
        """A project-scoped token for a lab user: (X-Subject-Token, the token body with its catalog)."""
        c = self.config.credentials(user)
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": user, "domain": {"name": DOMAIN}, "password": c["password"]},
                    },
                },
                "scope": {"project": {"name": c["project_name"], "domain": {"name": DOMAIN}}},
            }
        }
        status, headers, payload = self.request("POST", "/v3/auth/tokens", body)
        if status != 201:
            raise LabError(f"Keystone refused a token for {user} (HTTP {status}): {payload}")
        return headers["X-Subject-Token"], payload["token"]  # type: ignore[return-value]

    def _api(self, token: str, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        status, _, payload = self.request(method, path, body, token=token)
        if status >= 300:
            raise LabError(f"Keystone {method} {path}: HTTP {status} {payload}; see {self.log}")
        return payload

    def _ensure(self, token: str, collection: str, query: str, body: dict[str, object]) -> str:
        """The id of the first object of ``collection`` matching ``query``; created from ``body`` if none."""
        found = self._api(token, "GET", f"/v3/{collection}?{query}")[collection]
        if found:
            return str(found[0]["id"])  # type: ignore[index]
        singular = collection[:-1]
        return str(self._api(token, "POST", f"/v3/{collection}", {singular: body})[singular]["id"])  # type: ignore[index]

    def _setup(self) -> None:
        """Projects, users, role assignments and Cinder's catalog entries; idempotent."""
        token, _ = self.token("admin")
        domain = "default"
        roles = {
            name: self._ensure(token, "roles", f"name={name}", {"name": name})
            for name in ("admin", "member", "service")
        }
        for user, (project, user_roles) in KEYSTONE_USERS.items():
            project_id = self._ensure(
                token, "projects", f"name={project}&domain_id={domain}", {"name": project, "domain_id": domain}
            )
            user_id = self._ensure(
                token,
                "users",
                f"name={user}&domain_id={domain}",
                {
                    "name": user,
                    "domain_id": domain,
                    "password": self.config.password(user),
                    "default_project_id": project_id,
                },
            )
            for role in user_roles:
                self._api(token, "PUT", f"/v3/projects/{project_id}/users/{user_id}/roles/{roles[role]}")
        for name, service_type in CINDER_SERVICES:
            service_id = self._ensure(
                token,
                "services",
                f"type={service_type}",
                {"name": name, "type": service_type, "description": "Cinder (the lab)", "enabled": True},
            )
            for interface in INTERFACES:
                self._ensure_endpoint(token, service_id, interface)

    def _ensure_endpoint(self, token: str, service_id: str, interface: str) -> None:
        url = self.config.cinder_url
        existing = self._api(token, "GET", f"/v3/endpoints?service_id={service_id}&interface={interface}")["endpoints"]
        if not existing:
            endpoint = {"service_id": service_id, "interface": interface, "region_id": REGION, "url": url}
            self._api(token, "POST", "/v3/endpoints", {"endpoint": {**endpoint, "enabled": True}})
        elif existing[0]["url"] != url:  # type: ignore[index]
            endpoint_id = existing[0]["id"]  # type: ignore[index]
            self._api(token, "PATCH", f"/v3/endpoints/{endpoint_id}", {"endpoint": {"url": url}})
