"""The project as an installed Airflow provider: its entry point, its provider info, the Connections form.

The form is checked as Airflow's API server builds it for the UI
(``HookMetaService``), in a fresh interpreter with an empty AIRFLOW_HOME; the
wheel is built from the working tree.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import airflow
import jsonschema
import pytest

from plugins.provider_info import CINDER_CONN_TYPE, CINDER_FIELDS, DISTRIBUTION, get_provider_info

ROOT = Path(__file__).resolve().parents[2]


def test_the_provider_info_is_valid_for_airflow():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)
    assert get_provider_info()["package-name"] == DISTRIBUTION
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == DISTRIBUTION


def test_the_installed_distribution_registers_the_entry_point():
    found = [
        ep for ep in importlib.metadata.entry_points(group="apache_airflow_provider") if ep.dist.name == DISTRIBUTION
    ]
    assert [ep.value for ep in found] == ["plugins.provider_info:get_provider_info"], "bootstrap: pip install -e ."
    assert found[0].load() is get_provider_info


def test_every_extra_the_hook_reads_is_a_field_of_its_form():
    read = set(re.findall(r'extra(?:\.get\(|\[)"(\w+)"', (ROOT / "plugins" / "hooks" / "cinder.py").read_text()))
    assert read - {"auth_url"} == set(CINDER_FIELDS)  # auth_url: an old spelling of host


def test_the_only_connection_type_is_cinders():
    """Airflow holds Cinder's credentials only: every backend is reached through Cinder."""
    assert [c["connection-type"] for c in get_provider_info()["connection-types"]] == [CINDER_CONN_TYPE]


FORM = textwrap.dedent(
    """
    import json
    from airflow.providers_manager import ProvidersManager
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    info = ProvidersManager().providers.get(%r)
    forms = {m.connection_type: m.model_dump() for m in HookMetaService.hook_meta_data()}
    print("FORM " + json.dumps({"version": info and info.version, "forms": forms}))
    """
)


@pytest.fixture(scope="module")
def form(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/unused.db")
    run = subprocess.run([sys.executable, "-c", FORM % DISTRIBUTION], capture_output=True, text=True, env=env,
                         cwd=home, timeout=120)  # fmt: skip
    line = next((x for x in run.stdout.splitlines() if x.startswith("FORM ")), None)
    assert run.returncode == 0 and line, run.stderr[-3000:]
    return json.loads(line.removeprefix("FORM "))


def test_airflow_lists_the_provider(form):
    assert form["version"] == importlib.metadata.version(DISTRIBUTION)


def test_the_cinder_connection_form_has_labelled_fields(form):
    cinder = form["forms"][CINDER_CONN_TYPE]
    assert cinder["hook_name"] == "OpenStack Cinder"
    std = cinder["standard_fields"]
    assert std["host"]["title"] == "Keystone URL" and std["host"]["placeholder"].endswith("/v3")
    assert std["login"]["title"] == "User name" and std["password"]["title"] == "Password or secret"
    assert std["port"]["hidden"] and std["url_schema"]["hidden"]
    extra = cinder["extra_fields"]
    assert set(extra) == set(CINDER_FIELDS)
    assert extra["project_domain_name"]["value"] == "Default"
    assert extra["interface"]["schema"]["enum"] == ["public", "internal", "admin"]
    assert extra["insecure"]["value"] is False
    assert all(f["schema"]["title"] for f in extra.values()), "every field has a label"


def test_the_wheel_holds_the_code_and_the_entry_point_not_the_lab(tmp_path):
    src = tmp_path / "src"  # a copy of the tree: setuptools builds in place, the working tree stays clean
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".*"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(src)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"plugins", "include"}
    assert "plugins/provider_info.py" in names and "include/migration/flow.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[apache_airflow_provider]" in text and "plugins.provider_info:get_provider_info" in text
