"""Airflow 3 in the lab: api-server, scheduler, dag-processor and triggerer, on the Local or the Celery executor.

``AirflowLab(root, lab, services)`` keeps ``AIRFLOW_HOME`` under ``root``; its metadata
database is ``airflow`` on the lab's PostgreSQL. Everything listens on
127.0.0.1 only (the log servers of the scheduler and the triggerer, which
would bind every interface, are not started: the api-server reads the task
logs from ``root/logs`` itself). The DAGs are the project's ``dags/``, with
the project root on ``PYTHONPATH``. ``up`` writes the one Connection the DAGs
use (``cinder_default`` with the lab's admin) through the REST API; Airflow
holds no array credentials. ``root/airflow.env`` holds the environment for
the ``airflow`` CLI (``set -a; . root/airflow.env``).

With ``executor="celery"`` (``lab up --executor celery``) the tasks run on
Celery instead: a Redis server of the lab's own (127.0.0.1, a password, no
persistence) is the broker, PostgreSQL keeps Celery's results, and two Celery
workers, ``worker-1`` and ``worker-2``, stand in for two hosts: separate
processes with separate working and temporary directories. What a task
retried on the other worker needs is on storage both see: the metadata
database, the task logs (``root/logs``, as a shared or remote log store would
be) and the host copy's checkpoints (``MIGRATION_STATE_DIR``). The executor is
kept in ``airflow.json``; changing it needs ``lab down`` first.

``AirflowLab.api`` is the REST client (``airflow_api.py``) as the lab's admin.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from lab.env import HOST, PROJECT_ROOT, free_port
from lab.errors import LabError
from lab.lab import Lab
from lab.procutil import blocked_in_read, cmdline, process_tree, spawn_daemon, tree_rss_kib, wait_ready, write_private
from lab.services.airflow_api import AirflowApi, AirflowError
from lab.services.daemon import Daemons, run_cli

VENV = PROJECT_ROOT / ".venv"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# "local": Airflow's LocalExecutor with locks that a killed worker does not keep (plugins/executors/local_executor.py)
EXECUTORS = {"local": "plugins.executors.local_executor.CrashSafeLocalExecutor", "celery": "CeleryExecutor"}
CELERY_WORKERS = ("worker-1", "worker-2")
CELERY_WORKER_CONCURRENCY = 4
REDIS = "redis"
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
ADMIN = "admin"
VIEWER = "viewer"  # may look at everything, change nothing (the simple auth manager's role of that name)
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
# The project's DAGs (dags/, what workers are shipped), and the lab's own (lab/dags/: bench equipment) apart
DAG_BUNDLES = [
    {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
    {"name": "lab", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(PROJECT_ROOT / "lab" / "dags")}},
]


class AirflowLab(Daemons):
    """Airflow's components under ``root`` (``AIRFLOW_HOME``), each ``<root>/<component>.pid``.

    ``executor``: "local" or "celery"; None keeps the one ``airflow.json`` has (else "local").
    """

    stop_timeout = 30.0

    def __init__(self, root: Path, lab: Lab, services: Any, executor: str | None = None) -> None:
        super().__init__(root)
        if executor is not None and executor not in EXECUTORS:
            raise LabError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
        self.lab = lab
        self.services = services
        self._executor = executor
        self._config: dict[str, Any] | None = None

    @property
    def executor(self) -> str:
        """ "local" or "celery": as asked, else as configured, else "local"."""
        if self._executor is None:
            self._executor = self.config.get("executor", "local") if self.config_path.exists() else "local"
        return self._executor

    @property
    def names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The daemons in start order: Redis first and the Celery workers last on Celery."""
        if self.executor == "celery":
            return (REDIS, *COMPONENTS, *CELERY_WORKERS)
        return COMPONENTS

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

    @property
    def metrics_token_path(self) -> Path:
        """The scrape token of the operator view's ``/metrics`` (0600), which the api-server and Prometheus read."""
        return self.root / "metrics-token"

    def configure(self) -> None:
        """Fix ports and secrets once (``airflow.json``, 0600); write the password file and ``airflow.env``.

        The executor asked for is kept there; LabError if it differs from the one running.
        """
        for sub in ("logs", "plugins", "migration-state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            from cryptography.fernet import Fernet

            config = {
                "port": free_port(),
                "admin_password": secrets.token_hex(12),
                "viewer_password": secrets.token_hex(12),
                "jwt_secret": secrets.token_hex(32),
                "fernet_key": Fernet.generate_key().decode(),
            }
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        config = dict(self.config)
        config.setdefault("viewer_password", secrets.token_hex(12))  # a lab configured before there was one
        if config.get("executor", "local") != self.executor:
            running = [name for name in (REDIS, *COMPONENTS, *CELERY_WORKERS) if self.pid(name)]
            if running:
                raise LabError(
                    f"Airflow runs on the {config.get('executor', 'local')} executor ({', '.join(running)}): "
                    f"lab down first, then lab up --executor {self.executor}"
                )
        config["executor"] = self.executor
        if self.executor == "celery" and "redis_port" not in config:
            config.update(redis_port=free_port(), redis_password=secrets.token_hex(16))
        if config != self.config:
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        if self.executor == "celery":
            self._write_redis_conf()
        passwords = {ADMIN: self.config["admin_password"], VIEWER: self.config["viewer_password"]}
        write_private(self.root / "passwords.json", json.dumps(passwords) + "\n")
        if not self.metrics_token_path.exists():  # what Prometheus scrapes /volume-migration/metrics with
            write_private(self.metrics_token_path, secrets.token_hex(24) + "\n")
        lines = [f"{key}={value}" for key, value in self.settings().items()]
        write_private(self.root / "airflow.env", "\n".join(lines) + "\n")

    def settings(self) -> dict[str, str]:
        """The environment every Airflow process of the lab gets (Airflow's config as variables)."""
        port = self.config["port"]
        return {
            "AIRFLOW_HOME": str(self.root),
            "PYTHONPATH": str(PROJECT_ROOT),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(DAG_BUNDLES),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            "AIRFLOW__CORE__PARALLELISM": "16",  # LocalExecutor forks this many workers up front
            # a migration's steps follow each other within 0.1 s (default: the scheduler naps 1 s after an idle loop)
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            "AIRFLOW__CORE__FERNET_KEY": self.config["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{VIEWER}:viewer",  # user:role
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
            # and the tasks a dead scheduler had queued are reset within ~30 s of the next one's start (default 300)
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
            "MIGRATION_STATE_DIR": str(self.root / "migration-state"),
            "VOLUME_MIGRATION_METRICS_TOKEN_FILE": str(self.metrics_token_path),  # plugins/operator_view_app.py
            # the lab's rebalances run when a test or a bench triggers them, never on the daily schedule
            "VOLUME_REBALANCE_SCHEDULE": "none",
            "VOLUME_AUDIT_SCHEDULE": "none",  # and its audits likewise
            "NO_PROXY": "127.0.0.1,localhost",
            **(self.celery_settings() if self.executor == "celery" else {}),
        }

    def celery_settings(self) -> dict[str, str]:
        """The Celery executor's: Redis as broker, results in the metadata database, as docker-compose.yaml has."""
        database = self.services.database_url("airflow")
        return {
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{self.config['redis_password']}@{HOST}:{self.config['redis_port']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database,  # SQLAlchemy 2.1's own default is psycopg 3
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_WORKER_CONCURRENCY),
            # Redis gives an unacknowledged task to another worker after this long; Airflow's workers acknowledge
            # at the end (acks_late): above the longest synchronous step (docker-compose.yaml says more)
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
        }

    def _write_redis_conf(self) -> None:
        """Redis on 127.0.0.1 with a password, nothing written to disk (the broker's queue lives in memory)."""
        home = self.root / REDIS
        home.mkdir(exist_ok=True)
        lines = [
            f"bind {HOST}",
            f"port {self.config['redis_port']}",
            "protected-mode yes",
            f"requirepass {self.config['redis_password']}",
            "daemonize no",
            f"dir {home}",
            'save ""',
            "appendonly no",
            'logfile ""',
        ]
        write_private(home / "redis.conf", "\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings()}

    @cached_property
    def api(self) -> AirflowApi:
        """The REST client as the lab's admin (one login, reused)."""
        return AirflowApi(self.url, ADMIN, self.config["admin_password"])

    @cached_property
    def viewer_api(self) -> AirflowApi:
        """The REST client as the lab's viewer: reads everything, may change nothing."""
        return AirflowApi(self.url, VIEWER, self.config["viewer_password"])

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """Run the ``airflow`` CLI with the lab's settings (logged to ``logs/airflow-cli.log``)."""
        cmd = [str(VENV / "bin" / "airflow"), *args]
        log = self.root / "logs" / "airflow-cli.log"
        return run_cli(cmd, log, timeout=timeout, env=self.env(), what=f"airflow {' '.join(args)}")

    # ---- processes --------------------------------------------------------------------------
    def log_path(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.out"

    def command(self, component: str) -> list[str]:
        if component == REDIS:
            return [shutil.which("redis-server") or "redis-server", str(self.root / REDIS / "redis.conf")]
        if component in CELERY_WORKERS:
            concurrency = str(CELERY_WORKER_CONCURRENCY)
            worker = ["celery", "worker", "--celery-hostname", f"{component}@lab", "--concurrency", concurrency]
            return [str(VENV / "bin" / "airflow"), *worker, "--skip-serve-logs"]
        cmd = [str(VENV / "bin" / "airflow"), component]
        if component in ("scheduler", "triggerer"):
            cmd.append("--skip-serve-logs")  # its log server would listen on every interface
        return cmd

    def worker_dir(self, worker: str) -> Path:
        """A Celery worker's own working directory (its "host"), with its TMPDIR in it."""
        return self.root / worker

    def start(self, name: str) -> int:
        """Start one component unless it runs; a Celery worker in its own directory, waited for until ready."""
        if name not in CELERY_WORKERS:
            return super().start(name)
        if self.pid(name):
            return self.pid(name)  # type: ignore[return-value]
        home = self.worker_dir(name)
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        log = self.log_path(name)
        offset = log.stat().st_size if log.exists() else 0
        pid = spawn_daemon(self.command(name), log_path=log, pid_path=self.pid_path(name),
                           env={**self.env(), "TMPDIR": str(home / "tmp")}, cwd=home)  # fmt: skip

        def ready() -> bool:  # Celery's own line once it consumes from the broker
            with open(log, "rb") as f:
                f.seek(offset)
                return f"{name}@lab ready.".encode() in f.read()

        wait_ready(ready, pids={f"airflow {name}": pid}, timeout=120, what=f"Celery {name}", log=log, interval=0.5)
        return pid

    def component_of(self, pid: int) -> str | None:
        """Which component's process tree ``pid`` is in (a task's process: the worker that runs it)."""
        for name in self.names:
            root = self.pid(name)
            if root and pid in process_tree(root):
                return name
        return None

    def idle_worker_reading_tasks(self) -> int | None:
        """The idle LocalExecutor worker blocked in read() on the executor's task queue: it holds the queue's read
        lock while the other idle workers wait for it. None if there is none (Celery, or no worker idle)."""
        scheduler = self.pid("scheduler")
        for pid in process_tree(scheduler) if scheduler else ():
            if cmdline(pid).endswith("LocalExecutor: <idle>") and blocked_in_read(pid):
                return pid
        return None

    def health(self, since: float | None = None) -> dict[str, str]:
        """Component -> "healthy"/"unhealthy"/... from ``/api/v2/monitor/health`` (no auth needed); with
        ``since`` (a time.time()), "stale" for a component healthy by a heartbeat older than that."""
        try:
            data = self.api.request("GET", "/monitor/health")
        except AirflowError:
            return {}
        found = {"api-server": "healthy", "metadatabase": data.get("metadatabase", {}).get("status", "")}
        for component, key in HEALTH_KEYS.items():
            report = data.get(key) or {}
            found[component] = report.get("status") or "unknown"
            beat = report.get(f"latest_{key}_heartbeat")
            if since is not None and found[component] == "healthy" and beat and self._time(beat) < since:
                found[component] = "stale"
        return found

    @staticmethod
    def _time(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    def up(self, timeout: float = 180.0) -> dict[str, int]:
        """Migrate the database, start the components not running, wait until each is healthy by a heartbeat
        since (a scheduler may be on its way out: it exits once the database is gone, after its tasks; it is
        started again when it has), and the DAGs parsed."""
        self.configure()
        self.airflow("db", "migrate")
        since = time.time()
        running_before = {name for name in self.names if self.pid(name)}
        pids = self.start_all()
        restarted: set[str] = set()
        last: dict[str, str] = {}

        def healthy() -> bool:
            for name in self.names:
                if self.pid(name):
                    continue
                if name not in running_before or name in restarted:
                    raise LabError(f"airflow {name} exited at start; see {self.root / 'logs'}")
                restarted.add(name)  # it was ending when up looked: start it again, once
                pids[name] = self.start(name)
            last.clear()
            last.update(self.health(since))
            return bool(last) and all(state == "healthy" for state in last.values())

        wait_ready(healthy, pids={}, timeout=timeout, what="Airflow", log=self.root / "logs", interval=1.0, seen=last)
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

        wait_ready(parsed, pids={}, timeout=timeout, what="DAGs", log=self.root / "logs", interval=1.0, seen=missing)

    def write_connections(self) -> None:
        """``cinder_default`` (the lab's admin through Keystone), and nothing else: any array Connection an older
        lab wrote is deleted (everything reaches the arrays through Cinder)."""
        api = self.api
        api.set_connection("cinder_default", **self.services.cinder_connection("admin"))
        for conn_id, conn_type in api.connections().items():
            if conn_type == "storage_array":
                api.delete_connection(conn_id)

    def down(self) -> dict[str, bool]:
        return {f"airflow {c}": stopped for c, stopped in self.stop_all().items()}

    def status(self) -> list[dict[str, object]]:
        health = self.health() if self.config_path.exists() and self.pid("api-server") else {}
        rows: list[dict[str, object]] = []
        for component in self.names:
            pid = self.pid(component)
            row: dict[str, object] = {"component": f"airflow {component}", "pid": pid}
            if pid:
                row["rss_mib"] = tree_rss_kib(pid) // 1024
                if component in COMPONENTS:
                    row["health"] = health.get(component, "unknown")
            rows.append(row)
        if self.config_path.exists():
            rows.append({"ui": self.url, "user": ADMIN, "password_file": str(self.root / "passwords.json"),
                         "executor": self.executor})  # fmt: skip
        return rows
