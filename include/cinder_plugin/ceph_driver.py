"""Cinder's RBD driver plus the blueprint's target: RBD live migration between pools of one Ceph cluster.

Configure a Ceph backend of cinder.conf as for Cinder's own driver, naming this class instead::

    volume_driver = include.cinder_plugin.ceph_driver.AsyncRBDDriver
    rbd_pool = volumes-ssd
    rbd_ceph_conf = /etc/ceph/ceph.conf

Everything of Cinder's ``RBDDriver`` stays as it is (Cinder's own ``cinder
migrate`` still copies with ``image.copy()``), except that the cluster's
monitors, which it looks up (``ceph mon dump``) for every connection it
opens, are kept up to ``MONITORS_TTL_S`` and refreshed by the periodic stats
update (``MONITORS_REFRESH_S``). Added, for a volume on another
RBD backend of the same cluster (the source connection's monitors are this
cluster's):

* step 1 on the SOURCE (``migrate_volume``): when the caller will ask the
  destination to take the volume over next (``TAKEOVER_NEXT`` in ``host``)
  and the destination offers it, not moved: the live migration below keeps
  the volume usable, Cinder's copy would not;
* step 2 on the TARGET (``migrate_volume_target``): ``rbd migration prepare``
  from the source's pool into this backend's pool, its ``execute`` handed to
  the Ceph manager's task queue (``rbd task add migration execute``): the
  image serves reads (through to the source for what is not copied yet) and
  writes at once, so the answer is ``(moved, async)``;
* ``complete_migration_target``: the migration's state and percent; a
  prepared or executing migration whose manager task is gone (a manager
  restarted) is queued again (an interrupted execute runs again, copied
  objects cost nothing); once executed, ``rbd migration commit`` (the source
  image goes) and DONE;
* ``abandon_migration_target`` / ``abort_migration_target``: the manager's task
  cancelled, then ``rbd migration abort``: Ceph copies the writes made on the
  destination back into the source image and removes the destination, so the
  source has every write.

Not offered (no such method): pause, resume and speed. The manager's execute
has no throttle, and a cancelled task goes on until its current pass ends
(measured on Ceph 16.2: re-adding it at once returned the same task, still
copying), so neither a pause nor a speed would be honoured.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import eventlet
from cinder import exception
from cinder.volume.drivers import rbd as cinder_rbd
from oslo_log import log as logging

from include.backends.base import GiB, MigrationProgress, MigrationState
from include.backends.target_driver import (
    NOT_MOVED,
    TAKEOVER_INITIATOR,
    TAKEOVER_NEXT,
    AsyncMigrationTarget,
    TargetResult,
)
from include.cinder_plugin.names import ASYNC_TARGET_CAPABILITY, ASYNC_TARGET_SOURCES

LOG = logging.getLogger(__name__)

PERCENT = re.compile(r"(\d+)% complete")
CANCEL_WAIT_S = 60.0  # a cancelled manager task ends its current pass before the migration can be aborted
CANCEL_POLL_S = 0.5
# a manager command waits for a manager, however long none is up (librados' own timeout does not bound it): the
# ``ceph`` command is run, and killed after this long
MGR_TIMEOUT_S = 5.0  # under the 10 s a look at the copy is given (include/cinder_plugin/takeover.py)
TIMED_OUT = 124  # coreutils timeout's exit status when it killed the command
# this cluster's monitors (``ceph mon dump``, a command of its own: a few tenths of a second) are kept this long at
# most; the periodic stats update looks them up again when they are older than MONITORS_REFRESH_S, and so does a
# takeover whose source's monitors are none of them
MONITORS_TTL_S, MONITORS_REFRESH_S = 300.0, 60.0


class ManagerUnavailable(exception.VolumeBackendAPIException):
    message = "the Ceph manager did not answer: %(data)s"


class AsyncRBDDriver(cinder_rbd.RBDDriver, AsyncMigrationTarget):
    """Cinder's ``RBDDriver`` that also takes a volume of another RBD backend of its cluster over (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_look: dict[str, tuple[float, int]] = {}  # volume id -> (when, bytes done): the copy's rate
        self._monitors: tuple[float, list[str], list[str]] | None = None  # (when looked up, hosts, ports)

    # ---- what it is ----------------------------------------------------------------
    @property
    def _backend(self) -> str:
        return self.configuration.safe_get("volume_backend_name") or self.configuration.config_group or "rbd"

    def _update_volume_stats(self) -> None:
        super()._update_volume_stats()
        self._stats.update({ASYNC_TARGET_CAPABILITY: True, ASYNC_TARGET_SOURCES: ["rbd"]})  # of this cluster
        try:  # kept warm here, so that neither a connection nor a takeover waits for the lookup
            if self._monitors_older_than(MONITORS_REFRESH_S):
                self._look_up_monitors()
        except Exception as exc:  # the stats stand without it; the next connection looks them up
            LOG.warning("%s: this cluster's monitors not looked up: %s", self._backend, exc)

    def _get_mon_addrs(self) -> tuple[list[str], list[str]]:
        """Cinder's (``ceph mon dump``, run for every connection it opens, a few tenths of a second each), kept
        up to ``MONITORS_TTL_S``: the hosts and ports of this cluster's monitors."""
        if self._monitors_older_than(MONITORS_TTL_S):
            return self._look_up_monitors()
        _, hosts, ports = self._monitors  # type: ignore[misc]  # kept: not older than the TTL
        return list(hosts), list(ports)

    def _monitors_older_than(self, seconds: float) -> bool:
        """None kept, or looked up more than ``seconds`` ago."""
        return self._monitors is None or time.monotonic() - self._monitors[0] > seconds

    def _look_up_monitors(self) -> tuple[list[str], list[str]]:
        hosts, ports = super()._get_mon_addrs()
        self._monitors = (time.monotonic(), hosts, ports)
        return list(hosts), list(ports)

    # ---- step 1, on the source ---------------------------------------------------------
    def migrate_volume(self, context: Any, volume: Any, host: dict[str, Any]) -> tuple[bool, Any]:
        """Cinder's, except when the blueprint's caller asks the destination to take the volume over next
        (``host[TAKEOVER_NEXT]``) and it is an RBD backend that can: then ``(False, None)``, nothing changed."""
        caps = host.get("capabilities") or {}
        rbd_target = caps.get(ASYNC_TARGET_CAPABILITY) and caps.get("storage_protocol") == self.STORAGE_PROTOCOL
        if host.get(TAKEOVER_NEXT) and rbd_target:
            LOG.info("volume %s: not copied by Cinder's RBD driver; %s takes it over by RBD live migration",
                     volume.id, host["host"])  # fmt: skip
            return False, None
        return super().migrate_volume(context, volume, host)

    # ---- step 2, on the target ---------------------------------------------------------
    def takeover_connector(self) -> dict[str, Any]:
        return {"initiator": f"rbd:{self._backend}", "host": self._backend, "multipath": False,
                TAKEOVER_INITIATOR: self._backend}  # fmt: skip

    def migrate_volume_target(
        self,
        context: Any,
        volume: Any,
        source_connection: dict[str, Any],
        host: dict[str, Any],
        *,
        speed_bps: int | None = None,
        mode: str | None = None,
    ) -> TargetResult:
        """Take over an RBD image of another pool of this cluster by RBD live migration (module doc); any other
        source (another protocol, another cluster, this very pool): not moved, nothing changed. ``speed_bps``
        and ``mode`` are not honoured (the manager's execute has no throttle) and are logged as such."""
        source = self._rbd_source(volume, source_connection)
        if source is None:
            return NOT_MOVED
        src_pool, src_image = source
        if speed_bps or mode:
            LOG.warning("volume %s: RBD live migration has no speed or mode; asked %s B/s, mode %s: not honoured",
                        volume.id, speed_bps, mode)  # fmt: skip
        pool = self.configuration.rbd_pool
        with cinder_rbd.RADOSClient(self, pool) as dst:  # one connection, both pools: one cluster
            status = self._status(dst, volume.name)
            if status is None:
                src_ioctx = dst.cluster.open_ioctx(src_pool)
                try:
                    self.RBDProxy().migration_prepare(src_ioctx, src_image, dst.ioctx, volume.name)
                finally:
                    src_ioctx.close()
                LOG.info("volume %s: RBD live migration prepared, %s/%s -> %s/%s", volume.id, src_pool, src_image,
                         pool, volume.name)  # fmt: skip
                # the first look's rate counts from here: with a rate, the copy has an ETA, and the DAG's wait
                # looks again after a quarter of it (without one, only after its longest pause, 30 s)
                self._last_look[volume.id] = (time.monotonic(), 0)
            elif status.get("source_image_name") != src_image:
                other = status.get("source_image_name")
                raise exception.InvalidVolume(reason=f"{pool}/{volume.name} migrates from {other}, not {src_image}")
        eventlet.spawn_n(self._queue_execute, volume.name)  # attachable now; the copy starts when the manager has it
        return TargetResult(True, True, {})

    def _rbd_source(self, volume: Any, connection: dict[str, Any]) -> tuple[str, str] | None:
        """The source's pool and image when this backend can take it over, else None (said in the log)."""
        data = connection.get("data") or {}
        kind = connection.get("driver_volume_type")
        if kind != "rbd" or "/" not in str(data.get("name") or ""):
            LOG.info("%s takes no %s volume over (volume %s)", self._backend, kind, volume.id)
            return None
        src_pool, src_image = str(data["name"]).split("/", 1)
        if src_pool == self.configuration.rbd_pool:
            LOG.info("volume %s is in pool %s already: nothing to take over", volume.id, src_pool)
            return None
        theirs = set(zip(map(str, data.get("hosts") or []), map(str, data.get("ports") or []), strict=False))
        if not self._of_this_cluster(theirs):
            LOG.info("volume %s is on another Ceph cluster (monitors %s): RBD live migration moves within one",
                     volume.id, sorted(theirs))  # fmt: skip
            return None
        return src_pool, src_image

    def _of_this_cluster(self, monitors: set[tuple[str, str]]) -> bool:
        """Whether any of ``monitors`` {(host, port)} is this cluster's: by the monitors kept
        (``_get_mon_addrs``), and when none of them matches, by one lookup now (they may have changed)."""
        looks_up = self._monitors_older_than(MONITORS_TTL_S)
        if monitors & set(zip(*self._get_mon_addrs(), strict=False)):
            return True
        return not looks_up and bool(monitors & set(zip(*self._look_up_monitors(), strict=False)))

    def _status(self, client: Any, name: str) -> dict[str, Any] | None:
        """The image's live migration as librbd reports it; None when it has none (or there is no such image)."""
        try:
            return self.RBDProxy().migration_status(client.ioctx, name)
        except (self.rbd.InvalidArgument, self.rbd.ImageNotFound):
            return None

    def _committed(self, client: Any, name: str) -> bool:
        """An image that migrates not (``_status`` None) but is in this pool: its migration was committed, it is
        plain and complete here."""
        return name in self.RBDProxy().list(client.ioctx)

    def _mgr(self, *command: str) -> str:
        """One command of the Ceph manager's rbd_support module (``ceph rbd task ...``), its JSON output.
        ManagerUnavailable when no manager answers within ``MGR_TIMEOUT_S``; VolumeBackendAPIException when it
        refuses."""
        # coreutils' timeout, not subprocess's: under eventlet, the TimeoutExpired raised is not the one named
        cmd = ["timeout", f"{MGR_TIMEOUT_S:.0f}", "ceph", *command, "--format=json", *self._ceph_args()]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode == TIMED_OUT:
            raise ManagerUnavailable(data=f"ceph {' '.join(command)}: no answer in {MGR_TIMEOUT_S:.0f} s")
        if done.returncode:
            raise exception.VolumeBackendAPIException(data=f"ceph {' '.join(command)}: {done.stderr.strip()[-300:]}")
        return done.stdout

    def _queue_execute(self, name: str) -> str:
        """The migration's execute into the manager's task queue (idempotent: an equal task is answered); what
        went wrong, or "" (a migration stays usable without it: a later look queues it again)."""
        try:
            self._mgr("rbd", "task", "add", "migration", "execute", f"{self.configuration.rbd_pool}/{name}")
        except exception.VolumeBackendAPIException as exc:
            LOG.warning("the copy of %s is not queued in the Ceph manager (a later look asks again): %s", name, exc)
            return str(exc.msg)
        return ""

    def _tasks_of(self, name: str) -> list[dict[str, Any]]:
        tasks = json.loads(self._mgr("rbd", "task", "list") or "[]")
        return [t for t in tasks if (t.get("refs") or {}).get("pool_name") == self.configuration.rbd_pool
                and (t.get("refs") or {}).get("image_name") == name]  # fmt: skip

    # ---- the background copy -------------------------------------------------------------
    def complete_migration_target(self, context: Any, volume: Any) -> MigrationProgress:
        total = volume.size * GiB
        with cinder_rbd.RADOSClient(self, self.configuration.rbd_pool) as dst:
            status = self._status(dst, volume.name)
            if status is None:
                if self._committed(dst, volume.name):
                    return self._look(volume, MigrationState.DONE, total, total)
                return self._look(volume, MigrationState.FAILED, 0, total,
                                  f"no image {volume.name} in pool {self.configuration.rbd_pool}")  # fmt: skip
            state = status.get("state")
            if state == self.rbd.RBD_IMAGE_MIGRATION_STATE_EXECUTED:
                self.RBDProxy().migration_commit(dst.ioctx, volume.name)
                LOG.info("volume %s: RBD live migration committed, its source image removed", volume.id)
                return self._look(volume, MigrationState.DONE, total, total)
            described = str(status.get("state_description") or "")
            if state == self.rbd.RBD_IMAGE_MIGRATION_STATE_ABORTING:
                return self._look(volume, MigrationState.FAILED, 0, total, "the migration is being aborted")
            # prepared, executing, or an execute that failed: queued again (idempotent; a vanished task comes back)
            unqueued = self._queue_execute(volume.name)
            found = PERCENT.search(described)
            done = total * int(found.group(1)) // 100 if found else 0
            failed = state == self.rbd.RBD_IMAGE_MIGRATION_STATE_ERROR
            message = "; ".join(filter(None, [f"execute failed, queued again: {described}" if failed else "",
                                              unqueued]))  # fmt: skip
            return self._look(volume, MigrationState.COPYING, done, total, message, abandonable=True)

    def _look(self, volume: Any, state: MigrationState, done: int, total: int, message: str = "",
              abandonable: bool = False) -> MigrationProgress:  # fmt: skip
        """The progress, with the rate since this service's last look at the same copy."""
        now = time.monotonic()
        then, before = self._last_look.get(volume.id, (now, done))
        rate = (done - before) / (now - then) if now > then and done >= before else 0.0
        if state.terminal:
            self._last_look.pop(volume.id, None)
        else:
            self._last_look[volume.id] = (now, done)
        eta = (total - done) / rate if rate > 0 else None
        return MigrationProgress(state, done, total, rate, eta, message, abandonable=abandonable)

    def abandon_migration_target(self, context: Any, volume: Any) -> None:
        """Give the live migration up: the manager's task cancelled, then ``rbd migration abort`` (Ceph writes
        what the destination got back into the source image and removes the destination). InvalidVolume when it
        was committed already (the source is gone), nothing changed; a migration aborted already: nothing to do."""
        with cinder_rbd.RADOSClient(self, self.configuration.rbd_pool) as dst:
            if self._status(dst, volume.name) is None:
                if self._committed(dst, volume.name):
                    raise exception.InvalidVolume(reason=f"the migration of {volume.name} was committed: its source "
                                                         "is gone")  # fmt: skip
                LOG.info("volume %s: no RBD live migration to abort", volume.id)
                return
            deadline = time.monotonic() + CANCEL_WAIT_S
            while True:
                try:
                    tasks = self._tasks_of(volume.name)
                except ManagerUnavailable:  # no manager, no execute running: the abort may go ahead
                    tasks = []
                for task in tasks:
                    if not task.get("canceled"):
                        self._mgr("rbd", "task", "cancel", task["id"])
                if not tasks:
                    try:
                        self.RBDProxy().migration_abort(dst.ioctx, volume.name)
                        break
                    except self.rbd.ImageBusy:  # the execute's last pass still holds it
                        pass
                if time.monotonic() >= deadline:
                    busy = f"the migration of {volume.name} still executes after {CANCEL_WAIT_S:.0f} s"
                    raise exception.VolumeBackendAPIException(data=busy)
                time.sleep(CANCEL_POLL_S)
        self._last_look.pop(volume.id, None)
        LOG.warning("volume %s: RBD live migration aborted, every write is in its source image", volume.id)

    def abort_migration_target(self, context: Any, volume: Any) -> None:
        """Before the volume was attachable: the same as abandoning it (the source image is whole again)."""
        try:
            self.abandon_migration_target(context, volume)
        except exception.InvalidVolume:
            LOG.info("volume %s: its migration was committed; nothing to abort", volume.id)
