"""Takeover onto a reference array, with real arrays and a verifying NBD client."""

from __future__ import annotations

import json
import random
import subprocess
import time

import nbd
import pytest

from include.backends.base import MiB, MigrationState, Volume
from include.backends.errors import Conflict, NotFound
from lab import verify
from lab.procutil import wait_until
from tests.conftest import finish_and_remove, wait_done

pytestmark = pytest.mark.integration

SIZE = 64 * MiB


def check_and_remove(target, name, handle, model):
    """Flush, compare the whole LUN with the model of every write, then remove the target LUN."""
    handle.flush()
    model.flushed()
    assert model.mismatches(verify.read_all(handle, SIZE)) == []
    handle.shutdown()
    target.unexport_lun(name)
    target.delete_lun(name)


@pytest.mark.parametrize(
    ("source_array", "mode"), [("gamma", "stream"), ("beta", "stream"), ("gamma", "mirror"), ("beta", "mirror")]
)
def test_takeover_serves_io_during_copy_and_ends_identical(lab, make_lun, lun_name, source_array, mode):
    source, alpha = lab.backend(source_array), lab.backend("alpha")
    initial = make_lun(source_array, lun_name, SIZE)
    volume = Volume(lun_name, SIZE)

    moved, is_async, update = alpha.migrate_volume_target(volume, source, pool="pool2", speed_bps=16 * MiB, mode=mode)
    assert (moved, is_async) == (True, True)
    assert update["pool"] == "pool2" and update["provider_location"].endswith("/" + lun_name)
    # a second call (a retried task) does not take it over twice
    assert alpha.migrate_volume_target(volume, source, pool="pool2")[:2] == (True, True)
    with pytest.raises(Conflict, match="takeover"):
        source.delete_lun(lun_name)

    model = verify.DataModel(SIZE, initial)
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    rng = random.Random(7)
    seen_copying, io = False, verify.IoStats()
    for _ in range(200):  # bounded: ends when the copy does
        stats = verify.random_io(handle, model, 10, rng, max_size=MiB)
        io.reads += stats.reads
        io.writes += stats.writes
        io.errors += stats.errors
        io.mismatches += stats.mismatches
        state = alpha.complete_migration_target(volume).state
        seen_copying |= state is MigrationState.COPYING
        if state.terminal:
            break
    assert seen_copying, "the copy ended before any client I/O ran beside it"
    assert io.errors == [] and io.mismatches == []
    assert io.reads > 0 and io.writes > 0
    assert wait_done(alpha, volume).state is MigrationState.DONE

    handle.flush()
    model.flushed()
    assert model.mismatches(verify.read_all(handle, SIZE)) == []
    handle.shutdown()
    lun = alpha.get_lun(lun_name)
    assert lun["taken_over_from"] == source_array and lun["copy"] is False and lun["pool"] == "pool2"
    assert lun["format"] == {"stream": "qcow2", "mirror": "raw"}[mode]

    # the target is complete: the source may now go
    source.release_takeover(lun_name)
    source.delete_lun(lun_name)
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    assert model.mismatches(verify.read_all(handle, SIZE)) == []
    handle.shutdown()
    alpha.unexport_lun(lun_name)
    alpha.delete_lun(lun_name)


