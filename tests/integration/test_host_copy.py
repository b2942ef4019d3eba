"""The generic host copy between lab arrays: gamma (nbdkit) and alpha (qemu-storage-daemon)."""

from __future__ import annotations

import json
import os
import time
import uuid

import nbd
import pytest

from include.backends.base import MiB, MigrationProgress, MigrationState
from include.backends.errors import BackendError
from include.block_devices import DeviceError
from include.host_copy import host_copy
from lab import verify

pytestmark = pytest.mark.integration

SIZE = 64 * MiB


class Interrupted(Exception):
    """Raised by a progress callback to stop a copy midway."""


def data_bytes(uri: str) -> int:
    """Bytes the export reports as allocated (base:allocation extents without the HOLE flag)."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    try:
        size, offset, total = h.get_size(), 0, 0
        while offset < size:
            extents: list[int] = []

            def callback(metacontext, start, entries, err, extents=extents):
                if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                    extents.extend(entries)
                return 0

            h.block_status(min(size - offset, 1024 * MiB), offset, callback)
            for i in range(0, len(extents), 2):
                length = min(extents[i], size - offset)
                if not extents[i + 1] & nbd.STATE_HOLE:
                    total += length
                offset += length
        return total
    finally:
        h.shutdown()


def nonzero_bytes(data: bytes, block: int = 64 * 1024) -> int:
    zero = bytes(block)
    return sum(block for off in range(0, len(data), block) if data[off : off + block] != zero)


def read_uri(uri: str, size: int) -> bytes:
    h = verify.connect(uri)
    try:
        return verify.read_all(h, size)
    finally:
        h.shutdown()


@pytest.fixture
def target_lun(lab):
    """Create an empty LUN and export it, returning (name, uri); unexports and deletes them afterwards."""
    made = []

    def make(array: str, size: int = SIZE, *, pool: str = "pool1") -> tuple[str, str]:
        backend = lab.backend(array)
        name = f"target-{uuid.uuid4()}"
        backend.create_lun(name, size, pool)
        made.append((backend, name))
        return name, backend.export_lun(name).uri

    yield make
    for backend, name in made:
        try:
            backend.unexport_lun(name)
        finally:
            backend.delete_lun(name)


@pytest.fixture
def source_lun(lab, make_lun, lun_name):
    """A 64 MiB pattern LUN (every 4th MiB zero) on ``array``, exported; returns (uri, content)."""

    def make(array: str, seed: int = 1) -> tuple[str, bytes]:
        data = make_lun(array, lun_name, SIZE, seed=seed)
        return lab.backend(array).export_lun(lun_name).uri, data

    yield make
    for array in ("alpha", "gamma"):
        try:
            lab.backend(array).unexport_lun(lun_name)
        except Exception:  # not made on that array
            pass


@pytest.mark.parametrize(("source", "target"), [("gamma", "alpha"), ("alpha", "gamma")])
def test_copy_is_exact_and_sparse(source_lun, target_lun, source, target):
    src_uri, data = source_lun(source, seed=3)
    _, dst_uri = target_lun(target)
    reports: list[MigrationProgress] = []

    result = host_copy(src_uri, dst_uri, progress=reports.append, progress_interval=0.01)

    assert read_uri(dst_uri, SIZE) == data
    expected = nonzero_bytes(data)  # 48 MiB: make_lun leaves every 4th MiB zero
    assert result.bytes_total == SIZE
    assert result.resumed_from == 0
    assert result.bytes_written == expected
    assert result.bytes_skipped == SIZE - expected > 0
    # the zero MiBs were written to the source (make_lun writes 4 MiB blocks) but not to the target
    assert data_bytes(dst_uri) <= expected + MiB
    assert data_bytes(dst_uri) < 0.8 * SIZE
    assert reports, "no progress report"
    last = reports[-1]
    assert (last.bytes_done, last.bytes_total, last.bytes_written) == (SIZE, SIZE, result.bytes_written)
    assert last.state is MigrationState.DONE and {r.state for r in reports[:-1]} <= {MigrationState.COPYING}
    assert [r.bytes_done for r in reports] == sorted(r.bytes_done for r in reports)


def test_resume_from_checkpoint(tmp_path, source_lun, target_lun):
    src_uri, data = source_lun("gamma", seed=4)
    _, dst_uri = target_lun("alpha")
    checkpoint = tmp_path / "copy.json"

    def interrupt(p: MigrationProgress) -> None:
        if p.bytes_done >= 32 * MiB:
            raise Interrupted

    with pytest.raises(Interrupted):
        host_copy(
            src_uri,
            dst_uri,
            checkpoint=checkpoint,
            speed_bps=64 * MiB,
            checkpoint_every=8 * MiB,
            progress=interrupt,
            progress_interval=0.05,
        )
    saved = json.loads(checkpoint.read_text())
    assert saved == {"source": src_uri, "target": dst_uri, "size": SIZE, "offset": saved["offset"]}
    assert 8 * MiB <= saved["offset"] < SIZE
    # everything before the checkpoint offset is on the target already
    assert read_uri(dst_uri, saved["offset"]) == data[: saved["offset"]]
    # garbage past the checkpoint in a range that is zero on the source (MiB 60): must end up zero and unallocated
    h = verify.connect(dst_uri)
    h.pwrite(os.urandom(MiB), 60 * MiB)
    h.flush()
    h.shutdown()

    result = host_copy(src_uri, dst_uri, checkpoint=checkpoint, checkpoint_every=8 * MiB)

    assert result.resumed_from == saved["offset"]
    assert read_uri(dst_uri, SIZE) == data
    assert result.bytes_written == nonzero_bytes(data[saved["offset"] :])
    assert result.bytes_written < nonzero_bytes(data)
    assert result.bytes_written + result.bytes_skipped == SIZE - saved["offset"]
    assert not checkpoint.exists()
    assert data_bytes(dst_uri) <= nonzero_bytes(data) + MiB


def test_mismatched_checkpoint_is_refused(tmp_path, source_lun, target_lun):
    src_uri, _ = source_lun("gamma")
    _, dst_uri = target_lun("alpha")
    checkpoint = tmp_path / "copy.json"
    other = {"source": "nbd://127.0.0.1:1/other", "target": dst_uri, "size": SIZE, "offset": 16 * MiB}
    checkpoint.write_text(json.dumps(other))

    with pytest.raises(ValueError, match="another copy"):
        host_copy(src_uri, dst_uri, checkpoint=checkpoint)

    assert json.loads(checkpoint.read_text()) == other
    assert data_bytes(dst_uri) == 0
    assert not any(read_uri(dst_uri, SIZE))


@pytest.mark.parametrize(("target_size", "word"), [(SIZE - MiB, "smaller"), (SIZE + MiB, "larger")])
def test_size_mismatch_is_refused_before_writing(tmp_path, source_lun, target_lun, target_size, word):
    src_uri, _ = source_lun("gamma")
    _, dst_uri = target_lun("alpha", target_size)
    checkpoint = tmp_path / "copy.json"

    with pytest.raises(ValueError, match=word):
        host_copy(src_uri, dst_uri, checkpoint=checkpoint)

    assert data_bytes(dst_uri) == 0
    assert not any(read_uri(dst_uri, target_size))
    assert not checkpoint.exists()


def test_throttle(lab, lun_name, target_lun):
    backend = lab.backend("gamma")
    backend.create_lun(lun_name, SIZE, "pool1")
    data = os.urandom(SIZE)
    src_uri = backend.export_lun(lun_name).uri
    try:
        h = verify.connect(src_uri)
        verify.write_all(h, data)
        h.shutdown()
        _, dst_uri = target_lun("alpha")

        result = host_copy(src_uri, dst_uri, speed_bps=32 * MiB)

        assert result.bytes_written == SIZE
        assert result.seconds >= 1.5  # 64 MiB at 32 MiB/s: about 2 s
        assert read_uri(dst_uri, SIZE) == data
    finally:
        backend.unexport_lun(lun_name)
        backend.delete_lun(lun_name)


def test_unknown_source_export_is_a_backend_error(lab, target_lun):
    _, dst_uri = target_lun("alpha")
    port = lab.config("gamma").nbd_port
    with pytest.raises(BackendError, match="cannot open the source"):
        host_copy(f"nbd://127.0.0.1:{port}/no-such-lun", dst_uri)


def test_target_lost_midway_names_target_and_offset(lab, source_lun, target_lun):
    src_uri, _ = source_lun("gamma")
    alpha = lab.backend("alpha")
    name, dst_uri = target_lun("alpha")

    def unexport(p: MigrationProgress) -> None:
        if p.bytes_done >= 16 * MiB:
            alpha.unexport_lun(name)  # drops the export hard: the copy's connection breaks

    with pytest.raises(BackendError, match=r"-> nbd://.*failed (writing|reading|flushing|zeroing).*target") as info:
        host_copy(src_uri, dst_uri, speed_bps=64 * MiB, progress=unexport, progress_interval=0.05)
    assert isinstance(info.value.__cause__, DeviceError)  # the target's: its libnbd error chained below
    assert isinstance(info.value.__cause__.__cause__, nbd.Error)


def test_a_copy_in_slices_stops_cleanly_at_stop_at_and_the_next_slice_goes_on(tmp_path, source_lun, target_lun):
    """``stop_at`` ends a slice after the chunk in flight, flushed, with the checkpoint at the offset reached (not
    the last ``checkpoint_every`` mark): nothing copied is copied again, and the slices add up to the source."""
    src_uri, data = source_lun("gamma", seed=5)
    _, dst_uri = target_lun("alpha")
    checkpoint = tmp_path / "copy.json"
    slices, offsets = [], [0]
    for _ in range(64):  # 16 MiB/s in 4 MiB chunks, a quarter second per slice: a few chunks each
        result = host_copy(src_uri, dst_uri, checkpoint=checkpoint, speed_bps=16 * MiB, checkpoint_every=SIZE,
                           stop_at=time.time() + 0.25)  # fmt: skip
        slices.append(result)
        assert result.resumed_from == offsets[-1]
        offsets.append(result.offset)
        if result.complete:
            break
        assert json.loads(checkpoint.read_text())["offset"] == result.offset  # saved where it stopped
        assert read_uri(dst_uri, result.offset) == data[: result.offset]  # and flushed up to there
    assert slices[-1].complete and offsets[-1] == SIZE and not checkpoint.exists()
    assert len(slices) >= 3 and offsets == sorted(set(offsets))  # every slice went on from the one before
    assert read_uri(dst_uri, SIZE) == data
    assert sum(s.bytes_written for s in slices) == nonzero_bytes(data)  # nothing was written twice
    with pytest.raises(ValueError, match="stop_at needs a checkpoint"):
        host_copy(src_uri, dst_uri, stop_at=time.time())
