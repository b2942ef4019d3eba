"""The lab demo: one real async migration through the volume_migration DAG.

1. create a Cinder volume on gamma (the plain array) and write data into its LUN;
2. trigger ``volume_migration`` through Airflow's REST API, to alpha (a
   takeover-capable array), with the copy throttled so it can be watched;
3. as soon as Cinder says ``migrating_attachable``, attach the volume through
   Cinder's attachment API (it is served by alpha) and read and write it
   while the copy runs, printing the run's tasks and the copy's progress;
4. when the run has succeeded, check the whole volume on alpha against the
   model of every write, and that the source LUN is gone from gamma.
"""

from __future__ import annotations

import random
import time
from typing import Any

from include.backends.base import GiB, MiB, Volume
from include.backends.errors import NotFound
from include.migration.steps import MIGRATION_DAG, Step
from lab import verify
from lab.lab import Lab
from lab.services.airflow_api import AirflowApi
from lab.services.openstack import Services
from plugins.hooks.cinder import CinderHook

DAG = MIGRATION_DAG
DEMO_TIMEOUT = 900.0
CONNECTOR = {"host": "lab-demo", "ip": "127.0.0.1", "initiator": "iqn.lab-demo", "multipath": False}


def _wait_volume(cinder: CinderHook, volume_id: str, done: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        volume = cinder.get_volume(volume_id)
        if done(volume):
            return volume
        if volume["status"] == "error" or time.monotonic() > deadline:
            raise RuntimeError(f"volume {volume_id}: status {volume['status']}, {volume.get('migration_status')}")
        time.sleep(1.0)


def _tasks(api: AirflowApi, run_id: str) -> str:
    tis = api.task_instances(DAG, run_id)
    return ", ".join(f"{t}={tis[t]['state']}" for t in Step if t in tis and tis[t]["state"])


def run_demo(lab: Lab, services: Services, api: AirflowApi, *, size_gib: int, speed_mib: int, keep: bool) -> int:
    cinder, rng = services.cinder_hook(), random.Random(42)
    size, dest = size_gib * GiB, "lab@alpha#pool1"
    body = {"volume": {"size": size_gib, "availability_zone": "gamma", "name": "lab-demo"}}
    volume_id = cinder.request("POST", "/volumes", body)["volume"]["id"]
    source = _wait_volume(cinder, volume_id, lambda v: v["status"] == "available")["os-vol-host-attr:host"]
    lun = f"volume-{volume_id}"
    print(f"1. volume {volume_id} ({size_gib} GiB) on {source}: writing data into its LUN")
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    initial = bytearray(size)
    handle = verify.connect(gamma.export_lun(lun).uri)
    for off in range(0, size, 8 * MiB):  # one MiB of data in every 8, the rest stays holes
        initial[off : off + MiB] = rng.randbytes(MiB)
        handle.pwrite(bytes(initial[off : off + MiB]), off)
    handle.flush()
    handle.shutdown()
    gamma.unexport_lun(lun)
    model = verify.DataModel(size, bytes(initial))

    started = time.monotonic()
    run_id = api.trigger(DAG, {"volume_id": volume_id, "dest_host": dest, "speed_mib": speed_mib})
    print(f"2. triggered {DAG} run {run_id} through the REST API: to {dest}, copy at {speed_mib} MiB/s")
    attached = _wait_volume(cinder, volume_id, lambda v: v["migration_status"] == "migrating_attachable")
    print(
        f"3. after {time.monotonic() - started:.1f} s: status {attached['status']}, migration_status "
        f"{attached['migration_status']}, host {attached['os-vol-host-attr:host']}; attaching it through Cinder"
    )
    att = cinder.request("POST", "/attachments", {"attachment": {"volume_uuid": volume_id, "connector": CONNECTOR}})
    info = att["attachment"]["connection_info"]
    print(f"   served by alpha at {info['uri']}; a client reads and writes it while the copy runs")
    handle = verify.connect(info["uri"])
    totals = verify.IoStats()
    shown = ""
    while True:
        stats = verify.random_io(handle, model, 40, rng, max_size=256 * 1024)
        totals.reads, totals.writes = totals.reads + stats.reads, totals.writes + stats.writes
        totals.errors += stats.errors
        totals.mismatches += stats.mismatches
        progress = alpha.complete_migration_target(Volume(lun, size))
        tasks = _tasks(api, run_id)
        if tasks != shown:
            print(f"   tasks: {tasks}")
            shown = tasks
        print(
            f"   {progress.describe()} | client: {totals.reads} reads, {totals.writes} writes, "
            f"{len(totals.mismatches)} bad sectors"
        )
        if progress.state.terminal or time.monotonic() - started > DEMO_TIMEOUT:
            break
        time.sleep(1.0)
    handle.flush()
    model.flushed()
    handle.shutdown()
    cinder.request("DELETE", f"/attachments/{att['attachment']['id']}")
    run = api.wait_run(DAG, run_id, DEMO_TIMEOUT)
    final = cinder.get_volume(volume_id)
    print(
        f"4. run {run['state']} after {time.monotonic() - started:.1f} s; Cinder: migration_status "
        f"{final['migration_status']}, host {final['os-vol-host-attr:host']}"
    )
    handle = verify.connect(alpha.export_lun(lun).uri)
    bad = model.mismatches(verify.read_all(handle, size))
    handle.shutdown()
    alpha.unexport_lun(lun)
    try:
        gamma.get_lun(lun)
        source_gone = False
    except NotFound:
        source_gone = True
    print(f"   whole volume on alpha {'matches' if not bad else 'DIFFERS from'} the model of every write "
          f"({len(bad)} bad sectors); source LUN on gamma {'deleted' if source_gone else 'STILL THERE'}")  # fmt: skip
    ok = (
        run["state"] == "success"
        and final["migration_status"] == "success"
        and final["os-vol-host-attr:host"] == dest
        and not bad
        and source_gone
        and not totals.errors
        and not totals.mismatches
    )
    if not keep:
        _wait_volume(cinder, volume_id, lambda v: v["status"] == "available")
        cinder.request("DELETE", f"/volumes/{volume_id}")
    print("demo " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1