def test_fio_runs_without_errors_during_copy(lab, make_lun, lun_name):
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    make_lun("gamma", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=8 * MiB)
    uri = alpha.export_lun(lun_name).uri
    # fio works on the first 16 MiB; the copy (8 MiB/s) is still running when it ends
    run = subprocess.run(
        ["fio", "--name=during-copy", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw", "--rwmixread=70",
         "--bs=4k", "--iodepth=16", "--time_based", "--runtime=3", "--size=16M", "--output-format=json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout[run.stdout.index("{") :])["jobs"][0]  # fio first says "connected"
    assert job["error"] == 0
    assert job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0
    assert alpha.complete_migration_target(volume).state is MigrationState.COPYING
    alpha.set_migration_speed(volume, 0)
    assert wait_done(alpha, volume).state is MigrationState.DONE
    alpha.unexport_lun(lun_name)
    alpha.delete_lun(lun_name)


def test_pause_resume_and_throttle(lab, make_lun, lun_name):
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    make_lun("gamma", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=8 * MiB)
    assert alpha.pause_migration(volume).state is MigrationState.PAUSED
    time.sleep(0.5)
    before = alpha.complete_migration_target(volume).bytes_done
    time.sleep(1.5)
    after = alpha.complete_migration_target(volume)
    assert after.state is MigrationState.PAUSED and after.bytes_done == before
    assert alpha.resume_migration(volume).state is MigrationState.COPYING
    assert wait_until(lambda: alpha.complete_migration_target(volume).bytes_done > before, 10, 0.2)
    alpha.set_migration_speed(volume, 0)
    done = wait_done(alpha, volume)
    assert done.state is MigrationState.DONE and done.bytes_done == SIZE
    alpha.unexport_lun(lun_name)
    alpha.delete_lun(lun_name)


def qcow2_data_bytes(path):
    """Bytes the image's on-disk metadata maps to data (what survived a crash)."""
    run = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", str(path)], capture_output=True, text=True, check=True
    )
    return sum(e["length"] for e in json.loads(run.stdout) if e["data"])


def test_target_crash_mid_copy_keeps_flushed_writes_and_resumes(lab, make_lun, lun_name):
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    initial = make_lun("beta", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    speed = 8 * MiB
    alpha.migrate_volume_target(volume, beta, pool="pool1", speed_bps=speed)
    model = verify.DataModel(SIZE, initial)
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    rng = random.Random(11)
    stats = verify.random_io(handle, model, 60, rng, max_size=256 * 1024, flush_every=4)
    assert stats.errors == [] and stats.mismatches == []
    assert wait_until(lambda: alpha.complete_migration_target(volume).bytes_done >= SIZE // 4, 30, 0.1)
    # leave some writes unflushed on purpose, then crash the target array
    for _ in range(5):
        data = rng.randbytes(4096)
        offset = rng.randrange(0, SIZE // 4096) * 4096
        handle.pwrite(data, offset)
        model.write(offset, data)
    progress_at_kill = alpha.complete_migration_target(volume).bytes_done
    assert 0 < progress_at_kill < SIZE, "copy must be mid-way when the array dies"
    lab.kill("alpha")
    lun = next(lun for lun in json.loads((lab.array_dir("alpha") / "inventory.json").read_text())["luns"].values()
               if lun["name"] == lun_name)  # fmt: skip
    image = lab.array_dir("alpha") / "pools" / lun["pool"] / f"{lun_name}.{lun['gen']}.qcow2"
    durable = qcow2_data_bytes(image)

    lab.start("alpha")
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    content = verify.read_all(handle, SIZE)
    assert model.crash_violations(content) == [], "a flushed write was lost or never-written data was read"
    model.adopt(content)
    # what had been copied before the crash was durable up to about one flush interval
    lost_progress = max(progress_at_kill - durable, 0)
    print(f"copied at kill {progress_at_kill / MiB:.1f} MiB, durable {durable / MiB:.1f} MiB, "
          f"re-copy {lost_progress / MiB:.1f} MiB")  # fmt: skip
    assert lost_progress <= speed * 3
    stats = verify.random_io(handle, model, 40, rng, max_size=256 * 1024)
    assert stats.errors == [] and stats.mismatches == []
    # (the full read above went through the copy-on-read filter of the stream,
    # so the copy may already be over)
    assert wait_done(alpha, volume).state is MigrationState.DONE
    check_and_remove(alpha, lun_name, handle, model)


def test_source_crash_gives_errors_never_wrong_data_then_completes(lab, make_lun, lun_name):
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    initial = make_lun("gamma", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=4 * MiB)
    model = verify.DataModel(SIZE, initial)
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    time.sleep(1.0)
    lab.kill("gamma")
    # the tail of the LUN is not copied yet: reading it needs the source
    tail = SIZE - 4 * MiB
    with pytest.raises(nbd.Error):
        handle.pread(MiB, tail)
    rng = random.Random(5)
    stats = verify.random_io(handle, model, 30, rng, max_size=128 * 1024, stop_on_error=False)
    assert stats.mismatches == [], "a read returned wrong data while the source was down"
    assert wait_until(
        lambda: alpha.complete_migration_target(volume).state is MigrationState.WAITING_FOR_SOURCE, 15, 0.2
    )
    lab.start("gamma")
    alpha.set_migration_speed(volume, 0)
    assert wait_done(alpha, volume, timeout=60).state is MigrationState.DONE
    handle.flush()
    content = verify.read_all(handle, SIZE)
    assert model.crash_violations(content) == []
    handle.shutdown()
    alpha.unexport_lun(lun_name)
    alpha.delete_lun(lun_name)


def test_mirror_target_crash_keeps_every_acknowledged_write(lab, make_lun, lun_name):
    beta, alpha = lab.backend("beta"), lab.backend("alpha")
    initial = make_lun("beta", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    alpha.migrate_volume_target(volume, beta, pool="pool1", speed_bps=8 * MiB, mode="mirror")
    model = verify.DataModel(SIZE, initial)
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    rng = random.Random(13)
    stats = verify.random_io(handle, model, 60, rng, max_size=256 * 1024, flush_every=4)
    assert stats.errors == [] and stats.mismatches == []
    assert alpha.complete_migration_target(volume).state is MigrationState.COPYING
    lab.kill("alpha")
    lab.start("alpha")
    # until the mirror is in sync the source is authoritative, and it got every
    # acknowledged write (flushed or not): nothing may be missing
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    assert model.mismatches(verify.read_all(handle, SIZE)) == []
    stats = verify.random_io(handle, model, 40, rng, max_size=256 * 1024)
    assert stats.errors == [] and stats.mismatches == []
    alpha.set_migration_speed(volume, 0)
    assert wait_done(alpha, volume).state is MigrationState.DONE
    check_and_remove(alpha, lun_name, handle, model)


@pytest.mark.parametrize("mode", ["stream", "mirror"])
def test_abort_deletes_target_and_leaves_source_intact(lab, make_lun, lun_name, mode):
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    initial = make_lun("gamma", lun_name, SIZE)
    volume = Volume(lun_name, SIZE)
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=4 * MiB, mode=mode)
    time.sleep(1.0)
    alpha.abort_migration_target(volume)
    assert all(lun["name"] != lun_name for lun in alpha.list_luns())
    assert not list((lab.config("alpha").state_dir / "pools").glob(f"*/{lun_name}.*"))
    with pytest.raises(NotFound):
        alpha.abort_migration_target(volume)
    gamma.release_takeover(lun_name)
    handle = verify.connect(gamma.export_lun(lun_name).uri)
    assert verify.read_all(handle, SIZE) == initial
    handle.shutdown()
    gamma.unexport_lun(lun_name)
    # the same LUN can be taken over again afterwards
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=0, mode=mode)
    finish_and_remove(alpha, volume)
