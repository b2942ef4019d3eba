"""RabbitMQ in the lab: a node of its own (``lab-<port>@localhost``) in ``<services>/rabbitmq``.

The node has its own epmd on a port of its own, so a system RabbitMQ or epmd
on 5672/4369 is never used, started or stopped; it has one user with full
permissions on ``/`` and no ``guest``. PID files: ``epmd.pid``, ``server.pid``
(the start script, parent of the Erlang VM) and ``rabbitmq.pid`` (the VM,
written once it runs).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from lab.env import HOST, port_open
from lab.errors import LabError
from lab.procutil import pid_alive, process_tree, read_pid, stop_pid, wait_ready, wait_until, write_private
from lab.services.config import RABBIT_USER, ServicesConfig
from lab.services.daemon import Daemons, left, run_cli

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitMQ(Daemons):
    """The node and its epmd under ``root`` (``<services>/rabbitmq``)."""

    names = ("epmd", "server")

    def __init__(self, root: Path, config: ServicesConfig) -> None:
        super().__init__(root)
        self.config = config

    def env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and the rabbitmq CLI tools, pointing at this node only."""
        d = self.root
        dist_local = f"-kernel inet_dist_use_interface {{{HOST.replace('.', ',')}}}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # .erlang.cookie, shared by the node and the CLI
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            RABBITMQ_NODENAME=self.config.rabbit_node,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.config.port("rabbitmq")),
            RABBITMQ_DIST_PORT=str(self.config.port("rabbitmq_dist")),
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
            ERL_EPMD_PORT=str(self.config.port("epmd")),
            ERL_EPMD_ADDRESS=HOST,
        )
        return env

    def cwd(self) -> Path:
        return self.root

    def command(self, name: str) -> list[str]:
        if name == "epmd":
            return [shutil.which("epmd") or "epmd", "-port", str(self.config.port("epmd")), "-address", HOST]
        # in the foreground the start script traps SIGTERM and stops the node cleanly
        return [str(RABBIT_BIN / "rabbitmq-server")]

    def node_pid(self) -> int | None:
        """The Erlang VM's PID, once it runs."""
        return read_pid(self.root / "rabbitmq.pid")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <our node> ARGS`` (quiet); returns its output."""
        return run_cli(
            [str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.config.rabbit_node, *args],
            self.root / "ctl.log",
            timeout=timeout,
            env=self.env(),
            cwd=self.root,
            what=f"rabbitmqctl {args[0] if args else ''}".strip(),
        )

    # ---- start -------------------------------------------------------------------------
    def start_epmd(self, deadline: float) -> int:
        """Our node's own epmd, on our port: a system epmd (4369) is never used, started or stopped."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = self.config.port("epmd")
        pid = self.start("epmd")
        wait_ready(
            lambda: port_open(port),
            pids={"epmd": pid},
            timeout=min(left(deadline), 20),
            what=f"epmd on {HOST}:{port}",
            log=self.log_path("epmd"),
            interval=0.05,
        )
        return pid

    def boot(self) -> int | None:
        """Start the node in the background; returns the PID of its start script, None if it was running."""
        d = self.root
        if self.node_pid() is not None:
            return None
        script = self.pid("server")
        if script is not None:
            if not (d / "rabbitmq.pid").exists():  # still booting from an earlier call (the VM writes that file)
                return script
            # the VM it started has died (its PID file names a dead process) and the start script is on its way
            # out: taken for a boot in progress, it would fail the wait as "exited at start" (a fault trial did)
            if not wait_until(lambda: not pid_alive(script), 10, 0.1):
                stop_pid(script, 5)
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cookie = d / ".erlang.cookie"
        if not cookie.exists():
            write_private(cookie, secrets.token_hex(20).upper())
            os.chmod(cookie, 0o400)
        conf = {
            # the first boot creates this user (full permissions on /) instead of guest
            "default_user": RABBIT_USER,
            "default_pass": self.config.password("rabbitmq"),
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
        return self.start("server")

    def wait_booted(self, script: int | None, deadline: float) -> int:
        """Wait until the node that ``boot`` started listens; our user only (no guest). The VM's PID."""
        port = self.config.port("rabbitmq")
        running = self.node_pid()
        if script is None and running is not None:
            return running
        wait_ready(
            lambda: self.node_pid() is not None and port_open(port),
            pids={} if script is None else {"RabbitMQ": script},
            timeout=left(deadline),
            what=f"RabbitMQ on {HOST}:{port}",
            log=f"{self.log_path('server')} and {self.root / 'log'}",  # its stdout (boot failures), its own log
        )
        users = {line.split()[0] for line in self.ctl("list_users", "--no-table-headers").splitlines() if line}
        if RABBIT_USER not in users:  # the node's database predates the config
            self.ctl("add_user", RABBIT_USER, self.config.password("rabbitmq"))
            self.ctl("set_user_tags", RABBIT_USER, "administrator")
            self.ctl("set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*")
        if "guest" in users:
            self.ctl("delete_user", "guest")
        pid = self.node_pid()
        if pid is None:
            raise LabError(f"RabbitMQ exited after start; see {self.log_path('server')}")
        return pid

    # ---- stop ----------------------------------------------------------------------------
    def stop_node(self) -> bool:
        """``rabbitmqctl stop`` (clean), then signals to whatever of the VM and its start script is left."""
        d = self.root
        beam = self.node_pid()  # written once the VM runs
        script = self.pid("server")  # the start script, parent of the VM
        tree = (process_tree(script) if script else []) + (process_tree(beam) if beam else [])
        if beam is not None:
            try:  # a clean stop; waits for the VM to exit
                self.ctl("stop", str(d / "rabbitmq.pid"), timeout=60)
            except LabError:
                pass  # fall back on signals
        ok = True
        for pid in [p for p in tree if p != script] + ([script] if script else []):  # the VM (booting?) first
            ok = stop_pid(pid, 10) and ok
        if ok:
            for name in ("rabbitmq.pid", "server.pid"):
                (d / name).unlink(missing_ok=True)
        return ok
