"""Prometheus in the lab: Debian's ``prometheus`` scraping the operator view's ``/volume-migration/metrics``.

``PrometheusLab(root, airflow)`` runs one server on 127.0.0.1 (a free port,
its data under ``root``) that scrapes the lab's api-server every
``SCRAPE_S`` seconds with the scrape token (``AirflowLab.metrics_token_path``,
as a bearer token read from that file: never in the config), and answers
PromQL at ``query`` (``/api/v1/query``). Started by the tests that need it
(``tests/integration/test_metrics.py``) and by ``lab prometheus``; stopped by
PID with its tree.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lab.env import HOST, free_port
from lab.errors import LabError
from lab.procutil import wait_ready
from lab.services.daemon import Daemons

SCRAPE_S = 2  # the lab's migrations take seconds: look often
JOB = "volume_migration"


class PrometheusLab(Daemons):
    names = ("prometheus",)

    def __init__(self, root: Path, airflow: Any) -> None:
        super().__init__(root)
        self.airflow = airflow
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> str:
        target = urllib.parse.urlsplit(self.airflow.url).netloc
        return json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "metrics_path": "/volume-migration/metrics",
                        "static_configs": [{"targets": [target]}],
                        "authorization": {"type": "Bearer", "credentials_file": str(self.airflow.metrics_token_path)},
                    }
                ],
            },
            indent=1,
        )

    def command(self, name: str) -> list[str]:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        return [
            binary,
            f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]

    def up(self, timeout: float = 60.0) -> None:
        """Start it and wait until its scrape of the api-server succeeded once."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "prometheus.yml").write_text(self.config() + "\n")
        pids = self.start_all()
        wait_ready(self.scraped, pids=pids, timeout=timeout, what="prometheus's first scrape",
                   log=self.log_path("prometheus"), interval=0.5)  # fmt: skip

    def down(self) -> bool:
        return all(self.stop_all().values())

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise LabError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def scraped(self) -> bool:
        """The api-server's target is up (its last scrape succeeded)."""
        try:
            targets = self.get("/api/v1/targets")["activeTargets"]
        except (OSError, LabError):
            return False
        return any(t["labels"].get("job") == JOB and t["health"] == "up" for t in targets)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query: ``[{"metric": {labels}, "value": [time, "value"]}, ...]``."""
        return self.get("/api/v1/query", query=expr)["result"]
