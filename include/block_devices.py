"""Opened volumes, as the host copy reads and writes them: one small interface over libnbd, librbd and a file.

``BlockDevice`` is what ``include.host_copy`` needs of either end of a copy:
its size, reads, writes, zeroing (may deallocate), flush, and where it can
say so, which ranges hold no data (``extents``). Each method raises
``DeviceError`` with the library's message; nothing here knows of Cinder or
Airflow. The libraries are imported when a device of their kind is opened:
libnbd's binding imports only with Debian's /usr/bin/python3, librbd's is
Debian's python3-rbd.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import io
import os
from collections.abc import Iterator
from typing import Any

from include.backends.base import MiB
from include.backends.errors import BackendError

MAX_REQUEST = 1024 * MiB  # largest block-status / zeroing request sent at once
Extent = tuple[int, int, bool]  # (start, length, is_zero)


class DeviceError(BackendError):
    """A read, write, flush or look at an opened volume failed (the library's words in the message)."""


class BlockDevice(abc.ABC):
    """One opened volume. ``name`` says which (messages, the copy's checkpoint); ``size`` in bytes."""

    name: str
    size: int
    read_only: bool = False
    errors: tuple[type[BaseException], ...] = (OSError,)  # what the device's library raises when it fails

    @contextlib.contextmanager
    def _doing(self, what: str) -> Iterator[None]:
        """A failure of the device's library while doing ``what`` becomes a DeviceError naming the device."""
        try:
            yield
        except DeviceError:
            raise
        except self.errors as exc:
            raise _fail(self.name, what, exc) from exc

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes: ...

    @abc.abstractmethod
    def write(self, offset: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read back as zeros, deallocating it where the device can."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Everything written so far is durable when this returns."""

    def extents(self, offset: int, end: int) -> list[Extent] | None:
        """``(start, length, is_zero)`` from ``offset`` on (at least one, none past ``end``), or None when the
        device cannot say what it holds (then everything is read)."""
        return None

    def close(self) -> None:
        return None


class DeviceFile(io.RawIOBase):
    """A ``BlockDevice`` as a binary file object, for a caller that reads or writes it in sequence: Cinder's own
    generic copy (``volume_utils.copy_volume`` between file objects, as with os-brick's RBD handles). ``flush``
    flushes the device; ``close`` flushes, then closes it."""

    def __init__(self, device: BlockDevice) -> None:
        super().__init__()
        self.device, self._pos = device, 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.device.read_only

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(min(len(buffer), self.device.size - self._pos), 0)
        if n:
            buffer[:n] = self.device.read(self._pos, n)
            self._pos += n
        return n

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self._pos + len(data) > self.device.size:
            raise DeviceError(f"{self.device.name}: a write of {len(data)} bytes at {self._pos} ends past its end")
        self.device.write(self._pos, data)
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.device.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if not self.closed and not self.device.read_only:
            self.device.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes first (IOBase), and is closed even when that fails
        finally:
            self.device.close()


def _fail(device: str, doing: str, exc: BaseException) -> DeviceError:
    return DeviceError(f"{device}: {doing} failed: {exc}")


# ---- NBD (libnbd) ---------------------------------------------------------------------------------------
def parse_extents(entries: list[int], offset: int, end: int) -> list[tuple[int, int, int]]:
    """Turn a block-status reply ``[length, flags, length, flags, ...]`` into ``(start, length, flags)``.

    The extents start at ``offset`` and are clipped to ``end`` (a server may
    describe more than was asked for). Extents of length 0 are dropped.
    """
    out = []
    pos = offset
    for i in range(0, len(entries) - 1, 2):
        if pos >= end:
            break
        length, flags = min(entries[i], end - pos), entries[i + 1]
        if length > 0:
            out.append((pos, length, flags))
            pos += length
    return out


class NbdDevice(BlockDevice):
    """An NBD export (``nbd://host:port/export``) through libnbd, with its base:allocation block status."""

    def __init__(self, uri: str, name: str | None = None) -> None:
        import nbd  # Debian's python3-libnbd

        self._nbd, self.errors = nbd, (nbd.Error,)
        self.name = name or uri
        self.handle = nbd.NBD()
        self.handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        with self._doing(f"connecting to {uri}"):
            self.handle.connect_uri(uri)
            self.size = self.handle.get_size()
            self.read_only = bool(self.handle.is_read_only())
            self.has_status = self.handle.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            self.can_zero, self.can_flush = self.handle.can_zero(), self.handle.can_flush()

    def read(self, offset: int, length: int) -> bytes:
        with self._doing(f"reading at offset {offset}"):
            return self.handle.pread(length, offset)

    def write(self, offset: int, data: bytes) -> None:
        with self._doing(f"writing at offset {offset}"):
            self.handle.pwrite(data, offset)

    def zero(self, offset: int, length: int) -> None:
        end = offset + length
        with self._doing(f"zeroing at offset {offset}"):
            while offset < end:
                if self.can_zero:
                    n = min(end - offset, MAX_REQUEST)
                    self.handle.zero(n, offset)  # no CMD_FLAG_NO_HOLE: the server may deallocate
                else:
                    n = min(end - offset, 4 * MiB)
                    self.handle.pwrite(bytes(n), offset)
                offset += n

    def flush(self) -> None:
        if self.can_flush:
            with self._doing("flushing"):
                self.handle.flush()

    def extents(self, offset: int, end: int) -> list[Extent] | None:
        if not self.has_status:
            return None
        got: list[tuple[int, int, int]] = []

        def callback(metacontext: str, start: int, entries: list[int], err: int) -> int:
            if metacontext == self._nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(parse_extents(entries, start, end))
            return 0

        with self._doing(f"reading the block status at offset {offset}"):
            self.handle.block_status(min(end - offset, MAX_REQUEST), offset, callback)
            if not got or got[0][0] != offset:
                raise self._nbd.Error(f"the server's block status at offset {offset} described nothing", errno.EPROTO)
        return [(start, length, bool(flags & self._nbd.STATE_ZERO)) for start, length, flags in got]

    def close(self) -> None:
        with contextlib.suppress(self._nbd.Error):  # the connection is already gone
            self.handle.shutdown()


# ---- RBD (librbd) ---------------------------------------------------------------------------------------
class RbdDevice(BlockDevice):
    """An RBD image opened through librbd (os-brick's RBD connector without a local attach gives one): its
    allocation comes from ``diff_iterate``, zeroing is ``write_zeroes``."""

    errors = (Exception,)  # rbd.Error and its kinds (librbd's errno as the class), imported by whoever opened it

    def __init__(self, image: Any, name: str) -> None:
        self.image = image
        self.name = name
        with self._doing("reading the size"):
            self.size = int(image.size())

    def read(self, offset: int, length: int) -> bytes:
        with self._doing(f"reading at offset {offset}"):
            return self.image.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        with self._doing(f"writing at offset {offset}"):
            written = self.image.write(data if isinstance(data, bytes) else bytes(data), offset)  # librbd: bytes only
            if written != len(data):
                raise OSError(errno.EIO, f"wrote {written} of {len(data)} bytes")

    def zero(self, offset: int, length: int) -> None:
        end = offset + length
        with self._doing(f"zeroing at offset {offset}"):
            while offset < end:
                n = min(end - offset, MAX_REQUEST)
                self.image.write_zeroes(offset, n)  # reads back zero; whole objects are deallocated
                offset += n

    def flush(self) -> None:
        with self._doing("flushing"):
            self.image.flush()

    def extents(self, offset: int, end: int) -> list[Extent] | None:
        stop = min(end, offset + MAX_REQUEST)
        data: list[tuple[int, int]] = []

        def callback(start: int, length: int, exists: bool) -> None:
            if exists:
                data.append((start, length))

        with self._doing(f"reading the allocation at offset {offset}"):
            self.image.diff_iterate(offset, stop - offset, None, callback)
        out: list[Extent] = []
        pos = offset
        for start, length in sorted(data):
            start, stop_at = max(start, pos), min(start + length, stop)
            if stop_at <= start:
                continue
            if start > pos:
                out.append((pos, start - pos, True))
            out.append((start, stop_at - start, False))
            pos = stop_at
        if pos < stop:
            out.append((pos, stop - pos, True))
        return out


# ---- a file or a block device node (iSCSI, FC, NVMe attached by os-brick) ---------------------------------------
class FileDevice(BlockDevice):
    """A path: a block device node that os-brick attached, or a plain file. Every byte is read (no allocation)."""

    def __init__(self, path: str, name: str | None = None, *, writable: bool = True) -> None:
        self.name = name or path
        self.read_only = not writable
        with self._doing(f"opening {path}"):
            self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def read(self, offset: int, length: int) -> bytes:
        with self._doing(f"reading at offset {offset}"):
            return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        with self._doing(f"writing at offset {offset}"):
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n

    def zero(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            n = min(end - offset, 4 * MiB)
            self.write(offset, bytes(n))
            offset += n

    def flush(self) -> None:
        with self._doing("flushing"):
            os.fsync(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


__all__ = ["BlockDevice", "DeviceError", "DeviceFile", "FileDevice", "NbdDevice", "RbdDevice", "parse_extents"]
