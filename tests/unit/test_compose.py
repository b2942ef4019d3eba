"""docker-compose.yaml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (check-jsonschema's vendored
copy, so no network), and a broken copy must be refused, so that check can fail. Then the file is read as YAML
with its anchors and merge keys resolved (PyYAML) and held to what the deployment needs: every Airflow
service runs the image the Dockerfile builds with the CeleryExecutor; every long-running service has a
healthcheck; Redis hands a task to another worker only after the longest synchronous step could have ended;
the host copy's checkpoints are on a volume every worker mounts; and the settings that the lab's Airflow and
compose both set agree where they are about behaviour. The lab's side is ``AirflowLab.settings()`` itself,
configured in a temporary folder as ``lab up`` would (no process is started), not a copy of its values.
The Dockerfile is read as text: it builds on Airflow 3.3 and installs the project from its own files.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from include.migration.deadlines import HOST_COPY_GRACE_S
from include.migration.request import MAX_TASK_TIMEOUT_S
from lab.services.airflow import AirflowLab
from lab.services.openstack import Services

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"

IMAGE = "${AIRFLOW_IMAGE_NAME:-cinder-async-migration:latest}"
# Airflow's components, by service, and the command each runs
COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
NOT_AIRFLOW = {"postgres", "redis"}
VISIBILITY_TIMEOUT = "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"

# Settings the lab's Airflow and compose both set. These are about how Airflow behaves, and must agree: what
# the lab's tests prove (a dead worker's task retried within ~30 s, a dead triggerer's triggers moved within
# ~15 s) is then what the deployment does.
MUST_AGREE = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__EXECUTOR",
    VISIBILITY_TIMEOUT,
}
# ... and these differ on purpose, each for its reason. A setting both come to share must be put in one of
# the two, so a new shared setting cannot drift apart unnoticed.
DIFFER_ON_PURPOSE = {
    "AIRFLOW__CELERY__BROKER_URL": "where Redis is, and its password (the schemes must agree: checked below)",
    "AIRFLOW__CELERY__RESULT_BACKEND": "where the database is (likewise)",
    "AIRFLOW__CORE__FERNET_KEY": "a secret: the lab generates its own, compose takes the operator's",
    "AIRFLOW__API_AUTH__JWT_SECRET": "a secret, likewise",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "where the database is: the lab's PostgreSQL or the postgres service",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "where the API server is: 127.0.0.1:<port> or airflow-apiserver",
    "MIGRATION_STATE_DIR": "a path: under the lab's root, or the migration-state volume",
    "VOLUME_REBALANCE_SCHEDULE": "the lab's tests trigger every rebalance themselves (none); compose: daily",
    "VOLUME_AUDIT_SCHEDULE": "the lab's tests trigger every audit themselves (none); compose: hourly",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "the lab's tests run DAGs at once; a deployment starts paused",
}


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # anchors and << merge keys resolved


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def airflow_services(services) -> dict:
    return {name: service for name, service in services.items() if name not in NOT_AIRFLOW}


def command_of(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def workers(services: dict) -> dict:
    return {name: s for name, s in services.items() if command_of(s) == "celery worker"}


# ---- (a), (b) the Compose Specification --------------------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_spec():
    result = run_check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", ["healthcheck_test_not_a_command", "unknown_top_level_key"])
def test_the_spec_check_refuses_a_broken_compose_file(tmp_path, breakage):
    if breakage == "healthcheck_test_not_a_command":
        broken = yaml.safe_load(COMPOSE.read_text())
        broken["services"]["airflow-scheduler"]["healthcheck"] = {"test": 5}
        text, where = yaml.safe_dump(broken, sort_keys=False), "airflow-scheduler"
    else:
        text, where = COMPOSE.read_text() + "\nairflow-settings:\n  executor: CeleryExecutor\n", "airflow-settings"
    path = tmp_path / "docker-compose.yaml"
    path.write_text(text)
    result = run_check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert where in result.stdout


# ---- (c) what the deployment needs ---------------------------------------------------------------------------


def test_airflow_components_exist_and_run_the_project_image_with_celery(services, airflow_services):
    for name, command in COMPONENTS.items():
        assert command_of(services[name]) == command, name
    assert "airflow-init" in services
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    for name, service in airflow_services.items():
        assert service["image"] == IMAGE, name
        assert service["build"] == ".", f"{name} is not built from the Dockerfile"
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in service["environment"], name


def test_long_running_services_have_healthchecks_and_wait_for_what_they_need(services):
    long_running = {name: s for name, s in services.items() if name != "airflow-init" and not s.get("profiles")}
    assert set(COMPONENTS) | NOT_AIRFLOW <= set(long_running)
    for name, service in long_running.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} has no healthcheck"
        assert service.get("restart") == "always", name
    for name in COMPONENTS:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        for other in depends:
            assert other in services, f"{name} depends on an unknown service {other}"


def test_broker_redelivers_only_after_the_longest_synchronous_step(airflow_services):
    for name, service in airflow_services.items():
        timeout = int(service["environment"][VISIBILITY_TIMEOUT])
        assert timeout > MAX_TASK_TIMEOUT_S + HOST_COPY_GRACE_S, name


def test_host_copy_state_is_on_a_volume_every_worker_mounts(compose, services):
    found = workers(services)
    assert found, "no celery worker service"
    replicas = sum(s.get("deploy", {}).get("replicas", 1) for s in found.values())
    assert replicas >= 2, "a retried host copy needs another worker to run on"
    for name, service in found.items():
        state_dir = service["environment"]["MIGRATION_STATE_DIR"]
        mounts = dict(reversed(volume.split(":")[:2]) for volume in service["volumes"])
        assert state_dir in mounts, f"{name} does not mount {state_dir}"
        volume = mounts[state_dir]
        assert volume in compose["volumes"], f"{name}: {volume} is not a named volume (one worker's folder only)"


def test_compose_agrees_with_the_lab_on_shared_behaviour(tmp_path, airflow_services):
    lab_services = Services(tmp_path / "services")
    lab_services.configure()  # ports and passwords only: nothing starts
    lab_airflow = AirflowLab(tmp_path / "airflow", lab=None, services=lab_services, executor="celery")
    lab_airflow.configure()
    lab_settings = lab_airflow.settings()
    for name, service in airflow_services.items():
        env = service["environment"]
        shared = set(lab_settings) & set(env)
        assert MUST_AGREE.issubset(shared), f"{name}: {sorted(MUST_AGREE - shared)} no longer set by both"
        unclassified = shared - MUST_AGREE - set(DIFFER_ON_PURPOSE)
        assert not unclassified, f"{name}: put {sorted(unclassified)} in MUST_AGREE or DIFFER_ON_PURPOSE"
        for key in sorted(MUST_AGREE):
            assert str(env[key]).lower() == lab_settings[key].lower(), f"{name}: {key}"
        for key in ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"):  # the same driver
            assert env[key].split("://")[0] == lab_settings[key].split("://")[0], f"{name}: {key}"


def test_dollars_are_escaped_and_every_variable_is_documented():
    text = COMPOSE.read_text()
    head = text.split("\n---\n", 1)[0]
    body = "\n".join(line for line in text.split("\n---\n", 1)[1].splitlines() if not line.lstrip().startswith("#"))
    unescaped = body.replace("$$", "")
    variables = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}", unescaped))
    stray = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}", "", unescaped)
    assert "$" not in stray, "a $ meant for the container must be written $$ in compose"
    undocumented = {v for v in variables if not re.search(rf"^# {re.escape(v)}\b", head, re.M)}
    assert not undocumented, f"document {sorted(undocumented)} at the head of docker-compose.yaml"


# ---- (d) the Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_on_airflow_3_3_and_installs_the_project_from_its_own_files():
    lines = dockerfile_lines()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(lines), re.M))
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0].split()[1])
    assert base.startswith("apache/airflow:3.3"), base
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert base.split(":")[1].split("-")[0] == pinned, "the image's Airflow is not the one the lab tests"

    copies = {}
    for line in lines:
        if line.startswith("COPY "):
            *sources, dest = [word for word in line.split()[1:] if not word.startswith("--")]
            for source in sources:
                copies[source.rstrip("/")] = dest
    for source in ("pyproject.toml", "README.md", "plugins", "include"):
        assert copies.get(source, "").startswith("/tmp/cinder-async-migration/"), source
    assert copies.get("dags") == "/opt/airflow/dags/"
    installs = [line for line in lines if re.search(r"\bpip install\b", line)]
    assert any("/tmp/cinder-async-migration" in line for line in installs), installs
    assert not any("_PIP_ADDITIONAL_REQUIREMENTS" in line for line in lines), "installs at every container start"
    assert any("import nbd" in line for line in lines), "the build does not check that libnbd's binding loads"


def test_dockerignore_keeps_out_the_lab_but_not_what_the_image_needs():
    patterns = [p for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "plugins", "include", "dags", "Dockerfile"):
        assert not any(fnmatch.fnmatch(needed, p) for p in patterns), needed
    for left_out in (".venv", ".venv-cinder", ".lab", "lab", "tests", "bench", ".git"):
        assert any(fnmatch.fnmatch(left_out, p) for p in patterns), left_out
