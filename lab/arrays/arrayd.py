"""Entry point of one lab array: ``python -m lab.arrays.arrayd CONFIG.json``.

Starts the array's data plane (qemu-storage-daemon or nbdkit), rebuilds it
from the on-disk inventory and serves the management API until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from lab.arrays.apiserver import serve
from lab.arrays.core import ArrayConfig, BaseArray


def make_array(config: ArrayConfig) -> BaseArray:
    if config.kind == "reference":
        from lab.arrays.reference import ReferenceArray

        return ReferenceArray(config)
    if config.kind == "plain":
        from lab.arrays.plain import PlainArray

        return PlainArray(config)
    raise SystemExit(f"unknown array kind {config.kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    config = ArrayConfig.load(args.config)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    array = make_array(config)
    array.start()
    server = serve(array.routes(), config.host, config.api_port, config.token)
    logging.info(
        "array %s (%s) serving API on %s, NBD on port %s", config.name, config.kind, config.url, config.nbd_port
    )
    done.wait()
    logging.info("stopping")
    server.shutdown()
    array.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
