"""Ceph 16.2 (Debian 12's packages) in the lab: one monitor, one manager, one OSD, three RBD pools.

``CephLab(root)`` keeps one cluster under ``root`` (``<lab root>/ceph``):
``ceph.json`` (its fsid, the OSD's uuid and the monitor's two ports, fixed the
first time), ``ceph.conf`` (written anew at each ``up``), the daemons' data
folders (``mon/``, ``mgr/``, ``osd/``), the OSD's BlueStore device
(``osd.0.block``, a sparse file: BlueStore refuses O_DIRECT on tmpfs, so it
lives on the lab root's disk), their logs (``log/``) and admin sockets
(``run/``). Everything listens on 127.0.0.1; there is no authentication (the
lab is one machine's loopback). The daemons run in the foreground, each in a
session of its own with its PID file, stopped by PID; their state survives
``down`` and ``up``.

Each Cinder backend of ``POOLS`` is one RBD pool of this cluster, served by
Cinder's own ``cinder.volume.drivers.rbd.RBDDriver`` (``lab/services/cinder.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.env import HOST, free_port
from lab.errors import LabError
from lab.procutil import tree_rss_kib, wait_ready, write_private
from lab.services.daemon import Daemons, left, run_cli
from lab.verify import RADOS_TIMEOUTS, RbdHandle

MON, MGR, OSD = "mon.a", "mgr.x", "osd.0"
# Cinder backend -> its RBD pool
POOLS = {"ceph-hdd": "volumes-hdd", "ceph-ssd": "volumes-ssd", "ceph-stock": "volumes-stock"}
PG_NUM = 16
OSD_BLOCK_BYTES = 64 * 1024**3  # sparse: only what is written takes disk space
OSD_MEMORY_TARGET = 896 * 1024**2  # the smallest BlueStore accepts
CEPH_TOOLS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph")


# librbd's RBD_IMAGE_MIGRATION_STATE_* values, as ``rbd migration status`` names them
MIGRATION_STATES = {-1: "unknown", 0: "error", 1: "preparing", 2: "prepared", 3: "executing", 4: "executed",
                    5: "aborting"}  # fmt: skip


class CephLab(Daemons):
    """The cluster's daemons under ``root``, each ``<root>/<daemon>.pid``."""

    names = (MON, MGR, OSD)
    stop_timeout = 30.0  # the OSD takes a few seconds to exit

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._config: dict[str, Any] | None = None

    # ---- configuration --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "ceph.json"

    @property
    def conf_path(self) -> Path:
        """``ceph.conf``: what every client (Cinder's RBD driver, ``rbd``, ``fio``, librbd) is given."""
        return self.root / "ceph.conf"

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            try:
                self._config = json.loads(self.config_path.read_text())
            except FileNotFoundError:
                raise LabError(f"Ceph not configured: no {self.config_path}") from None
        return self._config

    @property
    def fsid(self) -> str:
        return str(self.config["fsid"])

    @property
    def mon_addrs(self) -> str:
        """The monitor's addresses in Ceph's notation: msgr2 and legacy."""
        ports = self.config["ports"]
        return f"[v2:{HOST}:{ports['mon_v2']},v1:{HOST}:{ports['mon_v1']}]"

    def configure(self) -> None:
        """Fix fsid, OSD uuid and ports once (``ceph.json``), then (re)write ``ceph.conf``."""
        for sub in ("run", "log", "mon", "mgr", "osd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            v2 = free_port()
            v1 = free_port()
            while v1 == v2:
                v1 = free_port()
            config = {"fsid": str(uuid.uuid4()), "osd_uuid": str(uuid.uuid4()), "ports": {"mon_v2": v2, "mon_v1": v1}}
            write_private(self.config_path, json.dumps(config, indent=1) + "\n")
            self._config = None
        root = self.root
        settings = {
            "fsid": self.fsid,
            "mon host": self.mon_addrs,
            "public addr": HOST,
            "cluster addr": HOST,
            "ms bind ipv6": "false",
            "auth cluster required": "none",
            "auth service required": "none",
            "auth client required": "none",
            "keyring": "/dev/null",
            # one OSD: every pool has one replica, placed on it
            "osd pool default size": "1",
            "osd pool default min size": "1",
            "osd crush chooseleaf type": "0",
            "osd pool default pg autoscale mode": "off",
            "mon allow pool size one": "true",
            "mon allow pool delete": "true",
            "mon warn on pool no redundancy": "false",
            "mon warn on insecure global id reclaim allowed": "false",
            "mon data avail warn": "2",  # the lab's disk is shared: its free share says nothing of the cluster
            "mon data avail crit": "1",
            "run dir": str(root / "run"),
            "admin socket": str(root / "run" / "$name.asok"),
            "log file": str(root / "log" / "$name.log"),
            "mon data": str(root / "mon" / "$name"),
            "mgr data": str(root / "mgr" / "$name"),
            "osd data": str(root / "osd" / "$name"),
            "osd objectstore": "bluestore",
            # BlueStore on a plain file: its path outside the OSD's folder ("$osd_data/block" loops)
            "bluestore block create": "true",
            "bluestore block size": str(OSD_BLOCK_BYTES),
            "bluestore block path": str(root / "$name.block"),
            "osd memory target": str(OSD_MEMORY_TARGET),
        }
        lines = ["# the lab's Ceph (lab/services/ceph.py)", "[global]", *(f"{k} = {v}" for k, v in settings.items())]
        self.conf_path.write_text("\n".join(lines) + "\n")

    # ---- tools ----------------------------------------------------------------------------
    def run(self, tool: str, *args: str, timeout: float = 60.0) -> str:
        """Run one of Ceph's tools on this cluster's configuration, logged to ``log/setup.log``."""
        cmd = [tool, "-c", str(self.conf_path), *args]
        return run_cli(cmd, self.root / "log" / "setup.log", timeout=timeout, what=f"{tool} {' '.join(args[:3])}")

    def ceph(self, *args: str, timeout: float = 60.0) -> Any:
        """``ceph ARGS --format json`` on this cluster: the decoded answer (None when it printed nothing)."""
        out = self.run("ceph", "--connect-timeout", str(max(int(timeout), 1)), *args, "--format", "json",
                       timeout=timeout + 5)  # fmt: skip
        return json.loads(out) if out.strip() else None

    # ---- images (librbd: the lab's checks and tests) -----------------------------------------
    @contextlib.contextmanager
    def ioctx(self, pool: str) -> Iterator[Any]:
        """A librados I/O context on ``pool`` (Debian's python3-rados, imported here: only the lab's checks need it)."""
        import rados

        with (
            rados.Rados(conffile=str(self.conf_path), conf=RADOS_TIMEOUTS) as cluster,
            cluster.open_ioctx(pool) as ioctx,
        ):
            yield ioctx

    def images(self, pool: str) -> list[str]:
        import rbd

        with self.ioctx(pool) as ioctx:
            return sorted(rbd.RBD().list(ioctx))

    def write_image(self, pool: str, name: str, data: bytes, offset: int = 0, *, size: int | None = None) -> None:
        """Write ``data`` at ``offset`` of image ``name`` (made first with ``size`` bytes if given), then flush."""
        import rbd

        with self.ioctx(pool) as ioctx:
            if size is not None and name not in rbd.RBD().list(ioctx):
                rbd.RBD().create(ioctx, name, size)
            with rbd.Image(ioctx, name) as image:
                image.write(data, offset)
                image.flush()

    def connection(self, pool: str, name: str) -> dict[str, Any]:
        """What Cinder's RBD driver gives a client of image ``name`` of ``pool`` (``initialize_connection``'s data):
        the monitor (legacy port), ``pool/image``, no authentication."""
        return {"name": f"{pool}/{name}", "hosts": [HOST], "ports": [str(self.config["ports"]["mon_v1"])],
                "auth_enabled": False}  # fmt: skip

    @contextlib.contextmanager
    def open_image(self, pool: str, name: str) -> Iterator[RbdHandle]:
        """Image ``name`` of ``pool`` open for reads and writes, as a client that attached it would have it."""
        handle = RbdHandle(self.connection(pool, name))
        try:
            yield handle
        finally:
            handle.shutdown()

    def migration_state(self, pool: str, name: str) -> str | None:
        """The RBD live migration of image ``name`` of ``pool`` (its destination): ``prepared``, ``executing``,
        ``executed``... (``MIGRATION_STATES``); None when the image migrates not (or is not there)."""
        import rbd

        with self.ioctx(pool) as ioctx:
            try:
                return MIGRATION_STATES.get(rbd.RBD().migration_status(ioctx, name)["state"], "unknown")
            except (rbd.InvalidArgument, rbd.ImageNotFound):
                return None

    def remove_image(self, pool: str, name: str) -> None:
        import rbd

        with self.ioctx(pool) as ioctx:
            rbd.RBD().remove(ioctx, name)

    def read_image(self, pool: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
        import rbd

        with self.ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as image:
            return image.read(offset, image.size() - offset if length is None else length)

    def image_digest(self, pool: str, name: str, chunk: int = 4 * 1024**2) -> tuple[int, str]:
        """(size, sha256) of the whole image, read a chunk at a time."""
        import rbd

        digest = hashlib.sha256()
        with self.ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as image:
            size = image.size()
            for offset in range(0, size, chunk):
                digest.update(image.read(offset, min(chunk, size - offset)))
        return size, digest.hexdigest()

    # ---- processes ------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.root / "log" / f"{name}.out"

    def command(self, name: str) -> list[str]:
        kind, ident = name.split(".", 1)
        return [f"ceph-{kind}", "-c", str(self.conf_path), "--id", ident, "-f"]

    def up(self, timeout: float = 180.0) -> dict[str, int]:
        """Create the cluster the first time; start what is not running; pools and health ready. Their PIDs."""
        missing = [tool for tool in CEPH_TOOLS if shutil.which(tool) is None]
        if missing:
            raise LabError(f"missing {', '.join(missing)}: run scripts/bootstrap.sh")
        deadline = time.monotonic() + timeout
        self.configure()
        if not (self.root / "mon" / MON / "store.db").exists():
            self._mkfs_mon(deadline)
        pids = {MON: self.start(MON)}
        wait_ready(self._answers, pids=pids, timeout=left(deadline), what="the Ceph monitor", log=self.log_path(MON))
        pids[MGR] = self.start(MGR)
        if not (self.root / "osd" / OSD / "mkfs_done").exists():
            self._mkfs_osd(deadline)
        pids[OSD] = self.start(OSD)
        self.ceph("osd", "crush", "create-or-move", OSD, "1", "root=default", timeout=left(deadline))
        self._pools(deadline)
        seen: dict[str, Any] = {}
        wait_ready(lambda: self._healthy(seen), pids=pids, timeout=left(deadline), what="Ceph (OSD up, PGs active)",
                   log=self.root / "log", interval=0.5, seen=seen)  # fmt: skip
        return {f"ceph-{name}": pid for name, pid in pids.items()}

    def _mkfs_mon(self, deadline: float) -> None:
        monmap = self.root / "monmap"
        monmap.unlink(missing_ok=True)
        run_cli(["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", self.mon_addrs, str(monmap)],
                self.root / "log" / "setup.log", timeout=left(deadline), what="monmaptool")  # fmt: skip
        shutil.rmtree(self.root / "mon" / MON, ignore_errors=True)  # a half-made store from an interrupted mkfs
        self.run("ceph-mon", "--id", "a", "--mkfs", "--monmap", str(monmap), timeout=left(deadline))

    def _mkfs_osd(self, deadline: float) -> None:
        osd_uuid = str(self.config["osd_uuid"])
        osd_id = self.ceph("osd", "create", osd_uuid, timeout=left(deadline))  # the same id for the same uuid
        if int(osd_id["osdid"] if isinstance(osd_id, dict) else osd_id) != 0:
            raise LabError(f"the cluster gave the OSD id {osd_id}, not 0; see {self.root / 'log'}")
        shutil.rmtree(self.root / "osd" / OSD, ignore_errors=True)
        (self.root / f"{OSD}.block").unlink(missing_ok=True)
        (self.root / "osd" / OSD).mkdir(parents=True)
        self.run("ceph-osd", "--id", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=left(deadline))

    def _pools(self, deadline: float) -> None:
        have = set(self.ceph("osd", "pool", "ls", timeout=left(deadline)) or [])
        for pool in POOLS.values():
            if pool not in have:
                self.ceph("osd", "pool", "create", pool, str(PG_NUM), timeout=left(deadline))
            self.run("rbd", "pool", "init", pool, timeout=left(deadline))  # idempotent: tags it for RBD

    def _answers(self) -> bool:
        try:
            self.ceph("mon", "stat", timeout=5)
        except LabError:
            return False
        return True

    def _healthy(self, seen: dict[str, Any]) -> bool:
        status = self.ceph("status", timeout=10)
        osds = status["osdmap"]
        pgs = status["pgmap"]
        clean = sum(s["count"] for s in pgs.get("pgs_by_state", []) if s["state_name"] == "active+clean")
        seen.update(health=status["health"]["status"], osds_up=osds["num_up_osds"], osds_in=osds["num_in_osds"],
                    pgs=pgs["num_pgs"], active_clean=clean)  # fmt: skip
        return osds["num_up_osds"] == 1 and osds["num_in_osds"] == 1 and pgs["num_pgs"] == clean > 0

    def down(self) -> dict[str, bool]:
        """Stop the OSD, the manager and the monitor, by PID; returns {daemon: stopped}."""
        return {f"ceph-{name}": ok for name, ok in self.stop_all().items()}

    def status(self) -> list[dict[str, object]]:
        """One row per daemon (pid, rss_mib), and the cluster's health when the monitor runs."""
        rows: list[dict[str, object]] = []
        for name in self.names:
            pid = self.pid(name)
            rows.append({"service": f"ceph-{name}", "pid": pid,
                         **({"rss_mib": round(tree_rss_kib(pid) / 1024, 1)} if pid else {})})  # fmt: skip
        if self.pid(MON) and self.config_path.exists():
            try:
                health = self.ceph("health", timeout=10)
                rows.append({"service": "ceph", "health": health["status"], "pools": dict(POOLS)})
            except LabError as exc:
                rows.append({"service": "ceph", "error": str(exc)})
        return rows
