"""What every lab array has: its config, an on-disk inventory, pools and the LUN lifecycle API.

A concrete array (``ReferenceArray``, ``PlainArray``) supplies the data-plane
steps (``_dp_*``); this class does validation, space accounting, locking and
persistence, so that a refusal happens before anything changes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.backends.base import ConnectionInfo
from include.backends.errors import Conflict, InvalidRequest, NotFound, PoolFull
from lab.arrays.apiserver import Router, require_name, require_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayConfig:
    """One array's settings, read from its JSON config file."""

    name: str
    kind: str  # "reference" | "plain"
    host: str
    api_port: int
    nbd_port: int
    token: str
    state_dir: Path
    pools: dict[str, int]  # pool name -> capacity in bytes
    # background copy throttle when a takeover names none (0 = unlimited). 52 MiB/s is measured on
    # the lab (bench/dataplane.py --only plain_iops,hot_set_iops --pairs 5, 2026-12-03): the copy
    # moves about 51 MiB/s while a busy client on a hot set keeps 86% of its IOPS (median of 5);
    # at 56 MiB/s it kept 75%, unlimited the copy takes most of them.
    default_speed_bps: int = 52 * 1024 * 1024
    reconnect_delay: int = 5  # seconds a remote LUN waits for its source before failing I/O
    flush_interval: float = 5.0  # seconds between flushes of a copy (bounds re-copy after a crash)
    default_copy_mode: str = "stream"  # takeover mode when a request names none: "stream" or "mirror"
    # images opened with O_DIRECT and Linux native AIO: the data sits on the array's disk, not in the
    # host's page cache, so a copy's writes neither queue behind the clients' in the page cache nor
    # pile up for each flush (bench/client_iops.py). Where a filesystem refuses O_DIRECT (some FUSE
    # ones, tmpfs before Linux 6.6) the array says so in its log and uses buffered I/O.
    direct_io: bool = True

    @classmethod
    def load(cls, path: Path) -> ArrayConfig:
        raw = json.loads(Path(path).read_text())
        raw["state_dir"] = Path(raw["state_dir"])
        raw["pools"] = {str(k): int(v) for k, v in raw["pools"].items()}
        return cls(**raw)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "state_dir": str(self.state_dir)}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"


