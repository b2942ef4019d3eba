"""Airflow 3 in the lab: api-server, scheduler (LocalExecutor), dag-processor and triggerer.

``AirflowLab(root, lab, services)`` keeps ``AIRFLOW_HOME`` under ``root``; its metadata
database is ``airflow`` on the lab's PostgreSQL. Everything listens on
127.0.0.1 only (the log servers of the scheduler and the triggerer, which
would bind every interface, are not started: the api-server reads the task
logs from ``root/logs`` itself). The DAGs are the project's ``dags/``, with
the project root on ``PYTHONPATH``. ``up`` writes the Connections the DAGs
use (``cinder_default`` with the lab's admin, ``storage_array_<array>`` per
array) through the REST API. ``root/airflow.env`` holds the environment for
the ``airflow`` CLI (``set -a; . root/airflow.env``).

``AirflowApi`` is the REST client (JWT from the simple auth manager) that the
lab, the tests and operators' scripts use.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from functools import cached_property
from pathlib import Path
from typing import Any

from include.backends.errors import BackendError
from lab.env import HOST, PROJECT_ROOT, free_port
from lab.lab import Lab
from lab.localhttp import http_call
from lab.procutil import read_pid, spawn_daemon, stop_daemon, tree_rss_kib, wait_until, write_private

VENV = PROJECT_ROOT / ".venv"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
ADMIN = "admin"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowError(BackendError):
    """The lab's Airflow refused a call or did not come up."""


