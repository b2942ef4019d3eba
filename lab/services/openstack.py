"""The lab's OpenStack services: PostgreSQL, RabbitMQ and Keystone on 127.0.0.1.

``Services(root)`` keeps everything under ``root`` (``<lab root>/services``):
``services.json`` (0600: ports and generated passwords, fixed once written),
one folder per service with its data, configuration, logs and PID files, and
``openrc-admin`` / ``openrc-member`` (0600). Each service is a process tree of
its own, started and stopped by PID; nothing system-wide is used or changed:

- PostgreSQL: a cluster of its own in ``postgres/data`` (run as the
  ``postgres`` OS user when we are root), role ``lab`` owning databases
  ``keystone`` and ``cinder``;
- RabbitMQ: a node of its own (``lab-<port>@localhost``) with its own epmd on a
  port of its own, so a system RabbitMQ or epmd on 5672/4369 is never touched;
  one user with full permissions on ``/``, no ``guest``;
- Keystone 30 from ``.venv-keystone`` under uWSGI, with projects ``admin``,
  ``demo`` and ``service``, users ``admin``, ``member`` and ``cinder``, and the
  Cinder block-storage endpoints in the catalog.

Stdlib only: this runs in the project's virtualenv, Keystone in its own.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from include.backends.errors import BackendError
from lab.env import HOST, PROJECT_ROOT, free_port, port_open
from lab.localhttp import http_call
from lab.procutil import (
    pid_alive,
    process_tree,
    read_pid,
    spawn_daemon,
    stop_pid,
    tree_rss_kib,
    wait_until,
    write_private,
)

KEYSTONE_VENV = PROJECT_ROOT / ".venv-keystone"
PG_OS_USER = "postgres"  # PostgreSQL refuses to run as root
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
DB_USER = "lab"
RABBIT_USER = "lab"
DATABASES = ("keystone", "cinder", "airflow")
REGION = "RegionOne"
DOMAIN = "Default"
# user -> (project, roles on it)
KEYSTONE_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", ("admin",)),
    "member": ("demo", ("member",)),
    "cinder": ("service", ("admin", "service")),  # keystonemiddleware in Cinder; "service" for service tokens
}
# python-cinderclient 9 asks keystoneauth for "volumev3"; keystoneauth matches it to the official
# type "block-storage" through os-service-types' aliases. Both are registered, so that clients
# that compare the type literally (curl, scripts) find the endpoint too.
CINDER_SERVICES = (("cinderv3", "block-storage"), ("cinderv3", "volumev3"))
INTERFACES = ("public", "internal", "admin")


def pg_bindir() -> Path:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise BackendError("no PostgreSQL server under /usr/lib/postgresql: run scripts/bootstrap.sh")
    return found[-1]


class Services:
    """PostgreSQL, RabbitMQ and Keystone of one lab, under ``root``."""

    def __init__(self, root: Path, *, keystone_venv: Path = KEYSTONE_VENV) -> None:
        self.root = Path(root)
        self.keystone_venv = Path(keystone_venv)
        self._config: dict[str, dict[str, object]] | None = None

    # ---- configuration --------------------------------------------------------
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
            for name in ("postgres", "rabbitmq", "rabbitmq_dist", "epmd", "keystone", "cinder_api"):
                port = free_port()
                while port in ports.values():
                    port = free_port()
                ports[name] = port
            config = {
                "host": HOST,
                "ports": ports,
                "users": {"postgres": DB_USER, "rabbitmq": RABBIT_USER},
                "passwords": {
                    name: secrets.token_hex(16) for name in ("postgres", "rabbitmq", "admin", "member", "cinder")
                },
                "rabbitmq_node": f"lab-{ports['rabbitmq']}@localhost",
                "paths": {
                    "root": str(self.root),
                    "postgres_data": str(self.pg_data),
                    "postgres_log": str(self.pg_log),
                    "rabbitmq": str(self.rabbit_dir),
                    "rabbitmq_log": str(self.rabbit_log),
                    "keystone_config_dir": str(self.keystone_dir),
                    "keystone_log": str(self.keystone_log),
                    "keystone_venv": str(self.keystone_venv),
                },
            }
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        for user in ("admin", "member"):
            write_private(self.root / f"openrc-{user}", self.openrc(user))

    @property
    def config(self) -> dict[str, dict[str, object]]:
        if self._config is None:
            try:
                self._config = json.loads(self.config_path.read_text())
            except FileNotFoundError:
                raise BackendError(f"services not configured: no {self.config_path}") from None
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
            raise BackendError(f"unknown lab user {user!r}: one of {', '.join(KEYSTONE_USERS)}")
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
            "conn_type": "openstack_cinder",
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

    # ---- paths -------------------------------------------------------------------
    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_dir / "run"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def rabbit_dir(self) -> Path:
        return self.root / "rabbitmq"

    @property
    def rabbit_log(self) -> Path:
        """The node's stdout: boot failures land here; the node's own log is under ``rabbitmq/log``."""
        return self.rabbit_dir / "server.log"

    @property
    def keystone_dir(self) -> Path:
        return self.root / "keystone"

    @property
    def keystone_log(self) -> Path:
        return self.keystone_dir / "keystone.log"

    # ---- processes ------------------------------------------------------------
    def pids(self) -> dict[str, int | None]:
        """PIDs of the running services (None: not running)."""
        if not self.configured():
            return dict.fromkeys(("keystone", "rabbitmq", "epmd", "postgres"))
        return {
            "keystone": read_pid(self.keystone_dir / "uwsgi.pid"),
            "rabbitmq": read_pid(self.rabbit_dir / "rabbitmq.pid"),
            "epmd": read_pid(self.rabbit_dir / "epmd.pid"),
            "postgres": read_pid(self.pg_data / "postmaster.pid"),
        }

    def up(self, timeout: float = 180.0) -> dict[str, int]:
        """Start what is not running, wait until each service answers; returns their PIDs.

        RabbitMQ boots in the background while PostgreSQL and Keystone come up.
        """
        if not self.configured():
            self.configure()
        self._check_installed()
        self._prepare_postgres()  # fails early if the postgres OS user cannot reach its folder
        deadline = time.monotonic() + timeout
        epmd = self._start_epmd(deadline)
        rabbit_script = self._spawn_rabbitmq()
        postgres = self._start_postgres(deadline)
        keystone = self._start_keystone(deadline)
        rabbitmq = self._wait_rabbitmq(rabbit_script, deadline)
        return {"postgres": postgres, "epmd": epmd, "rabbitmq": rabbitmq, "keystone": keystone}

    def down(self) -> dict[str, bool]:
        """Stop exactly what ``up`` started, by PID; returns {service: stopped}."""
        if not self.configured():
            return {}
        return {
            "keystone": self._stop_keystone(),
            "rabbitmq": self._stop_rabbitmq(),
            "epmd": self._stop_pidfile(self.rabbit_dir / "epmd.pid"),
            "postgres": self._stop_postgres(),
        }

    def status(self) -> list[dict[str, object]]:
        """One row per service: service, pid, port, ok (answers on its port), rss_mib (its process tree, VmRSS)."""
        if not self.configured():
            return []
        rows: list[dict[str, object]] = []
        for service, pid in self.pids().items():
            port = self.port(service)
            ok = pid is not None and (self._keystone_ready() if service == "keystone" else port_open(port))
            row: dict[str, object] = {"service": service, "pid": pid, "port": port, "ok": ok}
            if pid is not None:
                root_pid = read_pid(self.rabbit_dir / "server.pid") if service == "rabbitmq" else None
                row["rss_mib"] = round(tree_rss_kib(root_pid or pid) / 1024, 1)
            rows.append(row)
        return rows

    def _check_installed(self) -> None:
        missing = [
            str(p)
            for p in (
                RABBIT_BIN / "rabbitmq-server",
                self.keystone_venv / "bin" / "uwsgi",
                self.keystone_venv / "bin" / "keystone-manage",
            )
            if not p.exists()
        ]
        if shutil.which("epmd") is None:
            missing.append("epmd")
        if missing:
            raise BackendError(f"missing {', '.join(missing)}: run scripts/bootstrap.sh")
        pg_bindir()

    @staticmethod
    def _run(
        cmd: list[str],
        log: Path,
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: str | None = None,
        what: str = "",
    ) -> str:
        """Run a one-shot command, append its output to ``log``; BackendError naming the log on failure."""
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
        try:
            proc = subprocess.run(
                cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"{what or cmd[0]} did not finish within {timeout:.0f} s; see {log}") from None
        with open(log, "a") as f:
            f.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise BackendError(f"{what or cmd[0]} failed (exit {proc.returncode}): {' / '.join(detail)}; see {log}")
        return proc.stdout

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1.0)

    def _stop_pidfile(self, path: Path, timeout: float = 20.0) -> bool:
        """Stop the process named by a PID file, then whatever of its process tree outlived it."""
        pid = read_pid(path)
        ok = True if pid is None else self._stop_tree(pid, timeout)
        if ok:
            path.unlink(missing_ok=True)
        return ok

    @staticmethod
    def _stop_tree(pid: int, timeout: float) -> bool:
        tree = process_tree(pid)  # before the parent goes: orphans are no longer its descendants
        ok = stop_pid(pid, timeout)
        for child in tree[1:]:
            ok = stop_pid(child, 5) and ok
        return ok

    # ---- PostgreSQL --------------------------------------------------------------
    def _as_pg(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd

    def _pg_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def _pg_run(self, tool: str, *args: str, timeout: float, stdin: str | None = None) -> str:
        return self._run(
            self._as_pg([str(pg_bindir() / tool), *args]),
            self.pg_dir / "setup.log",
            timeout=timeout,
            env=self._pg_env(),
            cwd=self.pg_dir,
            stdin=stdin,
            what=f"PostgreSQL {tool}",
        )

    def psql(self, sql: str, db: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL as the cluster's superuser over the unix socket; returns psql's unaligned output."""
        return self._pg_run(
            "psql",
            *("-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"),
            *("-h", str(self.pg_socket_dir), "-p", str(self.port("postgres")), "-d", db),
            timeout=timeout,
            stdin=sql,
        )

    def _prepare_postgres(self) -> None:
        for d in (self.pg_dir, self.pg_socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            if os.geteuid() == 0:
                shutil.chown(d, PG_OS_USER, PG_OS_USER)
        if os.geteuid() == 0:
            probe = subprocess.run(self._as_pg(["test", "-w", str(self.pg_dir)]), check=False)
            if probe.returncode != 0:
                raise BackendError(
                    f"the {PG_OS_USER} OS user cannot reach {self.pg_dir}: make its parent folders "
                    "traversable (chmod o+x) or put the lab elsewhere"
                )

    def _start_postgres(self, deadline: float) -> int:
        if not (self.pg_data / "PG_VERSION").exists():
            self._pg_run(
                "initdb",
                *("-D", str(self.pg_data), "-E", "UTF8", "--locale=C"),
                *("--auth-local=peer", "--auth-host=scram-sha-256"),
                timeout=self._left(deadline),
            )
            settings = {
                "listen_addresses": f"'{HOST}'",
                "port": str(self.port("postgres")),
                "unix_socket_directories": f"'{self.pg_socket_dir}'",
                "max_connections": "200",  # Keystone and every Cinder service keep pools
                "shared_buffers": "64MB",
                "synchronous_commit": "off",  # a machine crash loses the last commits, never consistency
            }
            with open(self.pg_data / "postgresql.conf", "a") as f:
                f.write("\n# the lab (include/lab/services.py)\n")
                f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        pid = read_pid(self.pg_data / "postmaster.pid")
        if pid is None:
            # stale after a crash; the socket's lock may name a PID that is dead to us but not reaped yet
            (self.pg_data / "postmaster.pid").unlink(missing_ok=True)
            (self.pg_socket_dir / f".s.PGSQL.{self.port('postgres')}.lock").unlink(missing_ok=True)
            left = self._left(deadline)
            try:
                self._pg_run(
                    "pg_ctl",
                    *("-D", str(self.pg_data), "-l", str(self.pg_log), "-w", "-t", str(int(left)), "start"),
                    timeout=left + 5,
                )
            except BackendError as exc:
                raise BackendError(f"PostgreSQL did not start: {exc.message}; server log {self.pg_log}") from None
            pid = read_pid(self.pg_data / "postmaster.pid")
            if pid is None:
                raise BackendError(f"PostgreSQL exited at start; see {self.pg_log}")
        if not wait_until(lambda: port_open(self.port("postgres")), self._left(deadline), 0.1):
            raise BackendError(f"PostgreSQL does not listen on {HOST}:{self.port('postgres')}; see {self.pg_log}")
        password = self.password("postgres")
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
        self.psql("\n".join(sql) + "\n", timeout=self._left(deadline))
        return pid

    def _stop_postgres(self) -> bool:
        pid = read_pid(self.pg_data / "postmaster.pid")
        if pid is None:
            return True
        try:
            self._pg_run("pg_ctl", "-D", str(self.pg_data), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
        except BackendError:
            pass  # fall back on signals below
        return wait_until(lambda: not pid_alive(pid), 5) or stop_pid(pid, 20)

    # ---- RabbitMQ ------------------------------------------------------------------
    def rabbit_env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and the rabbitmq CLI tools, pointing at this node only."""
        d = self.rabbit_dir
        dist_local = f"-kernel inet_dist_use_interface {{{HOST.replace('.', ',')}}}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # .erlang.cookie, shared by the node and the CLI
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            RABBITMQ_NODENAME=self.rabbit_node,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port("rabbitmq")),
            RABBITMQ_DIST_PORT=str(self.port("rabbitmq_dist")),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=dist_local,
            RABBITMQ_CTL_ERL_ARGS=dist_local,
            # the CLI's own distribution port: by default 35672-35682, which may be anyone's; 0 = any free one
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
            ERL_EPMD_PORT=str(self.port("epmd")),
            ERL_EPMD_ADDRESS=HOST,
        )
        return env

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <our node> ARGS`` (quiet); returns its output."""
        return self._run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.rabbit_node, *args],
            self.rabbit_dir / "ctl.log",
            timeout=timeout,
            env=self.rabbit_env(),
            cwd=self.rabbit_dir,
            what=f"rabbitmqctl {args[0] if args else ''}".strip(),
        )

    def _start_epmd(self, deadline: float) -> int:
        """Our node's own epmd, on our port: a system epmd (4369) is never used, started or stopped."""
        self.rabbit_dir.mkdir(parents=True, exist_ok=True)
        port = self.port("epmd")
        pid = spawn_daemon(
            [shutil.which("epmd") or "epmd", "-port", str(port), "-address", HOST],
            log_path=self.rabbit_dir / "epmd.log",
            pid_path=self.rabbit_dir / "epmd.pid",
        )

        def ready() -> bool:
            if not pid_alive(pid):
                raise BackendError(f"epmd exited at start; see {self.rabbit_dir / 'epmd.log'}")
            return port_open(port)

        if not wait_until(ready, min(self._left(deadline), 20), 0.05):
            raise BackendError(f"epmd does not listen on {HOST}:{port}; see {self.rabbit_dir / 'epmd.log'}")
        return pid

    def _spawn_rabbitmq(self) -> int | None:
        """Start the node in the background; returns the PID of its start script, None if it was running."""
        d = self.rabbit_dir
        if read_pid(d / "rabbitmq.pid") is not None:
            return None
        script = read_pid(d / "server.pid")
        if script is not None:  # still booting from an earlier call
            return script
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cookie = d / ".erlang.cookie"
        if not cookie.exists():
            write_private(cookie, secrets.token_hex(20).upper())
            os.chmod(cookie, 0o400)
        conf = {
            # the first boot creates this user (full permissions on /) instead of guest
            "default_user": RABBIT_USER,
            "default_pass": self.password("rabbitmq"),
            "default_vhost": "/",
            "default_user_tags.administrator": "true",
            "default_permissions.configure": ".*",
            "default_permissions.read": ".*",
            "default_permissions.write": ".*",
            "log.file.level": "info",
        }
        write_private(d / "rabbitmq.conf", "".join(f"{k} = {v}\n" for k, v in conf.items()))
        (d / "enabled_plugins").write_text("[].\n")  # no management plugin, no extra listeners
        (d / "rabbitmq.pid").unlink(missing_ok=True)
        # In the foreground the start script traps SIGTERM and stops the node cleanly.
        return spawn_daemon(
            [str(RABBIT_BIN / "rabbitmq-server")],
            log_path=self.rabbit_log,
            pid_path=d / "server.pid",
            env=self.rabbit_env(),
            cwd=d,
        )

    def _wait_rabbitmq(self, script: int | None, deadline: float) -> int:
        port = self.port("rabbitmq")
        running = read_pid(self.rabbit_dir / "rabbitmq.pid")
        if script is None and running is not None:
            return running

        def ready() -> bool:
            if script is not None and not pid_alive(script):
                raise BackendError(f"RabbitMQ exited at start; see {self.rabbit_log} and {self.rabbit_dir / 'log'}")
            return read_pid(self.rabbit_dir / "rabbitmq.pid") is not None and port_open(port)

        if not wait_until(ready, self._left(deadline), 0.1):
            logs = f"{self.rabbit_log} and {self.rabbit_dir / 'log'}"
            raise BackendError(f"RabbitMQ does not listen on {HOST}:{port} in time; see {logs}")
        users = {line.split()[0] for line in self.rabbitmqctl("list_users", "--no-table-headers").splitlines() if line}
        if RABBIT_USER not in users:  # the node's database predates the config
            self.rabbitmqctl("add_user", RABBIT_USER, self.password("rabbitmq"))
            self.rabbitmqctl("set_user_tags", RABBIT_USER, "administrator")
            self.rabbitmqctl("set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*")
        if "guest" in users:
            self.rabbitmqctl("delete_user", "guest")
        pid = read_pid(self.rabbit_dir / "rabbitmq.pid")
        if pid is None:
            raise BackendError(f"RabbitMQ exited after start; see {self.rabbit_log}")
        return pid

    def _stop_rabbitmq(self) -> bool:
        d = self.rabbit_dir
        beam = read_pid(d / "rabbitmq.pid")  # written once the VM runs
        script = read_pid(d / "server.pid")  # the start script, parent of the VM
        tree = (process_tree(script) if script else []) + (process_tree(beam) if beam else [])
        if beam is not None:
            try:  # a clean stop; waits for the VM to exit
                self.rabbitmqctl("stop", str(d / "rabbitmq.pid"), timeout=60)
            except BackendError:
                pass  # fall back on signals
        ok = True
        for pid in [p for p in tree if p != script] + ([script] if script else []):  # the VM (booting?) first
            ok = stop_pid(pid, 10) and ok
        if ok:
            for name in ("rabbitmq.pid", "server.pid"):
                (d / name).unlink(missing_ok=True)
        return ok

    # ---- Keystone ------------------------------------------------------------------
    def _keystone_conf(self) -> str:
        k = self.keystone_dir
        return f"""# written by include/lab/services.py
[DEFAULT]
debug = false

[database]
connection = {self.database_url("keystone")}

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

    def _keystone_env(self, **extra: str) -> dict[str, str]:
        """Our environment without what would leak into Keystone's virtualenv or its config (OS_*)."""
        dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("OS_")}
        env["OS_KEYSTONE_CONFIG_DIR"] = str(self.keystone_dir)
        env.update(extra)
        return env

    def _keystone_manage(self, *args: str, timeout: float, env: dict[str, str] | None = None) -> None:
        manage = str(self.keystone_venv / "bin" / "keystone-manage")
        self._run(
            [manage, "--config-file", str(self.keystone_dir / "keystone.conf"), *args],
            self.keystone_dir / "keystone-manage.log",
            timeout=timeout,
            env=self._keystone_env(**(env or {})),
            cwd=self.keystone_dir,
            what=f"keystone-manage {args[0]}",
        )

    def _keystone_ready(self) -> bool:
        try:
            status, _, _ = self.keystone_request("GET", "/v3", timeout=2)
        except BackendError:
            return False
        return status == 200

    def _start_keystone(self, deadline: float) -> int:
        k = self.keystone_dir
        k.mkdir(parents=True, exist_ok=True)
        write_private(k / "keystone.conf", self._keystone_conf())
        stamp = k / "bootstrapped"
        if not stamp.exists():
            user = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            self._keystone_manage("db_sync", timeout=self._left(deadline))
            for what in ("fernet_setup", "credential_setup"):
                self._keystone_manage(what, "--keystone-user", user, "--keystone-group", group, timeout=60)
            self._keystone_manage(
                "bootstrap",
                *("--bootstrap-username", "admin", "--bootstrap-project-name", "admin"),
                *("--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone"),
                *("--bootstrap-region-id", REGION),
                *(f"--bootstrap-{i}-url={self.auth_url}" for i in INTERFACES),
                timeout=self._left(deadline),
                env={"OS_BOOTSTRAP_PASSWORD": self.password("admin")},  # not on the command line
            )
            stamp.write_text("db_sync, fernet_setup, credential_setup, bootstrap done\n")
        pid_path = k / "uwsgi.pid"
        started = read_pid(pid_path) is None
        cmd = [
            str(self.keystone_venv / "bin" / "uwsgi"),
            *("--http-socket", f"{HOST}:{self.keystone_port}"),
            *("--virtualenv", str(self.keystone_venv)),
            *("--module", "keystone.wsgi.api:application"),
            *("--env", f"OS_KEYSTONE_CONFIG_DIR={k}"),
            *("--master", "--processes", "2", "--need-app", "--die-on-term", "--no-orphans", "--thunder-lock"),
            # each worker loads the app itself (as devstack does): no DB pool or thread crosses a fork;
            # as little memory as sharing it after a fork (PSS), less RSS
            "--lazy-apps",
            # without it, clients see intermittent connection resets on token requests (DESIGN.md 5)
            *("--add-header", "Connection: close"),
            *("--buffer-size", "65535"),  # tokens and catalogs in headers
            *("--pidfile", str(pid_path)),
        ]
        pid = spawn_daemon(cmd, log_path=self.keystone_log, pid_path=pid_path, env=self._keystone_env(), cwd=k)

        def ready() -> bool:
            if not pid_alive(pid):
                raise BackendError(f"Keystone (uWSGI) exited at start; see {self.keystone_log}")
            return self._keystone_ready()

        if not wait_until(ready, self._left(deadline), 0.1):
            raise BackendError(f"Keystone does not answer on {self.auth_url} in time; see {self.keystone_log}")
        if started:  # idempotent, so a restart also repairs what is missing
            self._keystone_setup()
        return pid

    def _stop_keystone(self) -> bool:
        return self._stop_pidfile(self.keystone_dir / "uwsgi.pid")

    # ---- Keystone API ------------------------------------------------------------
    def keystone_request(
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
        url = f"http://{HOST}:{self.keystone_port}{path}"
        try:
            status, resp_headers, raw = http_call(method, url, body=body, headers=headers, timeout=timeout)
        except OSError as exc:
            raise BackendError(f"Keystone at {url} unreachable: {exc}; see {self.keystone_log}") from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return status, resp_headers, payload

    def token(self, user: str) -> tuple[str, dict[str, object]]:
        """A project-scoped token for a lab user: (X-Subject-Token, the token body with its catalog)."""
        c = self.credentials(user)
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
        status, headers, payload = self.keystone_request("POST", "/v3/auth/tokens", body)
        if status != 201:
            raise BackendError(f"Keystone refused a token for {user} (HTTP {status}): {payload}")
        return headers["X-Subject-Token"], payload["token"]  # type: ignore[return-value]

    def _api(self, token: str, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        status, _, payload = self.keystone_request(method, path, body, token=token)
        if status >= 300:
            raise BackendError(f"Keystone {method} {path}: HTTP {status} {payload}; see {self.keystone_log}")
        return payload

    def _ensure(self, token: str, collection: str, query: str, body: dict[str, object]) -> str:
        """The id of the first object of ``collection`` matching ``query``; created from ``body`` if none."""
        found = self._api(token, "GET", f"/v3/{collection}?{query}")[collection]
        if found:
            return str(found[0]["id"])  # type: ignore[index]
        singular = collection[:-1]
        return str(self._api(token, "POST", f"/v3/{collection}", {singular: body})[singular]["id"])  # type: ignore[index]

    def _keystone_setup(self) -> None:
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
                {"name": user, "domain_id": domain, "password": self.password(user), "default_project_id": project_id},
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
                endpoints = self._api(token, "GET", f"/v3/endpoints?service_id={service_id}&interface={interface}")
                existing = endpoints["endpoints"]
                if not existing:
                    endpoint = {
                        "service_id": service_id,
                        "interface": interface,
                        "region_id": REGION,
                        "url": self.cinder_url,
                        "enabled": True,
                    }
                    self._api(token, "POST", "/v3/endpoints", {"endpoint": endpoint})
                elif existing[0]["url"] != self.cinder_url:  # type: ignore[index]
                    endpoint_id = existing[0]["id"]  # type: ignore[index]
                    self._api(token, "PATCH", f"/v3/endpoints/{endpoint_id}", {"endpoint": {"url": self.cinder_url}})
