"""A verifying NBD client: random reads and writes checked against a model.

``DataModel`` knows what a LUN must hold: ``current`` is every write the
client made, ``durable`` is the content as of the last completed FLUSH, and
``pending`` lists the writes since then. After a crash of the server, each
512-byte sector must equal its durable content or one of the pending writes
at that offset: anything else is a lost flushed write or data that was never
written there.

libnbd's Python binding imports only with Debian's /usr/bin/python3 (the
project's virtualenv is made from it with system site packages).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import nbd

SECTOR = 512
# librados waits for a monitor or an OSD for ever by default, inside C, where neither pytest-timeout's signal nor
# a deadline of ours reaches: the lab's clients give up (an error) after this long instead
RADOS_TIMEOUTS = {name: "120" for name in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout")}
MiB = 1024 * 1024


class DataModel:
    def __init__(self, size: int, initial: bytes | None = None) -> None:
        self.size = size
        self.current = bytearray(initial if initial is not None else bytes(size))
        if len(self.current) != size:
            raise ValueError("initial content must be exactly size bytes")
        self.durable = bytearray(self.current)
        self.pending: list[tuple[int, bytes]] = []

    def write(self, offset: int, data: bytes) -> None:
        self.current[offset : offset + len(data)] = data
        self.pending.append((offset, data))

    def maybe_written(self, offset: int, data: bytes) -> None:
        """A write failed: it may or may not have reached the LUN, in part or whole."""
        self.pending.append((offset, data))

    def flushed(self) -> None:
        """A FLUSH completed: everything written so far must survive any crash."""
        for offset, data in self.pending:
            self.durable[offset : offset + len(data)] = data
        self.pending.clear()

    def mismatches(self, content: bytes, offset: int = 0) -> list[int]:
        """Offsets of the sectors in ``content`` (read at ``offset``) that differ from ``current``."""
        expect = self.current[offset : offset + len(content)]
        if expect == content:
            return []
        return [offset + i for i in range(0, len(content), SECTOR) if content[i : i + SECTOR] != expect[i : i + SECTOR]]

    def crash_violations(self, content: bytes) -> list[int]:
        """Sectors of a full read after a crash that hold neither durable nor pending data."""
        if len(content) != self.size:
            raise ValueError("pass the whole LUN")
        bad = []
        for chunk in range(0, self.size, MiB):
            if content[chunk : chunk + MiB] == self.durable[chunk : chunk + MiB]:
                continue
            for off in range(chunk, min(chunk + MiB, self.size), SECTOR):
                got = content[off : off + SECTOR]
                if got == self.durable[off : off + SECTOR]:
                    continue
                if not any(
                    o <= off and off + SECTOR <= o + len(d) and d[off - o : off - o + SECTOR] == got
                    for o, d in self.pending
                ):
                    bad.append(off)
        return bad

    def adopt(self, content: bytes) -> None:
        """After a crash check: what the LUN holds now is the new truth."""
        self.current = bytearray(content)
        self.durable = bytearray(content)
        self.pending.clear()


@dataclass
class IoStats:
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[int] = field(default_factory=list)


def connect(uri: str) -> nbd.NBD:
    handle = nbd.NBD()
    handle.connect_uri(uri)
    return handle


class RbdHandle:
    """An RBD image opened with librbd from a Cinder connection's data (``name`` pool/image, the monitors'
    ``hosts`` and ``ports``, ``auth_username`` when ``auth_enabled``), with a libnbd handle's ``pread`` /
    ``pwrite`` / ``flush`` / ``shutdown``: the random I/O and the checks here work on it as on an NBD export.
    (Debian's python3-rados and python3-rbd, imported here: only an RBD client needs them.)"""

    def __init__(self, data: dict[str, Any], timeout: float = 30.0) -> None:
        import rados
        import rbd

        user = data.get("auth_username") if data.get("auth_enabled") else None
        mons = ",".join(f"{h}:{p}" for h, p in zip(data["hosts"], data["ports"], strict=True))
        conf = {"mon_host": mons, "auth_client_required": "cephx" if user else "none", **RADOS_TIMEOUTS}
        self.cluster = rados.Rados(rados_id=user, conf=conf)
        self.cluster.connect(timeout=int(timeout))
        pool, name = str(data["name"]).split("/", 1)
        try:
            self.ioctx = self.cluster.open_ioctx(pool)
            self.image = rbd.Image(self.ioctx, name)
        except Exception:
            self.cluster.shutdown()
            raise

    def pread(self, length: int, offset: int) -> bytes:
        return self.image.read(offset, length)

    def pwrite(self, data: bytes, offset: int) -> None:
        self.image.write(data, offset)

    def flush(self) -> None:
        self.image.flush()

    def get_size(self) -> int:
        return int(self.image.size())

    def shutdown(self) -> None:
        self.image.close()
        self.ioctx.close()
        self.cluster.shutdown()


def open_connection(info: dict[str, Any]) -> Any:
    """A client's handle on a Cinder attachment's ``connection_info``: its NBD export (``uri``) or its RBD image
    (``name``, ``hosts``, ``ports``)."""
    if info.get("uri"):
        return connect(info["uri"])
    if info.get("hosts") and "/" in str(info.get("name") or ""):
        return RbdHandle(info)
    raise ValueError(f"no client here for a connection with {sorted(info)}")


def read_all(handle: nbd.NBD, size: int, chunk: int = 4 * MiB) -> bytes:
    return b"".join(handle.pread(min(chunk, size - off), off) for off in range(0, size, chunk))


def read_lun(array: Any, name: str, size: int) -> bytes:
    """The whole LUN ``name`` of a lab array (its adapter), read through an export made for it and removed after."""
    handle = connect(array.export_lun(name).uri)
    try:
        return read_all(handle, size)
    finally:
        handle.shutdown()
        array.unexport_lun(name)


def write_blocks(handle: Any, blocks: dict[int, bytes]) -> None:
    """Each block at its offset, then a flush (an NBD handle, or the lab Ceph's ``ImageHandle``)."""
    for offset, block in blocks.items():
        handle.pwrite(block, offset)
    handle.flush()


def write_all(handle: nbd.NBD, data: bytes, chunk: int = 4 * MiB) -> None:
    for off in range(0, len(data), chunk):
        handle.pwrite(data[off : off + chunk], off)
    handle.flush()


def random_io(
    handle: nbd.NBD,
    model: DataModel,
    ops: int,
    rng: random.Random,
    *,
    max_size: int = MiB,
    flush_every: int = 8,
    read_share: float = 0.5,
    stop_on_error: bool = True,
) -> IoStats:
    """``ops`` random reads and writes (512 B to ``max_size``), each read checked.

    A FLUSH follows every ``flush_every`` writes, as a filesystem's journal
    commit would; the model learns of it only once it completed.
    """
    stats = IoStats()
    for _ in range(ops):
        length = rng.randint(1, max_size // SECTOR) * SECTOR
        offset = rng.randrange(0, (model.size - length) // SECTOR + 1) * SECTOR
        try:
            if rng.random() < read_share:
                got = handle.pread(length, offset)
                stats.reads += 1
                stats.bytes_read += length
                stats.mismatches += model.mismatches(got, offset)
            else:
                data = rng.randbytes(length)
                try:
                    handle.pwrite(data, offset)
                except nbd.Error:
                    model.maybe_written(offset, data)
                    raise
                model.write(offset, data)
                stats.writes += 1
                stats.bytes_written += length
                if stats.writes % flush_every == 0:
                    handle.flush()
                    model.flushed()
                    stats.flushes += 1
        except nbd.Error as exc:
            stats.errors.append(str(exc))
            if stop_on_error:
                break
    return stats
