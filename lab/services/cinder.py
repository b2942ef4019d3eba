"""Cinder 29 in the lab: configuration, database, and the api, scheduler and volume services.

``CinderLab(root, lab, services, ceph)`` writes ``root/cinder.conf`` with one
backend per lab array (``include.cinder_plugin.drivers``) and, with ``ceph``,
one per RBD pool of the lab's Ceph: ``ceph-hdd`` and ``ceph-ssd`` served by
``include.cinder_plugin.ceph_driver.AsyncRBDDriver`` (Cinder's own ``RBDDriver``,
unchanged, plus the blueprint's takeover by RBD live migration), ``ceph-stock``
by Cinder's own, unmodified ``RBDDriver``; it syncs the database and starts
``cinder-api``, ``cinder-scheduler`` and ``cinder-volume`` from the
project's Cinder virtualenv (``.venv-cinder``), each in its own session,
stopped by PID.

Zones and types, as a cloud has them: each lab array is an availability zone
of its own (a test picks an array by zone); every Ceph pool serves the default
zone, ``nova``, so a volume created without a zone or a type lands on Ceph
(snapshots, clones, extend, as Tempest expects of the default). Each backend
has a volume type of its name that pins it (``volume_backend_name``) and names
its zone (``RESKEY:availability_zones``, so that ``cinder retype
--migration-policy on-demand`` may cross zones).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from include.cinder_plugin.names import ALIAS as EXTENSION_ALIAS
from include.cinder_plugin.names import EXTENSION_CLASS, MANAGER_CLASS
from lab.env import HOST, PROJECT_ROOT
from lab.errors import LabError
from lab.lab import Lab
from lab.localhttp import http_call
from lab.procutil import wait_ready, wait_until, write_private
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.ceph import CephLab
from lab.services.daemon import Daemons, run_cli

CINDER_VENV = PROJECT_ROOT / ".venv-cinder"
SERVICES = ("cinder-api", "cinder-scheduler", "cinder-volume")
CINDER_HOST = "lab"  # the [DEFAULT] host: volume hosts are lab@<array>#<pool>
EXTENSIONS = ("cinder.api.contrib.standard_extensions", EXTENSION_CLASS)
ASYNC_RBD_DRIVER = "include.cinder_plugin.ceph_driver.AsyncRBDDriver"  # Cinder's RBDDriver plus the takeover
STOCK_RBD_DRIVER = "cinder.volume.drivers.rbd.RBDDriver"  # Cinder's own, unmodified, as a cloud runs it
# Ceph backend -> its driver: ceph-hdd and ceph-ssd take volumes over by RBD live migration; ceph-stock is a
# backend as a cloud without the plugin's drivers has it (its moves are Cinder's RBD driver's own)
RBD_DRIVERS = {"ceph-hdd": ASYNC_RBD_DRIVER, "ceph-ssd": ASYNC_RBD_DRIVER, "ceph-stock": STOCK_RBD_DRIVER}
VOLUME_MANAGER = MANAGER_CLASS  # Cinder's, plus the blueprint's steps
DEFAULT_ZONE = "nova"  # Cinder's own default name; the zone of a volume created without one: Ceph's pools
DEFAULT_TYPE = "__DEFAULT__"  # Cinder's own default volume type: pins no backend


class CinderLab(Daemons):
    """Cinder's services under ``root``, each ``<root>/<service>.pid`` (cinder-volume's children go with it)."""

    names = SERVICES

    def __init__(self, root: Path, lab: Lab, services: Any, ceph: CephLab | None = None) -> None:
        super().__init__(root)
        self.lab = lab
        self.services = services
        self.ceph = ceph
        self.conf_path = self.root / "cinder.conf"
        # where Cinder's programs come from: .venv-cinder with the project's tree on PYTHONPATH for the plugin (the
        # lab's way), or a virtualenv with the Cinder side's wheel installed (make_plugin_venv), without it
        self.venv = CINDER_VENV

    def backends(self) -> list[str]:
        """Every backend of cinder.conf: the lab's arrays, then Ceph's pools."""
        return [*self.lab.names(), *(CEPH_POOLS if self.ceph else ())]

    @staticmethod
    def zone_of(backend: str) -> str:
        """The availability zone a backend serves: a lab array its own, a Ceph pool the default."""
        return DEFAULT_ZONE if backend in CEPH_POOLS else backend

    # ---- configuration -------------------------------------------------------------
    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def configure(self) -> None:
        """(Re)write cinder.conf and the arrays' token files from the lab's current state."""
        for sub in ("state", "locks", "log", "tokens"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "tokens", 0o700)
        arrays = self.lab.names()
        cinder = self.services.credentials("cinder")
        privsep = f"{self.bin('privsep-helper')} --config-file {self.conf_path}"
        lines = [
            "[DEFAULT]",
            f"host = {CINDER_HOST}",
            f"state_path = {self.root / 'state'}",
            f"log_dir = {self.root / 'log'}",
            f"transport_url = {self.services.transport_url()}",
            "auth_strategy = keystone",
            f"enabled_backends = {','.join(self.backends())}",
            f"osapi_volume_listen = {HOST}",
            f"osapi_volume_listen_port = {self.services.cinder_api_port}",
            "osapi_volume_workers = 1",
            *(f"osapi_volume_extension = {ext}" for ext in EXTENSIONS),
            f"volume_manager = {VOLUME_MANAGER}",
            f"rootwrap_config = {self.venv / 'etc' / 'cinder' / 'rootwrap.conf'}",
            f"api_paste_config = {self.venv / 'etc' / 'cinder' / 'api-paste.ini'}",
            "report_interval = 5",
            "service_down_time = 30",
            # pool stats (read from the arrays, so they follow a takeover) reach the scheduler within seconds
            "periodic_interval = 5",
            "periodic_fuzzy_delay = 0",
            "backend_stats_polling_interval = 5",
            # the filters a member may use in listings (cinder list --name), as a packaged Cinder installs them
            f"resource_query_filters_file = {self.venv / 'etc' / 'cinder' / 'resource_filters.json'}",
            f"storage_availability_zone = {DEFAULT_ZONE}",
            f"default_availability_zone = {DEFAULT_ZONE}",
            f"default_volume_type = {DEFAULT_TYPE}",
            "",
            "[database]",
            f"connection = {self.services.database_url('cinder')}",
            "",
            "[keystone_authtoken]",
            f"www_authenticate_uri = {cinder['auth_url']}",
            f"auth_url = {cinder['auth_url']}",
            "auth_type = password",
            f"username = {cinder['username']}",
            f"password = {cinder['password']}",
            f"project_name = {cinder['project_name']}",
            f"user_domain_name = {cinder['user_domain_name']}",
            f"project_domain_name = {cinder['project_domain_name']}",
            "",
            "[oslo_concurrency]",
            f"lock_path = {self.root / 'locks'}",
            "",
            "[privsep_osbrick]",
            f"helper_command = {privsep}",
            "",
            "[cinder_sys_admin]",
            f"helper_command = {privsep}",
        ]
        for name in arrays:
            config = self.lab.config(name)
            token_file = self.root / "tokens" / name
            write_private(token_file, config.token)
            driver = "ReferenceArrayDriver" if config.kind == "reference" else "PlainArrayDriver"
            lines += [
                "",
                f"[{name}]",
                f"volume_driver = include.cinder_plugin.drivers.{driver}",
                f"volume_backend_name = {name}",
                f"backend_availability_zone = {self.zone_of(name)}",
                f"lab_array_name = {name}",
                f"lab_array_url = {config.url}",
                f"lab_array_token_file = {token_file}",
            ]
        for backend, pool in CEPH_POOLS.items() if self.ceph else ():
            lines += [
                "",
                f"[{backend}]",
                f"volume_driver = {RBD_DRIVERS[backend]}",
                f"volume_backend_name = {backend}",
                f"backend_availability_zone = {self.zone_of(backend)}",
                f"rbd_pool = {pool}",
                f"rbd_ceph_conf = {self.ceph.conf_path}",
                # no rbd_user: the cluster has no authentication, so a host that opens a volume (os-brick's RBD
                # connector, for the host copy) needs no keyring (with a user it reads /etc/ceph's keyring for it)
            ]
        write_private(self.conf_path, "\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        if self.venv == CINDER_VENV:  # the plugin from the tree
            env["PYTHONPATH"] = str(PROJECT_ROOT)
        else:
            env.pop("PYTHONPATH", None)
        return env

    def manage(self, *args: str, timeout: float = 300) -> str:
        """Run ``cinder-manage`` on our configuration (logged to ``log/cinder-manage.out``)."""
        cmd = [self.bin("cinder-manage"), "--config-file", str(self.conf_path), *args]
        log = self.root / "log" / "cinder-manage.out"
        return run_cli(cmd, log, timeout=timeout, env=self.env(), what=f"cinder-manage {' '.join(args)}")

    # ---- processes --------------------------------------------------------------
    def log_path(self, service: str) -> Path:
        return self.root / "log" / f"{service}.out"

    def command(self, service: str) -> list[str]:
        return [self.bin(service), "--config-file", str(self.conf_path)]

    def up(self, timeout: float = 120.0) -> dict[str, int]:
        self.configure()
        self.manage("db", "sync")
        pids = self.start_all()
        expected = {f"{CINDER_HOST}@{name}" for name in self.backends()}
        last: dict[str, Any] = {}

        def ready() -> bool:
            last.update(self.service_states())
            return all(last.get(("cinder-volume", host)) for host in expected) and bool(
                last.get(("cinder-scheduler", CINDER_HOST))
            )

        wait_ready(
            ready, pids=pids, timeout=timeout, what="Cinder services", log=self.root / "log", interval=1.0, seen=last
        )
        self.check_extension()
        self.ensure_volume_types()
        return pids

    def check_extension(self, timeout: float = 60.0) -> None:
        """Fail loudly if the async-migration extension did not load (Cinder only logs a warning)."""
        token, body = self.services.token("admin")
        url = f"http://{HOST}:{self.services.cinder_api_port}/v3/{body['project']['id']}/extensions"
        aliases: set[str] = set()

        def listed() -> bool:
            try:
                status, _, raw = http_call("GET", url, headers={"X-Auth-Token": token}, timeout=10)
            except OSError:  # the API is still starting
                return False
            if status != 200:
                return False
            aliases.update(e["alias"] for e in json.loads(raw)["extensions"])
            return True

        if not wait_until(listed, timeout, 1.0):
            raise LabError(f"cinder-api did not answer {url} within {timeout:.0f} s; see {self.root / 'log'}")
        if EXTENSION_ALIAS not in aliases:
            raise LabError(
                f"Cinder did not load the {EXTENSION_ALIAS} extension; see {self.root / 'log' / 'cinder-api.log'}"
            )

    def admin_call(self, method: str, path: str, body: Any = None) -> Any:
        """One call to Cinder's API as the lab's admin (``path`` below ``/v3/<project>``); its JSON answer."""
        token, scope = self.services.token("admin")
        url = f"http://{HOST}:{self.services.cinder_api_port}/v3/{scope['project']['id']}{path}"
        status, _, raw = http_call(method, url, body=body, headers={"X-Auth-Token": token}, timeout=60)
        if status >= 400:
            raise LabError(f"Cinder answered {method} {path} with HTTP {status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def ensure_volume_types(self) -> None:
        """A public volume type per backend, named like it, that pins it and names its zone (made once)."""
        have = {t["name"] for t in self.admin_call("GET", "/types?is_public=None")["volume_types"]}
        for backend in self.backends():
            if backend not in have:
                specs = {"volume_backend_name": backend, "RESKEY:availability_zones": self.zone_of(backend)}
                self.admin_call("POST", "/types", {"volume_type": {"name": backend, "extra_specs": specs}})

    def down(self) -> dict[str, bool]:
        return self.stop_all()

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [{"service": service, "pid": self.pid(service)} for service in SERVICES]
        if self.conf_path.exists() and self.pid("cinder-api"):
            try:
                rows += [
                    {"service": binary, "host": host, "up": up} for (binary, host), up in self.service_states().items()
                ]
            except LabError as exc:
                rows.append({"error": str(exc)})
        return rows

    def service_states(self) -> dict[tuple[str, str], bool]:
        """(binary, host) -> up, from ``cinder-manage service list``."""
        states = {}
        for line in self.manage("service", "list", timeout=60).splitlines()[1:]:
            fields = re.split(r"\s+", line.strip())
            if len(fields) >= 5:
                binary, host, state = fields[0], fields[1], fields[4]
                states[(binary, host)] = state == ":-)"
        return states


def make_plugin_venv(venv: Path, wheel: Path) -> Path:
    """A fresh virtualenv that runs Cinder with the Cinder side installed from ``wheel``, not from the tree.

    Cinder and its dependencies are the lab's (``.venv-cinder``'s site-packages, added with ``site.addsitedir``
    by a ``.pth`` file: installing Cinder again would take minutes and prove nothing of the wheel); the wheel is
    installed into the new environment's own site-packages with pip, and Cinder's programs are made there,
    pointing at its interpreter. Returns ``venv``.
    """
    log = venv.parent / f"{venv.name}.log"
    run_cli(["/usr/bin/python3", "-m", "venv", str(venv)], log, timeout=120, what="python3 -m venv")
    python = venv / "bin" / "python"
    site = run_cli([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], log,
                   timeout=30).strip()  # fmt: skip
    cinder_site = next((CINDER_VENV / "lib").glob("python3*/site-packages"))
    Path(site, "lab-cinder.pth").write_text(f"import site; site.addsitedir({str(cinder_site)!r})\n")
    run_cli([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", str(wheel)],
            log, timeout=300, what="pip install the Cinder side's wheel")  # fmt: skip
    for program in (*SERVICES, "cinder-manage", "privsep-helper"):
        source = (CINDER_VENV / "bin" / program).read_text().splitlines()
        script = venv / "bin" / program
        script.write_text("\n".join([f"#!{python}", *source[1:]]) + "\n")
        script.chmod(0o755)
    etc = venv / "etc"
    if not etc.exists():
        etc.symlink_to(CINDER_VENV / "etc")
    return venv
