"""Tempest's volume API tests and cinder-tempest-plugin's, against the lab's Cinder with the project's plugin loaded.

The public standard every Cinder driver and plugin is held to (issue 24). ``python -m lab.tempest`` starts the
lab's Cinder side in a fresh folder (the arrays, PostgreSQL, RabbitMQ, Keystone, Ceph and Cinder with the
project's extension and volume manager; no Airflow), writes ``tempest.conf`` from what the live lab says, runs
``tempest.api.volume`` and ``cinder_tempest_plugin.api`` less ``tests/tempest/exclude-list.txt``, prints the
counts per suite and stops the lab. Exit status 1 when a test fails or none passed.

What tempest.conf claims, and where each fact comes from:

- credentials and the region: the lab's Keystone (its admin; Tempest makes its own projects and users);
- Cinder's policy (new defaults, scope checked): its cinder.conf and the oslo.policy it runs;
- the services: Keystone's catalog (``service_available``), Cinder's service list (backup);
- microversions: Cinder's version document;
- the backends Tempest may use (multi-backend, retype with migration): the pools of the zone a volume
  created without one lands in (``default_availability_zone`` of the lab's cinder.conf), by their
  ``volume_backend_name``; their protocol and vendor as the scheduler reports them;
- the features (snapshots, clones, manage, revert...): claimed only when the driver of every one of those
  backends (cinder.conf's ``volume_driver``) has them.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python -m lab.tempest [--root DIR] [--keep] [--concurrency N]
[--regex R]`` (``--root`` of a running lab: used as it is, not stopped).
"""

from __future__ import annotations

import argparse
import configparser
import csv
import io
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from lab.cli import cinder_of, down_cinder_side, up_cinder_side
from lab.env import HOST, PROJECT_ROOT
from lab.errors import LabError
from lab.lab import Lab
from lab.localhttp import http_call
from lab.services.cinder import ASYNC_RBD_DRIVER, STOCK_RBD_DRIVER, CinderLab

TEMPEST_VENV = PROJECT_ROOT / ".venv-tempest"
EXCLUDE_LIST = PROJECT_ROOT / "tests" / "tempest" / "exclude-list.txt"
SUITES = ("tempest.api.volume", "cinder_tempest_plugin.api")
TESTS = r"^(tempest\.api\.volume|cinder_tempest_plugin\.api)\."
# Tempest's feature flags ([volume-feature-enabled]) a driver of the lab can back; any other stays off
RBD_FEATURES = ("snapshot", "clone", "manage_volume", "manage_snapshot", "volume_revert",
                "extend_volume_with_snapshot")  # fmt: skip
DRIVER_FEATURES = {STOCK_RBD_DRIVER: RBD_FEATURES, ASYNC_RBD_DRIVER: RBD_FEATURES}  # the same RBD driver
FEATURES = sorted({f for features in DRIVER_FEATURES.values() for f in features})
# Keystone catalog type -> Tempest's [service_available] flag
CATALOG_SERVICES = {"compute": "nova", "image": "glance", "object-store": "swift", "network": "neutron"}


def cinder_conf(cinder: CinderLab) -> configparser.ConfigParser:
    conf = configparser.ConfigParser(strict=False, interpolation=None)  # osapi_volume_extension comes twice
    conf.read(cinder.conf_path)
    return conf


def discover(cinder: CinderLab) -> dict[str, dict[str, str]]:
    """tempest.conf's sections, from the live lab (see the module's docstring)."""
    services = cinder.services
    creds = services.credentials("admin")
    _, token = services.token("admin")
    catalog = {entry["type"]: entry for entry in token["catalog"]}
    regions = {e["region_id"] for entry in catalog.values() for e in entry["endpoints"]}
    status, _, raw = http_call("GET", f"http://{HOST}:{services.cinder_api_port}/", timeout=30)
    if status not in (200, 300):
        raise LabError(f"Cinder's version document: HTTP {status}")
    v3 = next(v for v in json.loads(raw)["versions"] if v["id"] == "v3.0")

    conf = cinder_conf(cinder)
    zone = conf["DEFAULT"].get("default_availability_zone", "nova")
    volume_services = cinder.admin_call("GET", "/os-services")["services"]
    in_zone = {s["host"] for s in volume_services if s["binary"] == "cinder-volume" and s["zone"] == zone}
    pools = [
        p["capabilities"]
        for p in cinder.admin_call("GET", "/scheduler-stats/get_pools?detail=True")["pools"]
        if p["name"].split("#", 1)[0] in in_zone
    ]
    if not pools:
        raise LabError(f"no pool serves the default zone {zone!r}: Tempest's volumes would have nowhere to go")
    backends = sorted({p["volume_backend_name"] for p in pools})
    drivers = {conf[b].get("volume_driver") if conf.has_section(b) else None for b in backends}
    features = {f for f in FEATURES if all(f in DRIVER_FEATURES.get(d or "", ()) for d in drivers)}
    backup = any(s["binary"] == "cinder-backup" for s in volume_services)
    # Cinder's policy as it runs: the new defaults unless cinder.conf turns them off (oslo.policy's default is on);
    # the oslo.policy Cinder 29 ships checks scope always (it has no enforce_scope switch any more)
    new_rbac = conf.getboolean("oslo_policy", "enforce_new_defaults", fallback=True)

    def flag(on: bool) -> str:
        return "true" if on else "false"

    return {
        "auth": {
            "use_dynamic_credentials": "true",
            "create_isolated_networks": "false",
            "admin_username": creds["username"],
            "admin_password": creds["password"],
            "admin_project_name": creds["project_name"],
            "admin_domain_name": creds["user_domain_name"],
            "admin_user_domain_name": creds["user_domain_name"],
            "admin_project_domain_name": creds["project_domain_name"],
        },
        "identity": {"uri_v3": creds["auth_url"], "auth_version": "v3", "region": sorted(regions)[0]},
        "identity-feature-enabled": {"api_v2": "false", "api_v2_admin": "false", "api_v3": "true"},
        "enforce_scope": {"cinder": flag(new_rbac)},
        "service_available": {
            "cinder": "true",
            **{flag_name: flag(kind in catalog) for kind, flag_name in CATALOG_SERVICES.items()},
        },
        "volume": {
            "backend_names": ",".join(backends),
            "storage_protocol": pools[0]["storage_protocol"],
            "vendor_name": pools[0]["vendor_name"],
            "min_microversion": v3["min_version"],
            "max_microversion": v3["version"],
            # RBD's names: volume-<id>, and snapshot-<id> for a snapshot
            "manage_volume_ref": "source-name,volume-%s",
            "manage_snapshot_ref": "source-name,snapshot-%s",
        },
        "volume-feature-enabled": {
            "multi_backend": flag(len(backends) > 1),
            "backup": flag(backup),
            "extend_attached_volume": "false",  # needs Nova
            **{f: flag(f in features) for f in FEATURES},
        },
    }


