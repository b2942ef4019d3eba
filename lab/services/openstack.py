"""The lab's OpenStack services together: PostgreSQL, RabbitMQ and Keystone on 127.0.0.1.

``Services(root)`` keeps everything under ``root`` (``<lab root>/services``):
``services.json`` and ``openrc-admin`` / ``openrc-member`` (``config.py``),
and one folder per service with its data, configuration, logs and PID files
(``postgres.py``, ``rabbitmq.py``, ``keystone.py``). Each service is a
process tree of its own, started and stopped by PID; nothing system-wide is
used or changed.

Stdlib only: this runs in the project's virtualenv, Keystone in its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lab.env import port_open
from lab.errors import LabError
from lab.procutil import tree_rss_kib
from lab.services.config import ServicesConfig
from lab.services.keystone import KEYSTONE_VENV, Keystone
from lab.services.postgres import Postgres, pg_bindir
from lab.services.rabbitmq import RABBIT_BIN, RabbitMQ
from plugins.hooks.cinder import CinderHook

__all__ = ["Services", "pg_bindir"]


class Services(ServicesConfig):
    """PostgreSQL, RabbitMQ and Keystone of one lab, under ``root``: their configuration and their processes."""

    def __init__(self, root: Path, *, keystone_venv: Path = KEYSTONE_VENV) -> None:
        super().__init__(root)
        self.postgres = Postgres(self.root / "postgres", self)
        self.rabbitmq = RabbitMQ(self.root / "rabbitmq", self)
        self.keystone = Keystone(self.root / "keystone", self, keystone_venv)

    # ---- the services' tools ------------------------------------------------------------
    def psql(self, sql: str, db: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL as the cluster's superuser over the unix socket; returns psql's unaligned output."""
        return self.postgres.psql(sql, db, timeout)

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <our node> ARGS`` (quiet); returns its output."""
        return self.rabbitmq.ctl(*args, timeout=timeout)

    def rabbit_env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and the rabbitmq CLI tools, pointing at this node only."""
        return self.rabbitmq.env()

    def cinder_hook(self, user: str = "admin", **options: Any) -> CinderHook:
        """The project's Cinder hook as a lab user, on a Connection given through the environment."""
        conn_id = f"lab_cinder_{user}"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(self.cinder_connection(user))
        return CinderHook(conn_id, **options)

    def token(self, user: str) -> tuple[str, dict[str, object]]:
        """A project-scoped token for a lab user: (X-Subject-Token, the token body with its catalog)."""
        return self.keystone.token(user)

    # ---- processes ------------------------------------------------------------------------
    def pids(self) -> dict[str, int | None]:
        """PIDs of the running services (None: not running)."""
        if not self.configured():
            return dict.fromkeys(("keystone", "rabbitmq", "epmd", "postgres"))
        return {
            "keystone": self.keystone.pid("uwsgi"),
            "rabbitmq": self.rabbitmq.node_pid(),
            "epmd": self.rabbitmq.pid("epmd"),
            "postgres": self.postgres.pid(),
        }

    def up(self, timeout: float = 180.0) -> dict[str, int]:
        """Start what is not running, wait until each service answers; returns their PIDs.

        RabbitMQ boots in the background while PostgreSQL and Keystone come up.
        """
        if not self.configured():
            self.configure()
        self._check_installed()
        self.postgres.prepare()  # fails early if the postgres OS user cannot reach its folder
        deadline = time.monotonic() + timeout
        epmd = self.rabbitmq.start_epmd(deadline)
        rabbit_script = self.rabbitmq.boot()
        postgres = self.postgres.up(deadline)
        keystone = self.keystone.up(deadline)
        rabbitmq = self.rabbitmq.wait_booted(rabbit_script, deadline)
        return {"postgres": postgres, "epmd": epmd, "rabbitmq": rabbitmq, "keystone": keystone}

    def down(self) -> dict[str, bool]:
        """Stop exactly what ``up`` started, by PID; returns {service: stopped}."""
        if not self.configured():
            return {}
        return {
            "keystone": self.keystone.stop("uwsgi"),
            "rabbitmq": self.rabbitmq.stop_node(),
            "epmd": self.rabbitmq.stop("epmd"),
            "postgres": self.postgres.down(),
        }

    def status(self) -> list[dict[str, object]]:
        """One row per service: service, pid, port, ok (answers on its port), rss_mib (its process tree, VmRSS)."""
        if not self.configured():
            return []
        rows: list[dict[str, object]] = []
        for service, pid in self.pids().items():
            port = self.port(service)
            ok = pid is not None and (self.keystone.ready() if service == "keystone" else port_open(port))
            row: dict[str, object] = {"service": service, "pid": pid, "port": port, "ok": ok}
            if pid is not None:
                root_pid = self.rabbitmq.pid("server") if service == "rabbitmq" else None
                row["rss_mib"] = round(tree_rss_kib(root_pid or pid) / 1024, 1)
            rows.append(row)
        return rows

    def _check_installed(self) -> None:
        venv = self.keystone.venv / "bin"
        needed = (RABBIT_BIN / "rabbitmq-server", venv / "uwsgi", venv / "keystone-manage")
        missing = [str(p) for p in needed if not p.exists()]
        if shutil.which("epmd") is None:
            missing.append("epmd")
        if missing:
            raise LabError(f"missing {', '.join(missing)}: run scripts/bootstrap.sh")
        pg_bindir()
