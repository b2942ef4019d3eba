"""``DeviceFile``: an opened volume as the file object Cinder's own copy reads and writes (over a plain file)."""

from __future__ import annotations

import io
import os
import shutil

import pytest

from include.block_devices import DeviceError, DeviceFile, FileDevice
from include.connectors import NbdConnector, cinder_attach


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / "volume"
    path.write_bytes(os.urandom(3 * 4096 + 100))
    return path


def test_a_copy_between_device_files_is_byte_for_byte(volume, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(bytes(volume.stat().st_size))
    src, dest = DeviceFile(FileDevice(str(volume), writable=False)), DeviceFile(FileDevice(str(target)))
    shutil.copyfileobj(src, dest, 4096)  # what Cinder's _transfer_data does: read a chunk, write it
    assert (src.tell(), dest.tell()) == (volume.stat().st_size,) * 2
    assert src.read(10) == b"" and not src.writable() and dest.writable()
    src.close()
    dest.close()
    assert target.read_bytes() == volume.read_bytes()
    assert src.closed and dest.closed


def test_seek_tell_and_a_write_past_the_end_is_refused(volume):
    data = volume.read_bytes()
    with DeviceFile(FileDevice(str(volume))) as f:
        assert f.seek(-100, io.SEEK_END) == len(data) - 100 and f.read() == data[-100:]
        assert f.seek(10) == 10 and f.read(5) == data[10:15] and f.tell() == 15
        f.seek(-10, io.SEEK_END)
        with pytest.raises(DeviceError, match="ends past its end"):
            f.write(b"x" * 11)
        with pytest.raises(ValueError, match="negative position"):
            f.seek(-1)
    assert volume.read_bytes() == data, "nothing was written"


def test_only_nbd_is_opened_for_cinder_and_the_connector_closes_what_it_opened(volume):
    assert cinder_attach({"driver_volume_type": "rbd", "data": {}}) is None  # os-brick's
    handle = DeviceFile(FileDevice(str(volume)))
    NbdConnector.disconnect_volume({}, {"type": "nbd", "path": handle}, force=True, ignore_errors=True)
    assert handle.closed
    NbdConnector.disconnect_volume({}, {"type": "nbd", "path": "nbd://127.0.0.1:1/x"})  # the worker's: nothing open
