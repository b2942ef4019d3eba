"""Takeover on the reference array: a LUN copied in from another array while it serves.

A takeover has two modes:

* ``stream`` (the default): the source LUN becomes a read-only remote NBD
  node under a new local qcow2 overlay; the overlay is exported at once and
  ``block-stream`` copies the data into it. Client writes land on the target
  only; client reads of uncopied regions go through to the source (and are
  kept in the overlay by the stream's copy-on-read filter).
* ``mirror``: the export serves the remote node itself and an active mirror
  (``blockdev-mirror``, ``copy-mode: write-blocking``) copies it into a new
  local raw image, writing every client write to both; once in sync the
  array switches the export over to the local image. Until then the source
  stays current, so an abort loses nothing.

Here are the takeover API (start, abort, progress, pause/resume/speed), the
copy job and what the array's monitor does with it (flushes, retries, the
switch-over and the record of a finished copy). Images, nodes and exports are
``ReferenceArray``'s (reference.py); this class is mixed into it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from include.backends.base import COPY_MODES, MigrationState
from include.backends.errors import Conflict, InvalidRequest, NotFound
from include.backends.progress import RateMeter
from lab.arrays.apiserver import optional_int, require_name, require_size
from lab.arrays.images import create_image

log = logging.getLogger(__name__)

RESUME_RETRY = 2.0  # seconds between attempts to restart a copy or reopen a LUN whose source is down


class TakeoverMixin:
    """The takeover half of ``ReferenceArray``, which supplies what it uses.

    That is the ``BaseArray`` API (lock, inventory, lun, view), the node
    helpers (node, remote_node, image_path, _add_remote, _open_image, _flush,
    _job, ...) and the copy bookkeeping (active, meters, last_flush, last_resume).
    """

    # ---- takeover -------------------------------------------------------------------
    def take_over(self, body: dict[str, Any]) -> dict[str, Any]:
        name, size, pool = require_name(body), require_size(body), require_name(body, "pool")
        speed = optional_int(body, "speed_bps")
        mode = body.get("mode") or self.config.default_copy_mode
        if mode not in COPY_MODES:
            raise InvalidRequest(f"'mode' must be one of {', '.join(COPY_MODES)}")
        source = takeover_source(body.get("source"))
        if source["array"] == self.config.name:
            raise InvalidRequest("a LUN cannot be taken over from its own array; use a pool move")
        with self.lock:
            self.check_new_lun(name, pool, size)
            lun = self.new_record(name, pool, size)
            lun["format"] = "raw" if mode == "mirror" else "qcow2"
            lun["copy"] = {
                "mode": mode,
                "phase": "sync",
                "source": source,
                "speed_bps": self.config.default_speed_bps if speed is None else speed,
                "paused": False,
                "started": time.time(),
                "bytes_done": 0,
            }
            lun["server_export"] = True
            path = self.image_path(lun)
            create_image(path, size, lun["format"])
            try:
                self._add_remote(lun)
                remote_size = self._remote_size(lun)
                if remote_size != size:
                    raise InvalidRequest(f"source LUN is {remote_size} bytes, not {size}")
                self._add_image(lun, path, self.node(lun), backing=self._backing(lun))
                # recorded before it is exposed: a restart reopens it with its backing
                self.inventory.luns[name] = lun
                self.inventory.save()
                self.active.add(name)
                self._serve(lun)
            except BaseException:
                self._dp_delete(lun)
                if self.inventory.luns.pop(name, None) is not None:
                    self.inventory.save()
                raise
            return self.view(lun)

    def abort_takeover(self, name: str, *, only_if_source_current: bool = False) -> None:
        """Cancel a takeover whose copy has not finished and delete the target LUN.

        The source LUN is untouched (a stream never writes it; a mirror wrote
        every client write to it). Whatever clients wrote to the target only
        is lost, so the flow aborts only before the volume was attachable, or
        on an operator's explicit request. ``only_if_source_current``
        (``POST /v1/takeovers/<name>/abandon``): only a mirror that has not
        switched over, checked under the lock the switch-over takes too, so
        that the source has every write; Conflict otherwise.
        """
        with self.lock:
            lun = self.lun(name)
            if not lun.get("copy"):
                raise Conflict(f"LUN {name} has no takeover in progress (its copy has finished or never ran)")
            copy = lun["copy"]
            if only_if_source_current and copy["mode"] != "mirror":  # the same test as _mirroring's, said apart
                raise Conflict(
                    f"LUN {name} is copied in {copy['mode']} mode: writes since the takeover are on this array "
                    "only, the source is not current"
                )
            if only_if_source_current and copy["phase"] != "sync":
                raise Conflict(f"the mirror of LUN {name} has switched over: this array holds the current data")
            if lun.get("server_export") and lun["copy"]["mode"] == "stream":
                log.warning("aborting the takeover of %s: writes made on this array are dropped", name)
            self._dp_delete(lun)
            del self.inventory.luns[name]
            self.inventory.save()
            self.meters.pop(name, None)

    def _start_copy_job(self, lun: dict[str, Any]) -> None:
        copy = lun["copy"]
        args: dict[str, Any] = {"job-id": self.job_id(lun, "c"), "auto-dismiss": False}
        if copy["speed_bps"]:
            args["speed"] = copy["speed_bps"]
        if copy["mode"] == "stream":
            self.qmp.execute("block-stream", {**args, "device": self.node(lun), "on-error": "stop"})
        else:
            self.qmp.execute(
                "blockdev-mirror",
                {
                    **args,
                    "device": self.remote_node(lun),
                    "target": self.node(lun),
                    "sync": "full",
                    "copy-mode": "write-blocking",
                },
            )
        if copy["paused"]:
            self.qmp.execute("job-pause", {"id": self.job_id(lun, "c")})
        self.meters[lun["name"]] = RateMeter(lun["size"])
        self.last_flush[lun["name"]] = time.monotonic()

    def _copy_job(self, lun: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        jid = self.job_id(lun, "c")
        job = self._job(jid)
        block_job = next((j for j in self.qmp.execute("query-block-jobs") if j["device"] == jid), None)
        return job, block_job

    def migration(self, name: str) -> dict[str, Any]:
        with self.lock:
            lun = self.lun(name)
            copy = lun.get("copy")
            if not copy:
                done = lun.get("migration")
                if not done:
                    raise NotFound(f"LUN {name} has no migration on array {self.config.name}")
                return done
            return self._progress(lun)

    def _progress(self, lun: dict[str, Any]) -> dict[str, Any]:
        copy = lun["copy"]
        size = lun["size"]
        if lun["name"] not in self.active:
            state, message = MigrationState.WAITING_FOR_SOURCE, copy.get("error") or "source unreachable"
            done = copy.get("bytes_done", 0)
            return self._progress_json(state, done, size, 0.0, message)
        job, block_job = self._copy_job(lun)
        done = int(job["current-progress"]) if job else copy.get("bytes_done", 0)
        total = int(job["total-progress"]) if job and job["total-progress"] else size
        message = ""
        if copy["paused"]:
            state = MigrationState.PAUSED
        elif block_job and block_job.get("io-status", "ok") != "ok" or (job and job["status"] == "paused"):
            state, message = MigrationState.WAITING_FOR_SOURCE, "I/O error on the copy; retrying"
        else:
            state = MigrationState.COPYING
        meter = self.meters.get(lun["name"])
        rate = meter.rate() if meter else 0.0
        return self._progress_json(state, done, total, rate, message or copy.get("error", ""), _mirroring(copy))

    @staticmethod
    def _progress_json(state: MigrationState, done: int, total: int, rate: float, message: str,
                       abandonable: bool = False) -> dict[str, Any]:  # fmt: skip
        eta = (total - done) / rate if rate > 0 else None
        return {
            "state": state.value,
            "bytes_done": done,
            "bytes_total": total,
            "rate_bps": rate,
            "eta_seconds": eta,
            "message": message,
            "abandonable": abandonable,
        }

    def _copy_control(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            lun = self.lun(name)
            copy = lun.get("copy")
            if not copy:
                raise Conflict(f"LUN {name} has no copy running")
            jid = self.job_id(lun, "c")
            job = self._copy_job(lun)[0] if lun["name"] in self.active else None
            if job is not None and job["status"] == "concluded":
                raise Conflict(f"the copy of LUN {name} has just ended; look at its migration state")
            live = job is not None
            if action == "pause" and not copy["paused"]:
                if live:
                    self.qmp.execute("job-pause", {"id": jid})
                copy["paused"] = True
            elif action == "resume" and copy["paused"]:
                if live:
                    self.qmp.execute("job-resume", {"id": jid})
                copy["paused"] = False
            elif action == "speed":
                speed = optional_int(body, "speed_bps")
                if speed is None:
                    raise InvalidRequest("'speed_bps' is required (0 = unlimited)")
                if live:
                    self.qmp.execute("block-job-set-speed", {"device": jid, "speed": speed})
                copy["speed_bps"] = speed
            self.inventory.save()
            return self._progress(lun)

    # ---- what the monitor does with a copy ------------------------------------------
    def _watch_copy(self, lun: dict[str, Any], job: dict[str, Any] | None, now: float) -> None:
        name, copy = lun["name"], lun["copy"]
        if job is None:
            if now - self.last_resume.get(name, 0) >= RESUME_RETRY:
                self.last_resume[name] = now
                self._start_copy_job(lun)
            return
        self.meters.setdefault(name, RateMeter(lun["size"])).add(now, int(job["current-progress"]))
        if job["status"] == "concluded":
            if job.get("error"):
                copy["error"] = job["error"]
                log.warning("copy of %s stopped: %s; restarting it", name, job["error"])
                self.qmp.execute("job-dismiss", {"id": job["id"]})
                mirror = copy["mode"] == "mirror"
                if mirror:
                    copy["phase"] = "sync"  # no switch happened: the source is still authoritative
                self.inventory.save()
                if mirror:  # start over into an empty image
                    self._del_node(self.node(lun))
                    self._open_image(lun, empty=True)
            else:
                self._finish_copy(lun, job)
            return
        if job["status"] == "ready" and copy["phase"] == "sync":
            # in sync, and every new write goes to both: from here on the local image is authoritative
            copy["phase"] = "ready"
            self.inventory.save()
            self.qmp.execute("job-complete", {"id": job["id"]})
            return
        if job["status"] == "paused" and not copy["paused"] and now - self.last_resume.get(name, 0) >= RESUME_RETRY:
            # on-error=stop paused it (source unreachable): try again
            self.last_resume[name] = now
            self.qmp.execute("job-resume", {"id": job["id"]})
        if copy["mode"] == "stream" and now - self.last_flush.get(name, 0) >= self.config.flush_interval:
            self.last_flush[name] = now
            done = int(job["current-progress"])
            self._flush(self.node(lun))
            if done != copy.get("bytes_done"):
                copy["bytes_done"] = done
                copy.pop("error", None)
                self.inventory.save()

    def _finish_copy(self, lun: dict[str, Any], job: dict[str, Any]) -> None:
        """The copy ended (the mirror switched over): make it durable, then forget the remote LUN."""
        self._flush(self.node(lun))
        self._record_copy_done(lun)
        self.qmp.execute("job-dismiss", {"id": job["id"]})
        self._del_node(self.remote_node(lun))
        self.meters.pop(lun["name"], None)

    def _record_copy_done(self, lun: dict[str, Any]) -> None:
        copy = lun.pop("copy")
        elapsed = max(time.time() - copy["started"], 1e-6)
        lun["taken_over_from"] = copy["source"]["array"]
        lun["migration"] = self._progress_json(MigrationState.DONE, lun["size"], lun["size"], lun["size"] / elapsed, "")
        lun["migration"]["seconds"] = round(elapsed, 3)
        lun["migration"]["mode"] = copy["mode"]
        self.inventory.save()
        log.info("%s copy of %s done after %.1f s; remote LUN released", copy["mode"], lun["name"], elapsed)


def _mirroring(copy: dict[str, Any]) -> bool:
    """A mirror that has not switched over: the source has every write (``abort_takeover``'s condition)."""
    return copy.get("mode") == "mirror" and copy.get("phase") == "sync"


SOURCE_SHAPES = "'source' must be an object with host, port, export and array (an NBD export), or with type rbd, " \
    "pool, image, hosts, ports, user and array (an RBD image)"  # fmt: skip


def takeover_source(src: Any) -> dict[str, Any]:
    """A takeover's ``source`` as the array keeps it: an NBD export, or an RBD image (``type: rbd``)."""
    if not isinstance(src, dict):
        raise InvalidRequest(SOURCE_SHAPES)
    try:
        if src.get("type") == "rbd":
            hosts, ports = [str(h) for h in src["hosts"]], [int(p) for p in src["ports"]]
            if not hosts or len(hosts) != len(ports):
                raise ValueError("one port per monitor host")
            return {"type": "rbd", "pool": require_name(src, "pool"), "image": require_name(src, "image"),
                    "hosts": hosts, "ports": ports, "user": str(src.get("user") or ""),
                    "array": require_name(src, "array")}  # fmt: skip
        return {"host": str(src["host"]), "port": int(src["port"]), "export": str(src["export"]),
                "array": require_name(src, "array")}  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest(SOURCE_SHAPES) from None