def render(sections: dict[str, dict[str, str]]) -> str:
    out = io.StringIO()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    parser.write(out)
    return out.getvalue()


def exclusions() -> Counter[str]:
    """The exclude list's size by reason (the comment after each test's regex)."""
    reasons: Counter[str] = Counter()
    for line in EXCLUDE_LIST.read_text().splitlines():
        regex, _, reason = line.partition("#")
        if regex.strip():
            reasons[reason.strip() or "(no reason given)"] += 1
    return reasons


def tempest(workspace: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TEMPEST_VENV / "bin" / "tempest"), *args], cwd=workspace, text=True, **kwargs)


def run(cinder: CinderLab, workspace: Path, *, concurrency: int, regex: str = TESTS) -> dict[str, Counter[str]]:
    """Write tempest.conf into ``workspace`` (made with ``tempest init``), run the tests; counts per suite."""
    if not (workspace / ".stestr.conf").exists():
        workspace.mkdir(parents=True, exist_ok=True)
        registry = workspace.parent / "tempest-workspaces.yaml"  # not ~/.tempest's: one name per lab is enough
        tempest(workspace.parent, "init", "--workspace-path", str(registry), "--name", workspace.parent.name,
                str(workspace), check=True, capture_output=True)  # fmt: skip
    conf = workspace / "etc" / "tempest.conf"
    conf.write_text(render(discover(cinder)))
    log = workspace / "tempest-run.log"
    with log.open("w") as out:
        tempest(workspace, "run", "--config-file", str(conf), "--regex", regex, "--exclude-list", str(EXCLUDE_LIST),
                "--concurrency", str(concurrency), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    return outcomes(workspace)


def outcomes(workspace: Path) -> dict[str, Counter[str]]:
    """Per suite, how many tests ended in success, failure or skip (a setUpClass that failed or skipped counts
    once), from the workspace's last stestr run."""
    stream = subprocess.run([str(TEMPEST_VENV / "bin" / "stestr"), "last", "--subunit"], cwd=workspace,
                            capture_output=True, check=True).stdout  # fmt: skip
    rows = subprocess.run(
        [str(TEMPEST_VENV / "bin" / "subunit2csv")], input=stream, capture_output=True
    ).stdout.decode()  # its exit status is 1 when a test failed: not an error here
    counts: dict[str, Counter[str]] = {suite: Counter() for suite in SUITES}
    failed: list[str] = []
    for row in csv.DictReader(io.StringIO(rows)):
        suite = next((s for s in SUITES if s in row["test"]), None)
        if suite is not None:
            status = {"fail": "failure", "xfail": "success", "uxsuccess": "failure"}.get(row["status"], row["status"])
            counts[suite][status] += 1
            if status == "failure":
                failed.append(row["test"])
    for name in sorted(failed):
        print(f"FAILED {name}")
    return counts


def report(counts: dict[str, Counter[str]]) -> str:
    lines = [f"{'suite':28} {'passed':>7} {'failed':>7} {'skipped':>8}"]
    for suite, c in counts.items():
        lines.append(f"{suite:28} {c['success']:>7} {c['failure']:>7} {c['skip']:>8}")
    lines += [f"excluded: {n} ({reason})" for reason, n in sorted(exclusions().items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.tempest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--root", type=Path, help="a running lab's folder (default: a fresh lab, stopped after)")
    parser.add_argument("--keep", action="store_true", help="leave the fresh lab running")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--regex", default=TESTS, help="the tests to run (default: both suites)")
    args = parser.parse_args(argv)
    fresh = args.root is None
    lab = Lab(args.root or Path(tempfile.mkdtemp(prefix="lab-tempest-")))
    if fresh:
        lab.root.chmod(0o711)  # PostgreSQL runs as its own user, below this folder
    cinder = cinder_of(lab)
    try:
        if fresh:
            up_cinder_side(lab)
        counts = run(cinder, lab.root / "tempest", concurrency=args.concurrency, regex=args.regex)
    except (LabError, subprocess.CalledProcessError) as exc:
        print(f"lab.tempest: {exc}", file=sys.stderr)
        return 1
    finally:
        if fresh and not args.keep:
            down_cinder_side(lab)
    print(report(counts))
    print(f"log: {lab.root / 'tempest' / 'tempest-run.log'}")
    passed = sum(c["success"] for c in counts.values())
    return 0 if passed and not any(c["failure"] for c in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
