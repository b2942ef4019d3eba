"""The lab's array configuration: how the reference array opens its images (O_DIRECT where the pools' filesystem
takes it, else buffered), and which names are arrays at all."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from lab.arrays.core import ArrayConfig
from lab.arrays.images import image_file_options
from lab.lab import Lab


def config(state_dir: Path, **overrides) -> ArrayConfig:
    for pool in ("pool1", "pool2"):
        (state_dir / "pools" / pool).mkdir(parents=True, exist_ok=True)
    return ArrayConfig(name="alpha", kind="reference", host="127.0.0.1", api_port=1, nbd_port=2, token="t",
                       state_dir=state_dir, pools={"pool1": 1, "pool2": 1}, **overrides)  # fmt: skip


def test_direct_io_on_a_disk_filesystem_and_nothing_left_behind(tmp_path):
    assert image_file_options(config(tmp_path)) == {"aio": "native", "cache": {"direct": True}}
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # the probe file is gone


def test_buffered_when_switched_off(tmp_path):
    assert image_file_options(config(tmp_path, direct_io=False)) == {}


def test_a_filesystem_that_refuses_o_direct_gets_buffered_io_and_the_array_says_so(tmp_path, monkeypatch, caplog):
    """Some filesystems refuse O_DIRECT with EINVAL (older tmpfs, some FUSE): the fake is at that one call."""
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    with caplog.at_level(logging.WARNING):
        assert image_file_options(config(tmp_path)) == {}
    assert "pool pool1 refuses O_DIRECT (Invalid argument): images use buffered I/O" in caplog.text


def test_a_backend_that_is_no_lab_array_is_a_lookup_error_as_the_audit_expects(tmp_path):
    lab = Lab(tmp_path)
    lab.configure()
    assert lab.backend("alpha").name == "alpha"
    with pytest.raises(LookupError, match=r"the lab has no array ceph-hdd \(its arrays: alpha, beta, gamma\)"):
        lab.backend("ceph-hdd")