class Inventory:
    """The array's LUN records in one JSON file, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.luns: dict[str, dict[str, Any]] = {}
        if path.exists():
            self.luns = json.loads(path.read_text())["luns"]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"luns": self.luns}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class BaseArray:
    """LUN lifecycle with validation and accounting; subclasses do the data plane."""

    takeover = False
    pool_move = False

    def __init__(self, config: ArrayConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.inventory = Inventory(config.state_dir / "inventory.json")
        self.stopping = threading.Event()

    # ---- hooks for the data plane ------------------------------------------
    def start(self) -> None:
        """Bring up the data plane and rebuild it from the inventory."""

    def stop(self) -> None:
        self.stopping.set()

    def _dp_create(self, lun: dict[str, Any]) -> None:
        raise NotImplementedError

    def _dp_delete(self, lun: dict[str, Any]) -> None:
        raise NotImplementedError

    def _dp_extend(self, lun: dict[str, Any], size: int) -> None:
        raise NotImplementedError

    def _dp_export(self, lun: dict[str, Any], kind: str) -> ConnectionInfo:
        """Make the export ``kind`` ("server" or "takeover") exist; return its info."""
        raise NotImplementedError

    def _dp_unexport(self, lun: dict[str, Any], kind: str) -> None:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------
    def lun(self, name: str) -> dict[str, Any]:
        lun = self.inventory.luns.get(name)
        if lun is None:
            raise NotFound(f"array {self.config.name} has no LUN named {name!r}")
        return lun

    def pool_usage(self) -> dict[str, int]:
        used = dict.fromkeys(self.config.pools, 0)
        for lun in self.inventory.luns.values():
            used[lun["pool"]] = used.get(lun["pool"], 0) + lun["size"]
            move = lun.get("move")
            if move:  # a move holds space in both pools until it ends
                used[move["pool"]] = used.get(move["pool"], 0) + lun["size"]
        return used

    def check_space(self, pool: str, size: int) -> None:
        if pool not in self.config.pools:
            known = ", ".join(sorted(self.config.pools))
            raise NotFound(f"array {self.config.name} has no pool {pool!r} (pools: {known})")
        free = self.config.pools[pool] - self.pool_usage()[pool]
        if size > free:
            raise PoolFull(f"pool {pool} of array {self.config.name} has {free} bytes free, {size} requested")

    def check_idle(self, lun: dict[str, Any], action: str) -> None:
        """Refuse ``action`` on a LUN that is being copied, moved or taken over."""
        name = lun["name"]
        if lun.get("copy"):
            raise Conflict(f"cannot {action} LUN {name}: its data is still being copied from the source")
        if lun.get("move"):
            raise Conflict(f"cannot {action} LUN {name}: it is being moved to pool {lun['move']['pool']}")
        if lun.get("takeover_export"):
            initiator = lun["takeover_export"]["initiator"]
            raise Conflict(f"cannot {action} LUN {name}: it is exported for takeover by array {initiator}")

    def connection(self, export: str) -> ConnectionInfo:
        return ConnectionInfo(host=self.config.host, port=self.config.nbd_port, export=export)

    def view(self, lun: dict[str, Any]) -> dict[str, Any]:
        """The LUN as the API shows it."""
        keys = ("name", "pool", "size", "created", "taken_over_from", "move", "error")
        out = {k: lun.get(k) for k in keys}
        out["location"] = self.connection(lun["name"]).uri
        out["exported"] = bool(lun.get("server_export"))
        out["takeover_export"] = lun.get("takeover_export")
        out["copy"] = bool(lun.get("copy"))
        out["state"] = "copying" if lun.get("copy") else "moving" if lun.get("move") else "available"
        return out

    # ---- API -----------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        with self.lock:
            used = self.pool_usage()
            pools = [
                {
                    "name": pool,
                    "total_bytes": cap,
                    "allocated_bytes": used[pool],
                    "free_bytes": max(cap - used[pool], 0),
                }
                for pool, cap in sorted(self.config.pools.items())
            ]
        return {
            "name": self.config.name,
            "kind": self.config.kind,
            "takeover": self.takeover,
            "pool_move": self.pool_move,
            "pools": pools,
        }

    def check_new_lun(self, name: str, pool: str, size: int) -> None:
        """Refuse a new LUN whose name is taken or that does not fit its pool."""
        if name in self.inventory.luns:
            raise Conflict(f"array {self.config.name} already has a LUN named {name}")
        self.check_space(pool, size)

    def create_lun(self, body: dict[str, Any]) -> dict[str, Any]:
        name, size, pool = require_name(body), require_size(body), require_name(body, "pool")
        with self.lock:
            self.check_new_lun(name, pool, size)
            lun = self.new_record(name, pool, size)
            self._dp_create(lun)
            self.inventory.luns[name] = lun
            self.inventory.save()
            return self.view(lun)

    def new_record(self, name: str, pool: str, size: int) -> dict[str, Any]:
        return {"name": name, "pool": pool, "size": size, "created": time.time()}

    def delete_lun(self, name: str) -> None:
        with self.lock:
            lun = self.lun(name)
            self.check_idle(lun, "delete")
            if lun.get("server_export"):
                raise Conflict(f"cannot delete LUN {name}: it is exported to a server; unexport it first")
            self._dp_delete(lun)
            del self.inventory.luns[name]
            self.inventory.save()

    def extend_lun(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        size = require_size(body)
        with self.lock:
            lun = self.lun(name)
            self.check_idle(lun, "extend")
            if size < lun["size"]:
                raise InvalidRequest(f"LUN {name} is {lun['size']} bytes; shrinking to {size} is not supported")
            if size > lun["size"]:
                self.check_space(lun["pool"], size - lun["size"])
                self._dp_extend(lun, size)
                lun["size"] = size
                self.inventory.save()
            return self.view(lun)

    def export(self, name: str) -> dict[str, Any]:
        with self.lock:
            lun = self.lun(name)
            if lun.get("takeover_export"):
                # a server writing here would write behind the back of the array taking it over
                initiator = lun["takeover_export"]["initiator"]
                raise Conflict(f"cannot export LUN {name} to a server: it is being taken over by array {initiator}")
            info = self._dp_export(lun, "server")
            if not lun.get("server_export"):
                lun["server_export"] = True
                self.inventory.save()
            return info.to_json()

    def unexport(self, name: str) -> None:
        self._end_export(name, "server", cleared=False)

    def _end_export(self, name: str, kind: str, cleared: bool | None) -> None:
        """Remove the export ``kind`` of a LUN if it has one; its record becomes ``cleared``."""
        with self.lock:
            lun = self.lun(name)
            if lun.get(f"{kind}_export"):
                self._dp_unexport(lun, kind)
                lun[f"{kind}_export"] = cleared
                self.inventory.save()

    def export_for_takeover(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        initiator = require_name(body, "initiator")
        with self.lock:
            lun = self.lun(name)
            current = lun.get("takeover_export")
            if current and current["initiator"] != initiator:
                raise Conflict(f"LUN {name} is already exported for takeover by array {current['initiator']}")
            if not current:
                self.check_idle(lun, "export for takeover")
                if lun.get("server_export"):
                    raise Conflict(f"cannot export LUN {name} for takeover: it is exported to a server (in use)")
            info = self._dp_export(lun, "takeover")
            if not current:
                lun["takeover_export"] = {"initiator": initiator, "since": time.time()}
                self.inventory.save()
            return info.to_json()

    def release_takeover(self, name: str) -> None:
        self._end_export(name, "takeover", cleared=None)

    def routes(self) -> Router:
        r = Router()
        lun = r"/v1/luns/(?P<name>[^/]+)"
        r.add("GET", "/v1/health", lambda m, b: {"ok": True, "name": self.config.name})
        r.add("GET", "/v1/capabilities", lambda m, b: self.capabilities())
        r.add("GET", "/v1/luns", lambda m, b: {"luns": self.list_luns()})
        r.add("POST", "/v1/luns", lambda m, b: self.create_lun(b))
        r.add("GET", lun, lambda m, b: self.get_lun(m["name"]))
        r.add("DELETE", lun, lambda m, b: self.delete_lun(m["name"]))
        r.add("POST", lun + "/extend", lambda m, b: self.extend_lun(m["name"], b))
        r.add("POST", lun + "/export", lambda m, b: self.export(m["name"]))
        r.add("DELETE", lun + "/export", lambda m, b: self.unexport(m["name"]))
        r.add("POST", lun + "/takeover-export", lambda m, b: self.export_for_takeover(m["name"], b))
        r.add("DELETE", lun + "/takeover-export", lambda m, b: self.release_takeover(m["name"]))
        return r

    def get_lun(self, name: str) -> dict[str, Any]:
        with self.lock:
            return self.view(self.lun(name))

    def list_luns(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.view(lun) for _, lun in sorted(self.inventory.luns.items())]
