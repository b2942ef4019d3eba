"""The generic host copy: the blueprint's fallback when no driver can move or take a volume over.

``host_copy`` reads one opened volume and writes another through this host
(``include.block_devices``: NBD through libnbd, RBD through librbd, a device
node or file). It is sparse-aware (what the source says holds no data, and
zero runs, are not written and stay unallocated on the target), can be
throttled, reports progress and can resume from a checkpoint file after an
interruption.

Nothing here knows about Airflow or Cinder.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from include.backends.base import MiB, MigrationProgress, MigrationState
from include.backends.errors import BackendError
from include.backends.progress import RateMeter
from include.block_devices import MAX_REQUEST, BlockDevice, DeviceError, NbdDevice

ZERO_GRANULARITY = 64 * 1024  # zero runs are found in blocks of this size (a qcow2 cluster)
READ_AHEAD = 4  # chunks the reader thread may hold ahead of the writer


@dataclass(frozen=True)
class HostCopyResult:
    """What a finished copy did."""

    bytes_total: int
    bytes_written: int  # data written to target
    bytes_skipped: int  # holes / zero runs not written
    seconds: float
    resumed_from: int  # offset the copy started from (0 unless resumed from a checkpoint)
    complete: bool = True  # False: stopped at ``stop_at``; the checkpoint holds where the next call resumes
    offset: int = 0  # where the copy stopped (``bytes_total`` when complete)


# ---- pure helpers -------------------------------------------------------------------------


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


def _load_checkpoint(path: pathlib.Path, source: str, target: str, size: int) -> int:
    """Offset to resume from: 0 without a checkpoint; ValueError if it is for another copy."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return 0
    try:
        data = json.loads(raw)
        saved = (data["source"], data["target"], int(data["size"]))
        offset = int(data["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({exc}); remove it to start the copy over") from None
    if saved != (source, target, size):
        raise ValueError(
            f"checkpoint {path} belongs to another copy ({saved[0]} -> {saved[1]}, {saved[2]} bytes), "
            f"not {source} -> {target} ({size} bytes); remove it to start over"
        )
    if not 0 <= offset <= size:
        raise ValueError(f"checkpoint {path} holds offset {offset} outside 0..{size}")
    return offset


def _save_checkpoint(path: pathlib.Path, source: str, target: str, size: int, offset: int) -> None:
    """Replace the checkpoint atomically: write a temporary file, fsync it, rename it, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    body = {"source": source, "target": target, "size": size, "offset": offset}
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


@dataclass(frozen=True)
class _Failure:
    where: str
    exc: BaseException


class _Reader(threading.Thread):
    """Walks the source from ``offset`` and reads its data ahead of the writer.

    Yields ``(offset, length, data)`` in order, with ``data`` None for a
    range the source reports as zero. libnbd and librbd release the GIL while
    they wait, so reading the next chunk overlaps writing the previous one.
    """

    def __init__(self, src: BlockDevice, offset: int, chunk: int) -> None:
        super().__init__(name="host-copy-reader", daemon=True)
        self.src = src
        self.size = src.size
        self.offset = offset
        self.chunk = chunk
        self.queue: queue.Queue[tuple[int, int, bytes | None] | _Failure | None] = queue.Queue(READ_AHEAD)
        self.stopping = threading.Event()

    def run(self) -> None:
        where = f"reading the allocation of the source at offset {self.offset}"
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
                        item = (pos, n, self.src.read(pos, n))
                    if not self._put(item):
                        return
                    pos += n
            self._put(None)
        except BaseException as exc:  # handed to the writer, which raises it
            self._put(_Failure(where, exc))

    def _extents(self) -> Iterator[tuple[int, int, bool]]:
        offset = self.offset
        while offset < self.size:
            extents = self.src.extents(offset, self.size)
            if extents is None:  # the source cannot say: everything is data (zero runs are still found)
                yield offset, self.size - offset, False
                return
            for start, length, is_zero in extents:
                yield start, length, is_zero
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

    def __init__(self, dst: BlockDevice) -> None:
        self.dst = dst
        self.written = 0
        self.skipped = 0
        self.where = "opening the volumes"  # what the copy was doing, for error messages

    def write(self, offset: int, data: bytes, pacer: Pacer) -> None:
        """Write the non-zero runs of ``data`` at ``offset``; skip the zero runs."""
        for start, run, is_zero in zero_runs(data):
            if is_zero:
                self.skip(offset + start, run)
            else:
                pacer.take(run)
                self.where = f"writing the target at offset {offset + start}"
                self.dst.write(offset + start, data[start : start + run])
                self.written += run

    def skip(self, offset: int, length: int) -> None:
        """Leave ``[offset, offset+length)`` unwritten, zeroing (may-trim) what the target holds there."""
        self.skipped += length
        end = offset + length
        while offset < end:
            self.where = f"reading the allocation of the target at offset {offset}"
            extents = self.dst.extents(offset, end) or [(offset, end - offset, False)]
            for start, ext_len, is_zero in extents:
                if not is_zero:
                    self.where = f"zeroing the target at offset {start}"
                    self.dst.zero(start, ext_len)
                offset = start + ext_len

    def flush(self) -> None:
        self.where = "flushing the target"
        self.dst.flush()


def _progress(
    offset: int, size: int, written: int, meter: RateMeter, state: MigrationState = MigrationState.COPYING
) -> MigrationProgress:
    return MigrationProgress(state, offset, size, meter.rate(), meter.eta(), bytes_written=written)


def host_copy(
    source: BlockDevice | str,
    target: BlockDevice | str,
    *,
    checkpoint: pathlib.Path | None = None,
    speed_bps: int = 0,
    chunk: int = 4 * 1024 * 1024,
    progress: Callable[[MigrationProgress], None] | None = None,
    progress_interval: float = 2.0,
    checkpoint_every: int = 64 * 1024 * 1024,
    stop_at: float | None = None,
) -> HostCopyResult:
    """Copy the opened volume ``source`` to the opened volume ``target`` through this host.

    Contract:

    * ``source`` and ``target`` are ``BlockDevice``s the caller opened (and
      closes), or NBD URIs this opens and closes itself.
    * The source is only read (never written, zeroed or trimmed). Both
      volumes must have the same size: a smaller or a larger target is
      refused with ValueError before anything is written; so is a read-only one.
    * Sparse: ranges the source reports as holding no data (``extents``) are
      not read, and data that reads back as zero (in 64 KiB blocks) is not
      written. Such skipped ranges end up zero and, where the target can,
      unallocated: the target's allocation is checked there and whatever is
      not already zero is zeroed with may-trim semantics.
    * ``speed_bps`` > 0 caps the data bytes written per second (sleep-based
      pacing); skipped ranges are not throttled. 0 means unlimited.
    * ``progress`` is called with a MigrationProgress (``copying``, then
      ``done``) once at the start (with the offset a checkpoint resumes
      from), then at most every ``progress_interval`` seconds, and once at the
      end. An exception raised by it stops the copy and propagates unchanged.
    * With ``checkpoint``, a JSON file ``{source, target, size, offset}`` (the
      volumes' names) is replaced atomically every ``checkpoint_every`` bytes,
      always after a completed flush of the target, so everything before
      ``offset`` is durable there. A later call with the same checkpoint,
      volume names and size resumes at ``offset`` (``resumed_from``); a
      checkpoint for another copy (or an unreadable one) is refused with
      ValueError (remove the file to start over). On success the target is
      flushed and the checkpoint deleted. Without ``checkpoint`` the target
      is flushed only at the end.
    * With ``stop_at`` (a ``time.time()``; needs ``checkpoint``), a copy not
      done by then stops after the chunk it is writing: it flushes the target,
      saves the checkpoint at the offset reached and returns with
      ``complete`` False (no ``done`` progress). The next call with the same
      checkpoint goes on from there: a long copy runs in slices.
    * A failed read, write or flush is raised as ``BackendError`` naming both
      volumes and what the copy was doing at which offset; the device's error
      is chained as ``__cause__``.

    ``chunk`` is the largest read and write request (at most 64 MiB). One
    thread reads up to a few chunks ahead while the calling thread writes.
    """
    if not 0 < chunk <= 64 * MiB or chunk % 512:
        raise ValueError(f"chunk must be a multiple of 512 between 512 and 64 MiB, got {chunk}")
    if checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be > 0, got {checkpoint_every}")
    if stop_at is not None and checkpoint is None:
        raise ValueError("stop_at needs a checkpoint to resume from")
    pacer = Pacer(speed_bps)
    began = time.monotonic()
    opened: list[BlockDevice] = []
    reader: _Reader | None = None
    writer: _Writer | None = None
    names = f"{getattr(source, 'name', source)} -> {getattr(target, 'name', target)}"
    try:
        src, dst = (_opened(end, role, opened) for end, role in ((source, "source"), (target, "target")))
        writer = _Writer(dst)
        size, target_size = src.size, dst.size
        if target_size < size:
            raise ValueError(f"target {dst.name} has {target_size} bytes, smaller than the source's {size}")
        if target_size > size:
            raise ValueError(
                f"target {dst.name} has {target_size} bytes, larger than the source's {size}; "
                "refusing: the sizes must match"
            )
        if dst.read_only:
            raise ValueError(f"target {dst.name} is read-only")
        resumed_from = offset = _load_checkpoint(checkpoint, src.name, dst.name, size) if checkpoint else 0
        meter = RateMeter(size)
        meter.add(time.monotonic(), offset)
        saved, last_report = offset, time.monotonic()
        if progress is not None:
            progress(_progress(offset, size, 0, meter))

        reader = _Reader(src, offset, chunk)
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
                _save_checkpoint(checkpoint, src.name, dst.name, size, offset)
                saved = offset
            if stop_at is not None and offset < size and time.time() >= stop_at:
                writer.flush()
                _save_checkpoint(checkpoint, src.name, dst.name, size, offset)  # type: ignore[arg-type]
                return HostCopyResult(size, writer.written, writer.skipped, time.monotonic() - began, resumed_from,
                                      complete=False, offset=offset)  # fmt: skip
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
            offset=size,
        )
    except DeviceError as exc:
        doing = writer.where if writer is not None else "opening the volumes"
        raise BackendError(f"host copy {names} failed {doing}: {exc}") from exc
    finally:
        if reader is not None:
            reader.stop()
        for device in opened:
            device.close()


def _opened(end: BlockDevice | str, role: str, opened: list[BlockDevice]) -> BlockDevice:
    """``end`` itself, or the NBD export its URI names, opened here (and added to ``opened``, closed at the end)."""
    if not isinstance(end, str):
        return end
    try:
        device = NbdDevice(end)
    except DeviceError as exc:
        raise DeviceError(f"cannot open the {role}: {exc}") from exc
    opened.append(device)
    return device


__all__ = ["HostCopyResult", "host_copy"]
