"""The lab: arrays alpha and beta (reference) and gamma (plain) on 127.0.0.1.

``Lab(root)`` keeps everything under ``root``: one folder per array with its
config (0600: it holds the API token), inventory, images, logs and PID file.
The same class serves the ``lab`` command and the tests, which start their
own lab in a temporary folder on free ports. The lab's OpenStack services
(PostgreSQL, RabbitMQ, Keystone: ``lab/services/openstack.py``) live under
``root/services``, composed with the arrays by the lab command (``cli.py``);
``Lab.up`` and ``Lab.down`` handle the arrays only.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from include.backends.array_api import ArrayApiBackend, PlainArrayBackend, ReferenceArrayBackend
from include.backends.base import GiB
from include.backends.errors import BackendError
from lab.arrays.core import ArrayConfig
from lab.env import DEFAULT_ROOT, HOST, PROJECT_ROOT, free_port
from lab.procutil import pid_alive, read_pid, stop_pid, wait_ready, wait_until, write_private


@dataclass(frozen=True)
class ArraySpec:
    name: str
    kind: str
    pools: dict[str, int]


DEFAULT_ARRAYS = (
    ArraySpec("alpha", "reference", {"pool1": 40 * GiB, "pool2": 40 * GiB}),
    ArraySpec("beta", "reference", {"pool1": 40 * GiB, "pool2": 40 * GiB}),
    ArraySpec("gamma", "plain", {"pool1": 40 * GiB}),
)


class Lab:
    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # children of this process, reaped on stop

    # ---- configuration --------------------------------------------------------
    def array_dir(self, name: str) -> Path:
        return self.root / "arrays" / name

    def config_path(self, name: str) -> Path:
        return self.array_dir(name) / "config.json"

    def names(self) -> list[str]:
        base = self.root / "arrays"
        return sorted(p.name for p in base.iterdir() if (p / "config.json").exists()) if base.exists() else []

    def config(self, name: str) -> ArrayConfig:
        return ArrayConfig.load(self.config_path(name))

    def configure(
        self, specs: tuple[ArraySpec, ...] = DEFAULT_ARRAYS, *, port_base: int | None = None, **overrides: float | bool
    ) -> None:
        """Write a config for each array that has none yet (ports fixed from then on)."""
        for i, spec in enumerate(specs):
            path = self.config_path(spec.name)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            api_port = port_base + 2 * i if port_base else free_port()
            nbd_port = port_base + 2 * i + 1 if port_base else free_port()
            config = ArrayConfig(
                name=spec.name,
                kind=spec.kind,
                host=HOST,
                api_port=api_port,
                nbd_port=nbd_port,
                token=secrets.token_urlsafe(24),
                state_dir=self.array_dir(spec.name),
                pools=spec.pools,
                **overrides,
            )
            write_private(path, json.dumps(config.to_json(), indent=1))

    # ---- processes ------------------------------------------------------------
    def pid_path(self, name: str) -> Path:
        return self.array_dir(name) / "arrayd.pid"

    def pid(self, name: str) -> int | None:
        return read_pid(self.pid_path(name))

    def start(self, name: str, timeout: float = 30.0) -> int:
        """Start one array daemon (if not running) and wait for its API; LabError if it does not come up."""
        pid = self.pid(name)
        if pid is None:
            with open(self.array_dir(name) / "arrayd.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lab.arrays.arrayd", str(self.config_path(name))],
                    cwd=PROJECT_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                )
            pid = proc.pid
            self.pid_path(name).write_text(str(pid))
            self._procs[name] = proc
        backend = self.backend(name)

        def answers() -> bool:
            try:
                backend.request("GET", "/v1/health")
                return True
            except BackendError:
                return False

        log = self.array_dir(name) / "arrayd.log"
        wait_ready(answers, pids={f"array {name}": pid}, timeout=timeout, what=f"array {name}", log=log)
        return pid

    def up(self, names: list[str] | None = None) -> dict[str, int]:
        if not self.names():
            self.configure()
        return {name: self.start(name) for name in names or self.names()}

    def stop(self, name: str) -> bool:
        pid = self.pid(name)
        ok = True if pid is None else stop_pid(pid, timeout=20)
        self._reap(name)
        if ok:
            self.pid_path(name).unlink(missing_ok=True)
        return ok

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Crash an array on purpose (tests): the data-plane server dies with it."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, sig)
            wait_until(lambda: not pid_alive(pid), 10)
            self._reap(name)
            # its qemu-storage-daemon or nbdkit gets SIGKILL from the kernel; wait for the port
            wait_until(lambda: not self._nbd_listening(name), 10)

    def _reap(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _nbd_listening(self, name: str) -> bool:
        config = self.config(name)
        with socket.socket() as s:
            return s.connect_ex((config.host, config.nbd_port)) == 0

    def down(self) -> dict[str, bool]:
        return {name: self.stop(name) for name in self.names()}

    # ---- adapters --------------------------------------------------------------
    def backend(self, name: str) -> ArrayApiBackend:
        """The adapter of array ``name``; LookupError when the lab has no such array (a Ceph backend, say)."""
        if not self.config_path(name).exists():
            raise LookupError(f"the lab has no array {name} (its arrays: {', '.join(self.names()) or 'none'})")
        config = self.config(name)
        cls = ReferenceArrayBackend if config.kind == "reference" else PlainArrayBackend
        return cls(name, config.url, config.token)

    def status(self) -> list[dict[str, object]]:
        rows = []
        for name in self.names():
            config, pid = self.config(name), self.pid(name)
            row: dict[str, object] = {"array": name, "kind": config.kind, "pid": pid, "api": config.url}
            row["nbd"] = f"{config.host}:{config.nbd_port}"
            if pid:
                try:
                    caps = self.backend(name).capabilities()
                    row["pools"] = {
                        p.name: f"{p.free_bytes / GiB:.1f} of {p.total_bytes / GiB:.1f} GiB free" for p in caps.pools
                    }
                    row["luns"] = len(self.backend(name).list_luns())
                except BackendError as exc:
                    row["error"] = str(exc)
            rows.append(row)
        return rows
