"""A reference array's LUN images: their format, how they are created, and how the daemon opens them."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from include.backends.errors import BackendError
from lab.arrays.core import ArrayConfig

log = logging.getLogger(__name__)

CLUSTER = 64 * 1024  # qcow2 cluster size: the copy-on-read and copy-on-write granularity of a takeover


def image_format(lun: dict[str, Any]) -> str:
    return lun.get("format", "qcow2")


def image_file_options(config: ArrayConfig) -> dict[str, Any]:
    """How the daemon opens image files: O_DIRECT with native AIO when ``direct_io`` and every pool takes it."""
    if not config.direct_io:
        return {}
    for pool in config.pools:
        probe = config.state_dir / "pools" / pool / ".direct-io-probe"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600))
        except OSError as exc:
            log.warning("pool %s refuses O_DIRECT (%s): images use buffered I/O", pool, exc.strerror)
            return {}
        finally:
            probe.unlink(missing_ok=True)
    return {"aio": "native", "cache": {"direct": True}}


def image_blockdev(
    lun: dict[str, Any], path: Path, node: str, backing: str | None, file_options: dict[str, Any]
) -> dict[str, Any]:
    """``blockdev-add`` arguments that open ``path`` as ``node`` (its file node ``<node>f``)."""
    options: dict[str, Any] = {
        "driver": image_format(lun),
        "node-name": node,
        "discard": "unmap",
        "file": {"driver": "file", "filename": str(path), "node-name": f"{node}f", "discard": "unmap", **file_options},
    }
    if options["driver"] == "qcow2":
        options["backing"] = backing  # always explicit: the header is never trusted for it
    return options


def create_image(path: Path, size: int, fmt: str, *, replace: bool = False) -> None:
    if replace:
        path.unlink(missing_ok=True)
    # (not extended_l2: with it, QEMU 7.2's copy-on-read hit an assertion and aborted)
    options = ["-o", f"cluster_size={CLUSTER}"] if fmt == "qcow2" else []
    run = subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, *options, str(path), str(size)], capture_output=True, text=True
    )
    if run.returncode:
        raise BackendError(f"qemu-img create failed: {run.stderr.strip()}")
