"""The reference lab array (alpha, beta): LUNs on one qemu-storage-daemon.

Each LUN is an image in a pool directory (qcow2, or raw for a LUN taken over
in mirror mode), opened in the daemon under a format node and exported over
NBD. A pool move mirrors the LUN into a new image in the other pool and
switches over (``blockdev-mirror`` + ``job-complete``).

A takeover copies a LUN in from another array while it already serves here,
in ``stream`` or ``mirror`` mode: see takeover.py, whose ``TakeoverMixin``
this class takes in.

Crash safety (DESIGN.md section 4):
* the inventory is written before a node is exposed, and a LUN that is
  still being copied is always reopened WITH its remote backing: its
  overlay header is never trusted for that;
* the copy is flushed every ``flush_interval`` seconds (config), so a restart
  re-copies little (``block-stream`` skips allocated clusters);
* a copy or move is recorded as finished only after a flush of the new
  image, and the source of a move is deleted only after that;
* in mirror mode the source is authoritative until the mirror is in sync;
  from then on (recorded before the switch is asked for) every acknowledged
  write is on the local raw image, which keeps no metadata in memory, so a
  restart serves the local image.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import nbd

from include.backends.base import ConnectionInfo
from include.backends.errors import BackendError, Conflict, InvalidRequest
from include.backends.progress import RateMeter
from lab.arrays.apiserver import Router, require_name
from lab.arrays.core import ArrayConfig, BaseArray
from lab.arrays.images import create_image, image_blockdev, image_file_options, image_format
from lab.arrays.qsd import QMPCommandError, StorageDaemon
from lab.arrays.takeover import RESUME_RETRY, TakeoverMixin
from lab.procutil import nodelay_listener, wait_until

log = logging.getLogger(__name__)

RBD = "rbd"  # a takeover source's type: an RBD image (any other: an NBD export)

MONITOR_INTERVAL = 0.5
JOB_EXPORT_TIMEOUT = 5.0  # seconds to wait for a cancelled job or a deleted export to go away


class ReferenceArray(TakeoverMixin, BaseArray):
    takeover = True
    pool_move = True

    def __init__(self, config: ArrayConfig) -> None:
        super().__init__(config)
        for pool in config.pools:
            (config.state_dir / "pools" / pool).mkdir(parents=True, exist_ok=True)
        self.listener = nodelay_listener(config.host, config.nbd_port)
        self.daemon = StorageDaemon(config.state_dir / "run", self.listener.fileno(), config.state_dir / "qsd.log")
        self.qmp = None
        self.active: set[str] = set()  # LUNs whose nodes are open in the daemon
        self.meters: dict[str, RateMeter] = {}  # copy rate per LUN
        self.last_flush: dict[str, float] = {}
        self.last_resume: dict[str, float] = {}
        self.monitor: threading.Thread | None = None
        self.file_options = image_file_options(config)

    # ---- naming ----------------------------------------------------------------
    @staticmethod
    def node(lun: dict[str, Any], gen: int | None = None) -> str:
        return f"{lun['id']}g{lun['gen'] if gen is None else gen}"

    @staticmethod
    def remote_node(lun: dict[str, Any]) -> str:
        return f"{lun['id']}r"

    @staticmethod
    def job_id(lun: dict[str, Any], kind: str) -> str:
        return f"{lun['id']}{kind}"  # kind: "c" copy, "m" move

    def image_path(self, lun: dict[str, Any], pool: str | None = None, gen: int | None = None) -> Path:
        pool = pool or lun["pool"]
        gen = lun["gen"] if gen is None else gen
        return self.config.state_dir / "pools" / pool / f"{lun['name']}.{gen}.{image_format(lun)}"

    def serving_node(self, lun: dict[str, Any]) -> str:
        """The node the LUN's exports serve: the remote one while a mirror is not in sync yet."""
        copy = lun.get("copy")
        if copy and copy["mode"] == "mirror" and copy["phase"] == "sync":
            return self.remote_node(lun)
        return self.node(lun)

    @staticmethod
    def export_name(lun: dict[str, Any], kind: str) -> str:
        return lun["name"] if kind == "server" else f"takeover-{lun['name']}"

    @staticmethod
    def export_id(lun: dict[str, Any], kind: str) -> str:
        return f"{lun['id']}{kind[0]}"  # kind: "server" or "takeover"

    # ---- start / stop / rebuild -----------------------------------------------------
    def start(self) -> None:
        self.qmp = self.daemon.start()
        with self.lock:
            for lun in self.inventory.luns.values():
                self._rebuild(lun)
            self._remove_orphan_images()
        self.monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)
        self.monitor.start()

    def stop(self) -> None:
        super().stop()
        if self.monitor is not None:
            self.monitor.join(5)
        with self.lock:
            for lun in self.inventory.luns.values():
                if lun["name"] in self.active:
                    try:
                        self._flush(self.serving_node(lun))
                    except BackendError as exc:
                        log.warning("flush of %s at stop failed: %s", lun["name"], exc)
        self.daemon.stop()
        self.listener.close()

    def _rebuild(self, lun: dict[str, Any]) -> None:
        """Open a LUN's nodes, exports and job as the inventory records them."""
        if lun.get("move"):
            # an unfinished move is dropped: the old image is complete and still current
            move = lun.pop("move")
            self.image_path(lun, move["pool"], move["gen"]).unlink(missing_ok=True)
            lun["error"] = f"move to pool {move['pool']} was interrupted by an array restart; run it again"
            self.inventory.save()
        copy = lun.get("copy")
        if copy and copy["mode"] == "mirror" and copy["phase"] == "ready":
            # the mirror was in sync: every acknowledged write is on the local image
            self._record_copy_done(lun)
            copy = None
        try:
            if copy:
                self._add_remote(lun)
            self._open_image(lun, empty=bool(copy) and copy["mode"] == "mirror")
            self.active.add(lun["name"])
            self._serve(lun)
        except BackendError as exc:
            # typically the source of a copy is down: the monitor retries; clients
            # get "no such export" meanwhile, never the overlay without its backing
            log.warning("LUN %s not rebuilt yet: %s", lun["name"], exc)
            self._close_nodes(lun)

    def _serve(self, lun: dict[str, Any]) -> None:
        """Start a LUN's exports and copy job, in the order its copy mode needs.

        A mirror must sit between the exports and the source (client writes go
        through it to both sides), so its exports come first and the mirror's
        filter is inserted above them. A stream's exports come after its job:
        they attach to the overlay itself, below the copy-on-read filter that
        block-stream inserts, so a client read of an uncopied region fetches
        only what it asked for, and pausing or throttling the copy really
        bounds the load on the source. (Copy-on-read requests still serialise
        with client writes on the overlay node, so none is overwritten.)
        """
        copy = lun.get("copy")
        stream_first = bool(copy) and copy["mode"] == "stream"
        if stream_first:
            self._start_copy_job(lun)
        for kind in ("server", "takeover"):
            if lun.get(f"{kind}_export"):
                self._dp_export(lun, kind)
        if copy and not stream_first:
            self._start_copy_job(lun)

    def _backing(self, lun: dict[str, Any]) -> str | None:
        copy = lun.get("copy")
        return self.remote_node(lun) if copy and copy["mode"] == "stream" else None

    def _remove_orphan_images(self) -> None:
        known = {self.image_path(lun) for lun in self.inventory.luns.values()}
        for path in (self.config.state_dir / "pools").glob("*/*.*"):
            if path.suffix in (".qcow2", ".raw") and path not in known:
                log.warning("removing %s: not in the inventory", path)
                path.unlink()

    # ---- node helpers -----------------------------------------------------------
    def _add_image(self, lun: dict[str, Any], path: Path, node: str, backing: str | None) -> None:
        self.qmp.execute("blockdev-add", image_blockdev(lun, path, node, backing, self.file_options))

    def _open_image(self, lun: dict[str, Any], *, empty: bool = False) -> None:
        """Open the LUN's current image under its node, with the backing its copy needs.

        ``empty``: create the image anew first: a mirror not yet in sync starts
        over, its source being the authoritative copy.
        """
        path = self.image_path(lun)
        if empty:
            create_image(path, lun["size"], image_format(lun), replace=True)
        self._add_image(lun, path, self.node(lun), backing=self._backing(lun))

    def _add_remote(self, lun: dict[str, Any]) -> None:
        """The source as a block node: an NBD export (QEMU's nbd driver, reconnecting), or an RBD image (QEMU's
        rbd driver, Debian's qemu-block-extra: librbd, reaching the source's monitors)."""
        src = lun["copy"]["source"]
        common = {"node-name": self.remote_node(lun), "read-only": lun["copy"]["mode"] == "stream"}  # a mirror
        if src.get("type") == RBD:  # writes through to the source
            options: dict[str, Any] = {
                "driver": "rbd",
                "pool": src["pool"],
                "image": src["image"],
                "server": [{"host": h, "port": str(p)} for h, p in zip(src["hosts"], src["ports"], strict=True)],
                **({"user": src["user"]} if src.get("user") else {"auth-client-required": ["none"]}),
            }
        else:
            options = {
                "driver": "nbd",
                "server": {"type": "inet", "host": src["host"], "port": str(src["port"])},
                "export": src["export"],
                "reconnect-delay": self.config.reconnect_delay,
            }
        self.qmp.execute("blockdev-add", {**options, **common})

    def _del_node(self, node: str) -> None:
        try:
            self.qmp.execute("blockdev-del", {"node-name": node})
        except QMPCommandError as exc:
            if "find node" not in exc.desc and "Cannot find" not in exc.desc:
                raise

    def _remote_size(self, lun: dict[str, Any]) -> int:
        """The source LUN's size, asked of its export over NBD (of the RBD image, with librbd).

        Not of our qemu-storage-daemon: its ``query-named-block-nodes`` segfaulted (QEMU 7.2, Debian 12) while
        a stream job of another LUN was completing, in a rebalance with three takeovers at once (2026-12-02).
        """
        src = lun["copy"]["source"]
        if src.get("type") == RBD:
            return rbd_image_size(src)
        try:
            h = nbd.NBD()
            h.set_export_name(src["export"])
            h.connect_tcp(src["host"], str(src["port"]))
            try:
                return int(h.get_size())
            finally:
                h.shutdown()
        except nbd.Error as exc:
            raise BackendError(f"source export {src['export']} at {src['host']}:{src['port']}: {exc}") from None

    def _close_nodes(self, lun: dict[str, Any]) -> None:
        """Best effort: drop every node, export and job of a LUN (used on failures)."""
        for kind in ("server", "takeover"):
            self._del_export(lun, kind)
        for job in ("c", "m"):
            self._cancel_job(self.job_id(lun, job))
        for node in (self.node(lun), self.remote_node(lun)):
            try:
                self._del_node(node)
            except QMPCommandError as exc:
                log.warning("could not close node %s: %s", node, exc)
        self.active.discard(lun["name"])

    def _job(self, job_id: str) -> dict[str, Any] | None:
        """The daemon's job of that id, if it has one."""
        return next((j for j in self.qmp.execute("query-jobs") if j["id"] == job_id), None)

    def _cancel_job(self, job_id: str) -> None:
        """Cancel a job if it exists and wait (bounded) until it is gone, so its nodes can be closed."""

        def gone() -> bool:
            job = self._job(job_id)
            if job is None:
                return True
            try:
                if job["status"] == "concluded":
                    self.qmp.execute("job-dismiss", {"id": job_id})
                elif job["status"] not in ("aborting", "waiting", "pending"):
                    # force: a mirror in sync is cancelled without switching over
                    self.qmp.execute("block-job-cancel", {"device": job_id, "force": True})
            except QMPCommandError as exc:
                log.debug("job %s: %s", job_id, exc)
            return False

        if not wait_until(gone, JOB_EXPORT_TIMEOUT):
            log.warning("job %s did not go away", job_id)

    def _export_ids(self) -> set[str]:
        return {e["id"] for e in self.qmp.execute("query-block-exports")}

    def _del_export(self, lun: dict[str, Any], kind: str) -> None:
        export_id = self.export_id(lun, kind)
        try:
            self.qmp.execute("block-export-del", {"id": export_id, "mode": "hard"})
        except QMPCommandError:
            return
        # removal is asynchronous: wait until the id is gone so it can be reused
        wait_until(lambda: export_id not in self._export_ids(), JOB_EXPORT_TIMEOUT)

    def _flush(self, node: str) -> None:
        """Flush a node to disk through a private NBD export (QMP has no flush command)."""
        export_id, name = f"{node}x", f"_flush-{node}"
        self.qmp.execute("block-export-add", {"type": "nbd", "id": export_id, "node-name": node, "name": name})
        try:
            h = nbd.NBD()
            h.set_export_name(name)
            h.connect_tcp(self.config.host, str(self.config.nbd_port))
            try:
                h.flush()
            finally:
                h.shutdown()
        except nbd.Error as exc:
            raise BackendError(f"flush of node {node} failed: {exc}") from None
        finally:
            self.qmp.execute("block-export-del", {"id": export_id, "mode": "hard"})

    # ---- data plane of the lifecycle -------------------------------------------------
    def new_record(self, name: str, pool: str, size: int) -> dict[str, Any]:
        return {**super().new_record(name, pool, size), "id": "l" + secrets.token_hex(6), "gen": 0}

    def _dp_create(self, lun: dict[str, Any]) -> None:
        path = self.image_path(lun)
        create_image(path, lun["size"], image_format(lun))
        try:
            self._add_image(lun, path, self.node(lun), backing=None)
        except BackendError:
            path.unlink(missing_ok=True)
            raise
        self.active.add(lun["name"])

    def _dp_delete(self, lun: dict[str, Any]) -> None:
        self._close_nodes(lun)
        self.image_path(lun).unlink(missing_ok=True)

    def _require_active(self, lun: dict[str, Any]) -> None:
        if lun["name"] not in self.active:
            raise Conflict(f"LUN {lun['name']} is not open yet (its source is unreachable); try again later")

    def _dp_extend(self, lun: dict[str, Any], size: int) -> None:
        self._require_active(lun)
        self.qmp.execute("block_resize", {"node-name": self.node(lun), "size": size})

    def _dp_export(self, lun: dict[str, Any], kind: str) -> ConnectionInfo:
        self._require_active(lun)
        export_id = self.export_id(lun, kind)
        if export_id not in self._export_ids():
            self.qmp.execute(
                "block-export-add",
                {
                    "type": "nbd",
                    "id": export_id,
                    "node-name": self.serving_node(lun),
                    "name": self.export_name(lun, kind),
                    "writable": True,
                },
            )
        return self.connection(self.export_name(lun, kind))

    def _dp_unexport(self, lun: dict[str, Any], kind: str) -> None:
        self._del_export(lun, kind)

    def view(self, lun: dict[str, Any]) -> dict[str, Any]:
        out = super().view(lun)
        out["open"] = lun["name"] in self.active
        out["format"] = image_format(lun)
        if lun.get("copy"):
            out["copy_mode"] = lun["copy"]["mode"]
        return out

    # ---- pool move -----------------------------------------------------------------
    def move(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        pool = require_name(body, "pool")
        with self.lock:
            lun = self.lun(name)
            if lun.get("move") and lun["move"]["pool"] == pool:
                return self.view(lun)  # already on its way there
            self.check_idle(lun, "move")
            self._require_active(lun)
            if pool == lun["pool"]:
                raise InvalidRequest(f"LUN {name} is already in pool {pool}")
            self.check_space(pool, lun["size"])
            gen = lun["gen"] + 1
            path = self.image_path(lun, pool, gen)
            create_image(path, lun["size"], image_format(lun))
            try:
                self._add_image(lun, path, self.node(lun, gen), backing=None)
                lun["move"] = {"pool": pool, "gen": gen, "started": time.time()}
                lun.pop("error", None)
                self.inventory.save()
                self.qmp.execute(
                    "blockdev-mirror",
                    {
                        "job-id": self.job_id(lun, "m"),
                        "device": self.node(lun),
                        "target": self.node(lun, gen),
                        "sync": "full",
                        "auto-dismiss": False,
                    },
                )
            except BaseException:
                lun.pop("move", None)
                self.inventory.save()
                self._del_node(self.node(lun, gen))
                path.unlink(missing_ok=True)
                raise
            return self.view(lun)

    # ---- monitor -------------------------------------------------------------------
    def _monitor_loop(self) -> None:
        while not self.stopping.wait(MONITOR_INTERVAL):
            try:
                with self.lock:
                    self._monitor_once()
            except Exception:
                log.exception("monitor pass failed")

    def _monitor_once(self) -> None:
        jobs = {j["id"]: j for j in self.qmp.execute("query-jobs")}
        now = time.monotonic()
        for lun in list(self.inventory.luns.values()):
            name = lun["name"]
            if name not in self.active:
                if now - self.last_resume.get(name, 0) >= RESUME_RETRY:
                    self.last_resume[name] = now
                    self._rebuild(lun)
                continue
            if lun.get("copy"):
                self._watch_copy(lun, jobs.get(self.job_id(lun, "c")), now)
            if lun.get("move"):
                self._watch_move(lun, jobs.get(self.job_id(lun, "m")))

    def _watch_move(self, lun: dict[str, Any], job: dict[str, Any] | None) -> None:
        move = lun["move"]
        if job is None:
            return
        if job["status"] == "ready":
            self.qmp.execute("job-complete", {"id": job["id"]})
        elif job["status"] == "concluded":
            self.qmp.execute("job-dismiss", {"id": job["id"]})
            old_node, old_path = self.node(lun), self.image_path(lun)
            new_gen, new_pool = move["gen"], move["pool"]
            if job.get("error"):
                lun.pop("move")
                lun["error"] = f"move to pool {new_pool} failed: {job['error']}"
                self.inventory.save()
                self._del_node(self.node(lun, new_gen))
                self.image_path(lun, new_pool, new_gen).unlink(missing_ok=True)
                return
            self._flush(self.node(lun, new_gen))
            lun.pop("move")
            lun["gen"], lun["pool"] = new_gen, new_pool
            self.inventory.save()
            self._del_node(old_node)  # its file node goes with it
            old_path.unlink(missing_ok=True)
            log.info("LUN %s moved to pool %s", lun["name"], new_pool)

    # ---- routes -------------------------------------------------------------------
    def routes(self) -> Router:
        r = super().routes()
        lun = r"/v1/luns/(?P<name>[^/]+)"
        r.add("POST", "/v1/takeovers", lambda m, b: self.take_over(b))
        r.add("DELETE", "/v1/takeovers/(?P<name>[^/]+)", lambda m, b: self.abort_takeover(m["name"]))
        r.add(
            "POST",
            "/v1/takeovers/(?P<name>[^/]+)/abandon",
            lambda m, b: self.abort_takeover(m["name"], only_if_source_current=True),
        )
        r.add("POST", lun + "/move", lambda m, b: self.move(m["name"], b))
        r.add("GET", lun + "/migration", lambda m, b: self.migration(m["name"]))
        r.add(
            "POST",
            lun + "/migration/(?P<action>pause|resume|speed)",
            lambda m, b: self._copy_control(m["name"], m["action"], b),
        )
        return r


def rbd_image_size(src: dict[str, Any]) -> int:
    """The size of the RBD image a takeover's ``source`` names (Debian's python3-rbd, imported here: only an RBD
    source needs it)."""
    import rados
    import rbd

    mons = ",".join(f"{h}:{p}" for h, p in zip(src["hosts"], src["ports"], strict=True))
    conf = {"mon_host": mons, "auth_client_required": "cephx" if src.get("user") else "none"}
    try:
        with (
            rados.Rados(rados_id=src.get("user") or None, conf=conf) as cluster,
            cluster.open_ioctx(src["pool"]) as ioctx,
            rbd.Image(ioctx, src["image"], read_only=True) as image,
        ):
            return int(image.size())
    except (rados.Error, rbd.Error) as exc:
        raise BackendError(f"source image {src['pool']}/{src['image']} at {mons}: {exc}") from None
