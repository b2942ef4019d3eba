"""The lab demo: take a LUN of the plain array gamma over onto alpha and use it during the copy.

1. create a LUN on gamma and write data into it (with holes);
2. ``migrate_volume_target`` on alpha: the LUN is served by alpha at once;
3. a verifying client reads and writes through alpha while the copy runs,
   and progress is printed;
4. when the copy is done, the whole LUN is checked against the model of
   every write; then gamma's takeover export is released and the source LUN
   deleted (only now: the target is complete).
"""

from __future__ import annotations

import random
import time
import uuid

from include.backends.base import MiB, Volume
from include.lab import verify
from include.lab.lab import Lab

DEMO_TIMEOUT = 600.0


def run_demo(lab: Lab, *, size: int, speed_bps: int) -> int:
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    volume = Volume(f"volume-demo-{uuid.uuid4().hex[:8]}", size)
    rng = random.Random(42)
    print(f"1. creating {volume.name} ({size // MiB} MiB) on gamma and writing data")
    gamma.create_lun(volume.name, size, "pool1")
    initial = bytearray(size)
    for off in range(0, size, 8 * MiB):  # 3 of every 4 blocks hold data, the rest stays a hole
        if (off // (8 * MiB)) % 4:
            initial[off : off + 8 * MiB] = rng.randbytes(min(8 * MiB, size - off))
    handle = verify.connect(gamma.export_lun(volume.name).uri)
    verify.write_all(handle, bytes(initial))
    handle.shutdown()
    gamma.unexport_lun(volume.name)

    print(f"2. alpha takes it over (copy throttled to {speed_bps // MiB or 'unlimited'} MiB/s)")
    started = time.monotonic()
    moved, is_async, update = alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=speed_bps)
    print(f"   moved={moved} async={is_async} in {time.monotonic() - started:.2f} s; served at {update}")

    print("3. reading and writing through alpha while the copy runs")
    model = verify.DataModel(size, bytes(initial))
    handle = verify.connect(alpha.export_lun(volume.name).uri)
    totals = verify.IoStats()
    deadline = time.monotonic() + DEMO_TIMEOUT
    while True:
        stats = verify.random_io(handle, model, 50, rng)
        for key in ("reads", "writes", "flushes"):
            setattr(totals, key, getattr(totals, key) + getattr(stats, key))
        totals.errors += stats.errors
        totals.mismatches += stats.mismatches
        progress = alpha.complete_migration_target(volume)
        print(
            f"   {progress.describe()} | client: {totals.reads} reads, {totals.writes} writes, "
            f"{len(totals.mismatches)} bad sectors, {len(totals.errors)} errors"
        )
        if progress.state.terminal or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    handle.flush()
    model.flushed()
    content = verify.read_all(handle, size)
    handle.shutdown()
    alpha.unexport_lun(volume.name)
    bad = model.mismatches(content)
    ok = progress.state.value == "done" and not bad and not totals.mismatches and not totals.errors
    print(
        f"4. copy {progress.state.value}; whole LUN {'matches' if not bad else 'DIFFERS from'} the model "
        f"({len(bad)} bad sectors)"
    )
    if ok:
        gamma.release_takeover(volume.name)
        gamma.delete_lun(volume.name)
        print(f"   source LUN on gamma deleted; {volume.name} lives on alpha: {alpha.get_lun(volume.name)['location']}")
        alpha.delete_lun(volume.name)
    print("demo " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1
