"""The Cinder side as its own distribution: its wheel holds the extension, the volume manager and the drivers and
nothing of Airflow; installed into a fresh virtualenv, the lab's Cinder runs from it (the project's tree off its
path) and a migration goes through it."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from include.cinder_plugin.names import ALIAS, MANAGER_CAPABILITY
from include.migration.steps import MIGRATION_DAG
from lab.env import PROJECT_ROOT
from lab.services.cinder import CINDER_HOST, CINDER_VENV, make_plugin_venv

pytestmark = pytest.mark.integration

PLUGIN_FILES = ("extension.py", "manager.py", "drivers.py", "ceph_driver.py", "host_copy.py", "takeover.py")


def build_wheel(out: Path) -> Path:
    run = subprocess.run([str(PROJECT_ROOT / "scripts" / "build-cinder-wheel.sh"), str(out)], capture_output=True,
                         text=True, check=True, timeout=300)  # fmt: skip
    return Path(run.stdout.strip().splitlines()[-1])


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_cinder_side_is_its_own_wheel_and_the_lab_cinder_runs_from_it(cinder, admin, api, airflow, volume,
                                                                            tmp_path):  # fmt: skip
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert all(f"include/cinder_plugin/{f}" in names for f in PLUGIN_FILES), names
    assert not any(n.startswith(("plugins/", "dags/", "lab/", "include/migration/")) for n in names), names
    assert "Name: cinder-async-migration" in metadata and "Requires-Dist" not in metadata, metadata
    print(f"\n{wheel.name}: {len(names)} files")

    venv = make_plugin_venv(tmp_path / "cinder-venv", wheel)
    specs = "u.find_spec('include.cinder_plugin.manager').origin, u.find_spec('airflow')"
    probe = f"import importlib.util as u; print({specs})"
    env = cinder.env() | {"PYTHONPATH": ""}
    where, airflow_spec = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                         check=True, env=env, cwd="/").stdout.split()  # fmt: skip
    assert where.startswith(str(venv / "lib")) and airflow_spec == "None", (where, airflow_spec)

    cinder.down()
    cinder.venv = venv  # the project's tree off PYTHONPATH
    try:
        pids = cinder.up()  # fails unless every backend's cinder-volume is up and cinder-api loaded the extension
        for service, pid in pids.items():
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == str(venv / "bin" / "python")
            assert "PYTHONPATH" not in environ_of(pid), service
        assert ALIAS in admin.extension_aliases()
        pools = admin.pool_details()
        assert pools and all(p["capabilities"].get(MANAGER_CAPABILITY) for p in pools), pools

        vol = volume("beta")  # a takeover to alpha: both steps run in cinder-volume, from the wheel
        run_id = api.trigger(MIGRATION_DAG, {"volume_id": vol["id"], "dest_host": f"{CINDER_HOST}@alpha#pool1"})
        assert api.wait_run(MIGRATION_DAG, run_id, 300)["state"] == "success"
        after = admin.get_volume(vol["id"])
        assert (after["migration_status"], after["os-vol-host-attr:host"]) == ("success", f"{CINDER_HOST}@alpha#pool1")
    finally:
        cinder.down()
        cinder.venv = CINDER_VENV
        cinder.up()
