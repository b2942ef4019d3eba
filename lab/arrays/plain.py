"""The plain lab array (gamma): LUNs are sparse files served over NBD by nbdkit.

It has no migration features. Every LUN file is reachable by its name
through one ``nbdkit file dir=...`` process, so a LUN can still be the
source of a takeover by a reference array.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from include.backends.base import ConnectionInfo
from include.backends.errors import BackendError
from lab.arrays.core import ArrayConfig, BaseArray
from lab.procutil import die_with_parent, wait_until

log = logging.getLogger(__name__)


class PlainArray(BaseArray):
    def __init__(self, config: ArrayConfig) -> None:
        super().__init__(config)
        self.lun_dir = config.state_dir / "luns"
        self.lun_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def path(self, lun: dict[str, Any]) -> Path:
        return self.lun_dir / lun["name"]

    def start(self) -> None:
        log_path = self.config.state_dir / "nbdkit.log"
        args = [
            "nbdkit",
            "--foreground",
            "--exit-with-parent",
            "--ipaddr",
            self.config.host,
            "--port",
            str(self.config.nbd_port),
            "file",
            f"dir={self.lun_dir}",
        ]
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                return True
            with socket.socket() as s:
                return s.connect_ex((self.config.host, self.config.nbd_port)) == 0

        if not wait_until(listening, 15) or self.proc.poll() is not None:
            raise BackendError(f"nbdkit did not start; see {log_path}")
        # files of LUNs whose creation did not reach the inventory are leftovers
        for path in self.lun_dir.iterdir():
            if path.name not in self.inventory.luns:
                log.warning("removing %s: not in the inventory", path)
                path.unlink()

    def stop(self) -> None:
        super().stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _dp_create(self, lun: dict[str, Any]) -> None:
        with open(self.path(lun), "xb") as f:
            f.truncate(lun["size"])
            os.fsync(f.fileno())

    def _dp_delete(self, lun: dict[str, Any]) -> None:
        self.path(lun).unlink(missing_ok=True)

    def _dp_extend(self, lun: dict[str, Any], size: int) -> None:
        with open(self.path(lun), "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def _dp_export(self, lun: dict[str, Any], kind: str) -> ConnectionInfo:
        return self.connection(lun["name"])  # nbdkit serves every LUN file by name

    def _dp_unexport(self, lun: dict[str, Any], kind: str) -> None:
        """Nothing to tear down: the inventory flag is what the API enforces."""