class AirflowApi:
    """Airflow's REST API (``/api/v2``) with a JWT from ``/auth/token``."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r}, user={self.username!r})"

    def _send(self, method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            status, _, raw = http_call(method, url, body=body, headers=headers, timeout=self.timeout)
        except OSError as exc:
            raise AirflowError(f"Airflow API at {self.base_url} unreachable: {getattr(exc, 'reason', exc)}") from None
        return status, raw

    def token(self) -> str:
        if self._token is None:
            status, raw = self._send(
                "POST", f"{self.base_url}/auth/token", {"username": self.username, "password": self._password}, {}
            )
            if status >= 300:
                raise AirflowError(f"POST /auth/token: HTTP {status}: {raw[:300]!r}")
            self._token = json.loads(raw)["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = ()) -> Any:
        """One call below ``/api/v2``; an HTTP error not in ``ok`` raises AirflowError with the API's detail."""
        status, raw = self._send(
            method, f"{self.base_url}/api/v2{path}", body, {"Authorization": f"Bearer {self.token()}"}
        )
        if status == 401 and self._token:  # expired: once more with a new token
            self._token = None
            status, raw = self._send(
                method, f"{self.base_url}/api/v2{path}", body, {"Authorization": f"Bearer {self.token()}"}
            )
        if status >= 300 and status not in ok:
            try:
                detail = json.loads(raw).get("detail", raw)
            except (ValueError, AttributeError):
                detail = raw[:500]
            raise AirflowError(f"{method} /api/v2{path}: HTTP {status}: {detail}")
        return json.loads(raw) if raw else None

    # ---- runs ---------------------------------------------------------------------------
    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if note:
            body["note"] = note
        return self.request("POST", f"/dags/{self._q(dag_id)}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float, interval: float = 1.0) -> dict[str, Any]:
        """Poll until the run ends; AirflowError after ``timeout`` seconds."""
        run: dict[str, Any] = {}

        def ended() -> bool:
            run.update(self.run(dag_id, run_id))
            return run["state"] in TERMINAL_RUN_STATES

        if not wait_until(ended, timeout, interval):
            raise AirflowError(f"run {run_id} of {dag_id} still {run['state']} after {timeout:.0f} s")
        return run

    def clear_run(self, dag_id: str, run_id: str) -> list[str]:
        """Clear every task of a run (it runs again from the start); returns the cleared task ids."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True}
        answer = self.request("POST", f"/dags/{self._q(dag_id)}/clearTaskInstances", body)
        return [ti["task_id"] for ti in answer.get("task_instances", [])]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        path = f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances"
        return {ti["task_id"]: ti for ti in self.request("GET", path)["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log of one try, as text (one line per event)."""
        path = (
            f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
            f"/logs/{try_number}?full_content=true"
        )
        content = self.request("GET", path).get("content") or []
        lines = []
        for item in content if isinstance(content, list) else [content]:
            if isinstance(item, dict):
                extra = {k: v for k, v in item.items() if k not in ("timestamp", "event", "level", "logger")}
                lines.append(f"{item.get('level', '')} {item.get('event', '')} {extra if extra else ''}".rstrip())
            else:
                lines.append(str(item))
        return "\n".join(lines)

    # ---- connections ----------------------------------------------------------------------
    def set_connection(self, conn_id: str, conn_type: str, **fields: Any) -> None:
        """Create or replace a Connection (``extra`` may be a dict)."""
        body = {"connection_id": conn_id, "conn_type": conn_type, **fields}
        if isinstance(body.get("extra"), dict):
            body["extra"] = json.dumps(body["extra"])
        answer = self.request("POST", "/connections", body, ok=(409,))
        if answer and "connection_id" not in answer:  # 409: it exists
            self.request("PATCH", f"/connections/{self._q(conn_id)}", body)

    def delete_connection(self, conn_id: str) -> None:
        self.request("DELETE", f"/connections/{self._q(conn_id)}", ok=(404,))


class AirflowLab:
    def __init__(self, root: Path, lab: Lab, services: Any) -> None:
        self.root = Path(root)
        self.lab = lab
        self.services = services
        self._config: dict[str, Any] | None = None

    # ---- configuration --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "airflow.json"

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = json.loads(self.config_path.read_text())
        return self._config

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.config['port']}"

    def configure(self) -> None:
        """Fix port and secrets once (``airflow.json``, 0600); write the password file and ``airflow.env``."""
        for sub in ("logs", "plugins", "migration-state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            from cryptography.fernet import Fernet

            config = {
                "port": free_port(),
                "admin_password": secrets.token_hex(12),
                "jwt_secret": secrets.token_hex(32),
                "fernet_key": Fernet.generate_key().decode(),
            }
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        write_private(self.root / "passwords.json", json.dumps({ADMIN: self.config["admin_password"]}) + "\n")
        lines = [f"{key}={value}" for key, value in self.settings().items()]
        write_private(self.root / "airflow.env", "\n".join(lines) + "\n")

    def settings(self) -> dict[str, str]:
        """The environment every Airflow process of the lab gets (Airflow's config as variables)."""
        port = self.config["port"]
        return {
            "AIRFLOW_HOME": str(self.root),
            "PYTHONPATH": str(PROJECT_ROOT),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "6",  # LocalExecutor forks this many workers up front
            "AIRFLOW__CORE__FERNET_KEY": self.config["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.services.database_url("airflow"),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.config["jwt_secret"],
            # a worker that died is noticed within ~30 s (default 300) and its task retried
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # and the triggers of a triggerer that died move to a live one within ~15 s (default 30)
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
            "MIGRATION_STATE_DIR": str(self.root / "migration-state"),
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings()}

    @cached_property
    def api(self) -> AirflowApi:
        """The REST client as the lab's admin (one login, reused)."""
        return AirflowApi(self.url, ADMIN, self.config["admin_password"])

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """Run the ``airflow`` CLI with the lab's settings."""
        run = subprocess.run(
            [str(VENV / "bin" / "airflow"), *args], capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if run.returncode:
            raise AirflowError(f"airflow {' '.join(args)} failed: {(run.stderr or run.stdout).strip()[-2000:]}")
        return run.stdout

    # ---- processes --------------------------------------------------------------------------
    def pid_path(self, component: str) -> Path:
        return self.root / f"{component}.pid"

    def pid(self, component: str) -> int | None:
        return read_pid(self.pid_path(component))

    def command(self, component: str) -> list[str]:
        cmd = [str(VENV / "bin" / "airflow"), component]
        if component in ("scheduler", "triggerer"):
            cmd.append("--skip-serve-logs")  # its log server would listen on every interface
        return cmd

    def start(self, component: str) -> int:
        return spawn_daemon(
            self.command(component),
            log_path=self.root / "logs" / f"{component}.out",
            pid_path=self.pid_path(component),
            env=self.env(),
        )

    def stop(self, component: str) -> bool:
        return stop_daemon(self.pid_path(component), timeout=30)

    def health(self) -> dict[str, str]:
        """Component -> "healthy"/"unhealthy"/... from ``/api/v2/monitor/health`` (no auth needed)."""
        try:
            data = self.api.request("GET", "/monitor/health")
        except AirflowError:
            return {}
        found = {"api-server": "healthy", "metadatabase": data.get("metadatabase", {}).get("status", "")}
        for component, key in HEALTH_KEYS.items():
            found[component] = (data.get(key) or {}).get("status") or "unknown"
        return found

    def up(self, timeout: float = 180.0) -> dict[str, int]:
        """Migrate the database, start the four components, wait until they are healthy and the DAGs parsed."""
        self.configure()
        self.airflow("db", "migrate")
        pids = {component: self.start(component) for component in COMPONENTS}
        last: dict[str, str] = {}

        def healthy() -> bool:
            for component in COMPONENTS:
                if self.pid(component) is None:
                    raise AirflowError(f"airflow {component} exited at start; see {self.root / 'logs'}")
            last.clear()
            last.update(self.health())
            return bool(last) and all(state == "healthy" for state in last.values())

        if not wait_until(healthy, timeout, 1.0):
            raise AirflowError(f"Airflow not healthy within {timeout:.0f} s: {last}; see {self.root / 'logs'}")
        self.write_connections()
        self.wait_dags(("volume_migration",), timeout)
        return pids

    def wait_dags(self, dag_ids: tuple[str, ...], timeout: float) -> None:
        api = self.api
        missing = list(dag_ids)

        def parsed() -> bool:
            errors = api.request("GET", "/importErrors")["import_errors"]
            if errors:
                raise AirflowError(f"DAG import errors: {errors}")
            missing[:] = [d for d in dag_ids if api.request("GET", f"/dags/{d}", ok=(404,)).get("dag_id") != d]
            return not missing

        if not wait_until(parsed, timeout, 1.0):
            raise AirflowError(f"DAGs {missing} not parsed within {timeout:.0f} s; see {self.root / 'logs'}")

    def write_connections(self) -> None:
        """``cinder_default`` (the lab's admin through Keystone) and ``storage_array_<array>`` for each array."""
        api = self.api
        cinder = self.services.cinder_connection("admin")
        api.set_connection("cinder_default", **cinder)
        for name in self.lab.names():
            config = self.lab.config(name)
            api.set_connection(
                f"storage_array_{name}",
                "storage_array",
                host=config.url,
                password=config.token,
                extra={"kind": config.kind, "array": name},
            )

    def down(self) -> dict[str, bool]:
        return {f"airflow {c}": self.stop(c) for c in reversed(COMPONENTS)}

    def status(self) -> list[dict[str, object]]:
        health = self.health() if self.config_path.exists() and self.pid("api-server") else {}
        rows: list[dict[str, object]] = []
        for component in COMPONENTS:
            pid = self.pid(component)
            row: dict[str, object] = {"component": f"airflow {component}", "pid": pid}
            if pid:
                row["rss_mib"] = tree_rss_kib(pid) // 1024
                row["health"] = health.get(component, "unknown")
            rows.append(row)
        if self.config_path.exists():
            rows.append({"ui": self.url, "user": ADMIN, "password_file": str(self.root / "passwords.json")})
        return rows
