"""The generic host copy: the blueprint's fallback when no array can take a LUN over.

``host_copy`` reads one NBD export and writes another through this host with
libnbd. It is sparse-aware (holes and zero runs are not written and stay
unallocated on the target), can be throttled, reports progress and can resume
from a checkpoint file after an interruption.

Nothing here knows about Airflow; only the standard library and libnbd's
Python binding (which imports only with Debian's /usr/bin/python3, see
lab/verify.py) are used.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nbd

from include.backends.base import MiB, MigrationProgress, MigrationState
from include.backends.errors import BackendError
from include.backends.progress import RateMeter

ZERO_GRANULARITY = 64 * 1024  # zero runs are found in blocks of this size (a qcow2 cluster)
MAX_REQUEST = 1024 * MiB  # largest block-status / write-zeroes request sent at once
READ_AHEAD = 4  # chunks the reader thread may hold ahead of the writer


@dataclass(frozen=True)
class HostCopyResult:
    """What a finished copy did."""

    bytes_total: int
    bytes_written: int  # data written to target
    bytes_skipped: int  # holes / zero runs not written
    seconds: float
    resumed_from: int  # offset the copy started from (0 unless resumed from a checkpoint)


# ---- pure helpers -------------------------------------------------------------------------


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


def zero_runs(data: bytes, granularity: int = ZERO_GRANULARITY) -> list[tuple[int, int, bool]]:
    """Split ``data`` into maximal runs ``(start, length, is_zero)`` of ``granularity``-sized blocks.

    A block is zero when all its bytes are zero; neighbouring blocks of the
    same kind are merged. The runs cover ``data`` exactly, in order.
    """
    runs: list[tuple[int, int, bool]] = []
    zero = bytes(granularity)
    view = memoryview(data)  # compare blocks in place, without copying each one
    for start in range(0, len(data), granularity):
        block = view[start : start + granularity]
        is_zero = block == zero[: len(block)]
        if runs and runs[-1][2] == is_zero:
            prev_start, prev_len, _ = runs[-1]
            runs[-1] = (prev_start, prev_len + len(block), is_zero)
        else:
            runs.append((start, len(block), is_zero))
    return runs


class Pacer:
    """Sleep-based pacing to at most ``rate`` bytes per second (0 = unlimited).

    ``take(n)`` returns at once for the first request and then waits until
    the bytes taken before had their share of time. Idle time is not saved
    up as credit, so there are no bursts after a pause.
    """

    def __init__(
        self,
        rate: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError(f"speed must be >= 0 bytes/s, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    def take(self, n: int) -> None:
        if not self.rate or n <= 0:
            return
        now = self._clock()
        start = max(self._next, now)
        if start > now:
            self._sleep(start - now)
        self._next = start + n / self.rate


# ---- checkpoint file -------------------------------------------------------------------------


def _load_checkpoint(path: pathlib.Path, source_uri: str, target_uri: str, size: int) -> int:
    """Offset to resume from: 0 without a checkpoint; ValueError if it is for another copy."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return 0
    try:
        data = json.loads(raw)
        saved = (data["source_uri"], data["target_uri"], int(data["size"]))
        offset = int(data["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({exc}); remove it to start the copy over") from None
    if saved != (source_uri, target_uri, size):
        raise ValueError(
            f"checkpoint {path} belongs to another copy ({saved[0]} -> {saved[1]}, {saved[2]} bytes), "
            f"not {source_uri} -> {target_uri} ({size} bytes); remove it to start over"
        )
    if not 0 <= offset <= size:
        raise ValueError(f"checkpoint {path} holds offset {offset} outside 0..{size}")
    return offset


def _save_checkpoint(path: pathlib.Path, source_uri: str, target_uri: str, size: int, offset: int) -> None:
    """Replace the checkpoint atomically: write a temporary file, fsync it, rename it, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    body = {"source_uri": source_uri, "target_uri": target_uri, "size": size, "offset": offset}
    with open(tmp, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the copy ----------------------------------------------------------------------------


def _connect(uri: str, role: str) -> nbd.NBD:
    handle = nbd.NBD()
    handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    try:
        handle.connect_uri(uri)
    except nbd.Error as exc:
        raise BackendError(f"host copy cannot connect to the {role} {uri}: {exc}") from exc
    return handle


def _close(handle: nbd.NBD | None) -> None:
    if handle is None:
        return
    try:
        handle.shutdown()
    except nbd.Error:  # the connection is already gone
        pass


def _block_status(handle: nbd.NBD, offset: int, end: int) -> list[tuple[int, int, int]]:
    """One block-status call from ``offset``: ``(start, length, flags)`` extents, at least one, all before ``end``."""
    got: list[tuple[int, int, int]] = []

    def callback(metacontext: str, start: int, entries: list[int], err: int) -> int:
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(parse_extents(entries, start, end))
        return 0

    handle.block_status(min(end - offset, MAX_REQUEST), offset, callback)
    if not got or got[0][0] != offset:
        raise nbd.Error(f"the server's block status at offset {offset} described nothing", errno.EPROTO)
    return got


@dataclass(frozen=True)
class _Failure:
    where: str
    exc: BaseException


class _Reader(threading.Thread):
    """Walks the source from ``offset`` and reads its data ahead of the writer.

    Yields ``(offset, length, data)`` in order, with ``data`` None for a
    range the source reports as zero. libnbd releases the GIL while it waits,
    so reading the next chunk overlaps writing the previous one.
    """

    def __init__(self, src: nbd.NBD, size: int, offset: int, chunk: int) -> None:
        super().__init__(name="host-copy-reader", daemon=True)
        self.src = src
        self.size = size
        self.offset = offset
        self.chunk = chunk
        self.queue: queue.Queue[tuple[int, int, bytes | None] | _Failure | None] = queue.Queue(READ_AHEAD)
        self.stopping = threading.Event()

    def run(self) -> None:
        where = f"reading the block status of the source at offset {self.offset}"
        try:
            for start, length, is_zero in self._extents():
                pos, end = start, start + length
                while pos < end:
                    if is_zero:
                        n = min(end - pos, MAX_REQUEST)
                        item = (pos, n, None)
                    else:
                        n = min(end - pos, self.chunk)
                        where = f"reading the source at offset {pos}"
                        item = (pos, n, self.src.pread(n, pos))
                    if not self._put(item):
                        return
                    pos += n
            self._put(None)
        except BaseException as exc:  # handed to the writer, which raises it
            self._put(_Failure(where, exc))

    def _extents(self) -> Iterator[tuple[int, int, bool]]:
        if not self.src.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
            yield self.offset, self.size - self.offset, False
            return
        offset = self.offset
        while offset < self.size:
            for start, length, flags in _block_status(self.src, offset, self.size):
                yield start, length, bool(flags & nbd.STATE_ZERO)
                offset = start + length

    def _put(self, item: tuple[int, int, bytes | None] | _Failure | None) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def items(self) -> Iterator[tuple[int, int, bytes | None] | _Failure]:
        """What the reader found, in order, up to the end of the source."""
        while (item := self.queue.get()) is not None:
            yield item

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class _Writer:
    """The target side of one copy: writes data, zeroes skipped ranges, counts."""

    def __init__(self, dst: nbd.NBD) -> None:
        self.dst = dst
        self.has_status = dst.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        self.can_zero, self.can_flush = dst.can_zero(), dst.can_flush()  # fixed for the connection
        self.written = 0
        self.skipped = 0
        self.where = "checking the exports"  # what the copy was doing, for error messages

    def write(self, offset: int, data: bytes, pacer: Pacer) -> None:
        """Write the non-zero runs of ``data`` at ``offset``; skip the zero runs."""
        for start, run, is_zero in zero_runs(data):
            if is_zero:
                self.skip(offset + start, run)
            else:
                pacer.take(run)
                self.where = f"writing the target at offset {offset + start}"
                self.dst.pwrite(data[start : start + run], offset + start)
                self.written += run

    def skip(self, offset: int, length: int) -> None:
        """Leave ``[offset, offset+length)`` unwritten, zeroing (may-trim) what the target holds there."""
        self.skipped += length
        end = offset + length
        while offset < end:
            if self.has_status:
                self.where = f"reading the block status of the target at offset {offset}"
                extents = _block_status(self.dst, offset, end)
            else:
                extents = [(offset, end - offset, 0)]
            for start, ext_len, flags in extents:
                if not flags & nbd.STATE_ZERO:
                    self.zero(start, ext_len)
                offset = start + ext_len

    def zero(self, offset: int, length: int) -> None:
        self.where = f"zeroing the target at offset {offset}"
        end = offset + length
        while offset < end:
            if self.can_zero:
                n = min(end - offset, MAX_REQUEST)
                self.dst.zero(n, offset)  # no CMD_FLAG_NO_HOLE: the server may deallocate
            else:
                n = min(end - offset, 4 * MiB)
                self.dst.pwrite(bytes(n), offset)
            offset += n

    def flush(self) -> None:
        self.where = "flushing the target"
        if self.can_flush:
            self.dst.flush()


def _progress(
    offset: int, size: int, written: int, meter: RateMeter, state: MigrationState = MigrationState.COPYING
) -> MigrationProgress:
    return MigrationProgress(state, offset, size, meter.rate(), meter.eta(), bytes_written=written)


def host_copy(
    source_uri: str,
    target_uri: str,
    *,
    checkpoint: pathlib.Path | None = None,
    speed_bps: int = 0,
    chunk: int = 4 * 1024 * 1024,
    progress: Callable[[MigrationProgress], None] | None = None,
    progress_interval: float = 2.0,
    checkpoint_every: int = 64 * 1024 * 1024,
) -> HostCopyResult:
    """Copy the NBD export ``source_uri`` to the NBD export ``target_uri`` through this host.

    Contract:

    * The source is only read (never written, zeroed or trimmed). Both
      exports must have the same size: a smaller or a larger target is
      refused with ValueError before anything is written.
    * Sparse: extents the source reports as zero (``base:allocation``) are
      not read, and data that reads back as zero (in 64 KiB blocks) is not
      written. Such skipped ranges end up zero and, where the target server
      can, unallocated: the target's block status is checked there and
      whatever is not already zero is zeroed with may-trim semantics.
    * ``speed_bps`` > 0 caps the data bytes written per second (sleep-based
      pacing); skipped ranges are not throttled. 0 means unlimited.
    * ``progress`` is called with a MigrationProgress (``copying``, then
      ``done``) once at the start (with
      the offset a checkpoint resumes from), then at most every
      ``progress_interval`` seconds, and once at the end. An exception raised
      by it stops the copy and propagates unchanged.
    * With ``checkpoint``, a JSON file ``{source_uri, target_uri, size,
      offset}`` is replaced atomically every ``checkpoint_every`` bytes,
      always after a completed flush of the target, so everything before
      ``offset`` is durable there. A later call with the same checkpoint,
      source, target and size resumes at ``offset`` (``resumed_from``); a
      checkpoint for another copy (or an unreadable one) is refused with
      ValueError (remove the file to start over). On success the target is
      flushed and the checkpoint deleted. Without ``checkpoint`` the target
      is flushed only at the end.
    * libnbd failures are raised as ``BackendError`` naming source, target
      and what the copy was doing at which offset; the ``nbd.Error`` is
      chained as ``__cause__``.

    ``chunk`` is the largest read and write request (at most 64 MiB). One
    thread reads up to a few chunks ahead while the calling thread writes.
    """
    if not 0 < chunk <= 64 * MiB or chunk % 512:
        raise ValueError(f"chunk must be a multiple of 512 between 512 and 64 MiB, got {chunk}")
    if checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be > 0, got {checkpoint_every}")
    pacer = Pacer(speed_bps)
    began = time.monotonic()
    src = dst = None
    reader: _Reader | None = None
    writer: _Writer | None = None
    try:
        src = _connect(source_uri, "source")
        dst = _connect(target_uri, "target")
        writer = _Writer(dst)
        size, target_size = src.get_size(), dst.get_size()
        if target_size < size:
            raise ValueError(f"target {target_uri} has {target_size} bytes, smaller than the source's {size}")
        if target_size > size:
            raise ValueError(
                f"target {target_uri} has {target_size} bytes, larger than the source's {size}; "
                "refusing: the sizes must match"
            )
        if dst.is_read_only():
            raise ValueError(f"target {target_uri} is read-only")
        resumed_from = offset = _load_checkpoint(checkpoint, source_uri, target_uri, size) if checkpoint else 0
        meter = RateMeter(size)
        meter.add(time.monotonic(), offset)
        saved, last_report = offset, time.monotonic()
        if progress is not None:
            progress(_progress(offset, size, 0, meter))

        reader = _Reader(src, size, offset, chunk)
        reader.start()
        for item in reader.items():
            if isinstance(item, _Failure):
                writer.where = item.where
                raise item.exc
            start, n, data = item
            if data is None:
                writer.skip(start, n)
            else:
                writer.write(start, data, pacer)
            offset = start + n
            if checkpoint is not None and offset - saved >= checkpoint_every and offset < size:
                writer.flush()
                _save_checkpoint(checkpoint, source_uri, target_uri, size, offset)
                saved = offset
            now = time.monotonic()
            if now - last_report >= progress_interval:
                meter.add(now, offset)
                if progress is not None:
                    progress(_progress(offset, size, writer.written, meter))
                last_report = now
        writer.flush()
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
            _fsync_dir(checkpoint.parent)
        meter.add(time.monotonic(), offset)
        if progress is not None:
            progress(_progress(offset, size, writer.written, meter, MigrationState.DONE))
        return HostCopyResult(
            bytes_total=size,
            bytes_written=writer.written,
            bytes_skipped=writer.skipped,
            seconds=time.monotonic() - began,
            resumed_from=resumed_from,
        )
    except nbd.Error as exc:
        doing = writer.where if writer is not None else "checking the exports"
        raise BackendError(f"host copy {source_uri} -> {target_uri} failed {doing}: {exc}") from exc
    finally:
        if reader is not None:
            reader.stop()
        _close(src)
        _close(dst)


__all__ = ["HostCopyResult", "host_copy"]
