"""PostgreSQL in the lab: a cluster of its own in ``<services>/postgres/data``.

Run as the ``postgres`` OS user when we are root (PostgreSQL refuses root),
started and stopped with ``pg_ctl``; role ``lab`` owns the databases
``keystone``, ``cinder`` and ``airflow``. It listens on 127.0.0.1 (password,
scram-sha-256) and on a unix socket in ``postgres/run`` (peer: the
superuser's ``psql``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lab.env import HOST, port_open
from lab.errors import LabError
from lab.procutil import pid_alive, read_pid, stop_pid, wait_ready, wait_until
from lab.services.config import DB_USER, ServicesConfig
from lab.services.daemon import left, run_cli

PG_OS_USER = "postgres"  # PostgreSQL refuses to run as root
DATABASES = ("keystone", "cinder", "airflow")


def pg_bindir() -> Path:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise LabError("no PostgreSQL server under /usr/lib/postgresql: run scripts/bootstrap.sh")
    return found[-1]


class Postgres:
    """The lab's PostgreSQL cluster under ``root`` (``<services>/postgres``)."""

    def __init__(self, root: Path, config: ServicesConfig) -> None:
        self.root = Path(root)
        self.config = config

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def port(self) -> int:
        return self.config.port("postgres")

    def pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid")

    # ---- commands --------------------------------------------------------------------
    def _as_pg(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd

    def run(self, tool: str, *args: str, timeout: float, stdin: str | None = None) -> str:
        """Run one of the server's tools (as the postgres OS user), logged to ``setup.log``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return run_cli(
            self._as_pg([str(pg_bindir() / tool), *args]),
            self.root / "setup.log",
            timeout=timeout,
            env=env,
            cwd=self.root,
            stdin=stdin,
            what=f"PostgreSQL {tool}",
        )

    def psql(self, sql: str, db: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL as the cluster's superuser over the unix socket; returns psql's unaligned output."""
        return self.run(
            "psql",
            *("-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"),
            *("-h", str(self.socket_dir), "-p", str(self.port), "-d", db),
            timeout=timeout,
            stdin=sql,
        )

    # ---- processes ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Its folders, owned by the postgres OS user; LabError at once if that user cannot reach them."""
        for d in (self.root, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            if os.geteuid() == 0:
                shutil.chown(d, PG_OS_USER, PG_OS_USER)
        if os.geteuid() == 0:
            probe = subprocess.run(self._as_pg(["test", "-w", str(self.root)]), check=False)
            if probe.returncode != 0:
                raise LabError(
                    f"the {PG_OS_USER} OS user cannot reach {self.root}: make its parent folders "
                    "traversable (chmod o+x) or put the lab elsewhere"
                )

    def _initdb(self, deadline: float) -> None:
        self.run(
            "initdb",
            *("-D", str(self.data), "-E", "UTF8", "--locale=C"),
            *("--auth-local=peer", "--auth-host=scram-sha-256"),
            timeout=left(deadline),
        )
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",  # Keystone and every Cinder service keep pools
            "shared_buffers": "64MB",
            "synchronous_commit": "off",  # a machine crash loses the last commits, never consistency
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# the lab (lab/services/postgres.py)\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def up(self, deadline: float) -> int:
        """Create the cluster if there is none, start it unless it runs, ensure role and databases; its PID."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb(deadline)
        pid = self.pid()
        if pid is None:
            # stale after a crash; the socket's lock may name a PID that is dead to us but not reaped yet
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
            timeout = left(deadline)
            try:
                self.run(
                    "pg_ctl",
                    *("-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start"),
                    timeout=timeout + 5,
                )
            except LabError as exc:
                raise LabError(f"PostgreSQL did not start: {exc.message}; server log {self.log}") from None
            pid = self.pid()
            if pid is None:
                raise LabError(f"PostgreSQL exited at start; see {self.log}")
        wait_ready(
            lambda: port_open(self.port),
            pids={"PostgreSQL": pid},
            timeout=left(deadline),
            what=f"PostgreSQL on {HOST}:{self.port}",
            log=self.log,
        )
        password = self.config.password("postgres")
        sql = [
            f"SELECT 'CREATE ROLE {DB_USER}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}')",
            "\\gexec",
            f"ALTER ROLE {DB_USER} WITH LOGIN PASSWORD '{password}';",
        ]
        for db in DATABASES:
            sql += [
                f"SELECT 'CREATE DATABASE {db} OWNER {DB_USER}'"
                f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}')",
                "\\gexec",
            ]
        self.psql("\n".join(sql) + "\n", timeout=left(deadline))
        return pid

    def down(self) -> bool:
        """``pg_ctl stop -m fast``; signals if that fails. True if the postmaster is gone."""
        pid = self.pid()
        if pid is None:
            return True
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
        except LabError:
            pass  # fall back on signals below
        return wait_until(lambda: not pid_alive(pid), 5) or stop_pid(pid, 20)
