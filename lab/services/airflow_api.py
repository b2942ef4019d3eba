"""Airflow's REST API (``/api/v2``) as the lab, the tests, the demo and operators' scripts use it.

``AirflowApi(base_url, user, password)`` logs in once (a JWT from the simple
auth manager's ``/auth/token``, renewed when it expires) and triggers, watches
and clears DAG runs, reads task logs and writes Connections.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from lab.errors import LabError
from lab.localhttp import http_call
from lab.procutil import wait_until

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowError(LabError):
    """Airflow's REST API refused a call (``status``: its HTTP status) or could not be reached (None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AirflowApi:
    """Airflow's REST API (``/api/v2``) with a JWT from ``/auth/token``."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r}, user={self.username!r})"

    def _send(self, method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            status, _, raw = http_call(method, url, body=body, headers=headers, timeout=self.timeout)
        except OSError as exc:
            raise AirflowError(f"Airflow API at {self.base_url} unreachable: {getattr(exc, 'reason', exc)}") from None
        return status, raw

    def token(self) -> str:
        if self._token is None:
            status, raw = self._send(
                "POST", f"{self.base_url}/auth/token", {"username": self.username, "password": self._password}, {}
            )
            if status >= 300:
                raise AirflowError(f"POST /auth/token: HTTP {status}: {raw[:300]!r}")
            self._token = json.loads(raw)["access_token"]
        return self._token

    def request(
        self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (), under: str = "/api/v2"
    ) -> Any:
        """One call below ``under`` (Airflow's API; a plugin's app, say ``/volume-migration``); an HTTP error not
        in ``ok`` raises AirflowError with the API's detail."""
        url = f"{self.base_url}{under}{path}"
        status, raw = self._send(method, url, body, {"Authorization": f"Bearer {self.token()}"})
        if status == 401 and self._token:  # expired: once more with a new token
            self._token = None
            status, raw = self._send(method, url, body, {"Authorization": f"Bearer {self.token()}"})
        if status >= 300 and status not in ok:
            try:
                detail = json.loads(raw).get("detail", raw)
            except (ValueError, AttributeError):
                detail = raw[:500]
            raise AirflowError(f"{method} {under}{path}: HTTP {status}: {detail}", status)
        return json.loads(raw) if raw else None

    # ---- runs ---------------------------------------------------------------------------
    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if note:
            body["note"] = note
        return self.request("POST", f"/dags/{self._q(dag_id)}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float, interval: float = 1.0) -> dict[str, Any]:
        """Poll until the run ends; AirflowError after ``timeout`` seconds."""
        run: dict[str, Any] = {}

        def ended() -> bool:
            run.update(self.run(dag_id, run_id))
            return run["state"] in TERMINAL_RUN_STATES

        if not wait_until(ended, timeout, interval):
            raise AirflowError(f"run {run_id} of {dag_id} still {run['state']} after {timeout:.0f} s")
        return run

    def clear_run(self, dag_id: str, run_id: str) -> list[str]:
        """Clear every task of a run (it runs again from the start); returns the cleared task ids."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True}
        answer = self.request("POST", f"/dags/{self._q(dag_id)}/clearTaskInstances", body)
        return [ti["task_id"] for ti in answer.get("task_instances", [])]

    def delete_run(self, dag_id: str, run_id: str) -> None:
        """Delete the run and its task instances (as an operator may, by mistake)."""
        self.request("DELETE", f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}")

    def mark_run(self, dag_id: str, run_id: str, state: str, attempts: int = 5) -> None:
        """Set the run's state (``failed``, ``success``, ``queued``) as an operator may in the UI. Again after an
        HTTP 500: the API server answers "Database error" when the scheduler updates the same rows at that moment
        (seen under load), and nothing was changed."""
        for attempt in range(1, attempts + 1):
            try:
                self.request("PATCH", f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}", {"state": state})
                return
            except AirflowError as exc:
                if exc.status != 500 or attempt == attempts:
                    raise
                time.sleep(1.0)

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Set a task's state (``failed``, ``success``) as an operator may in the UI; a running task is stopped."""
        path = f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
        self.request("PATCH", path, {"new_state": state})

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> list[str]:
        """Clear these tasks of a run (a running one is stopped and runs again); returns the cleared task ids."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "task_ids": task_ids}
        answer = self.request("POST", f"/dags/{self._q(dag_id)}/clearTaskInstances", body)
        return [ti["task_id"] for ti in answer.get("task_instances", [])]

    def runs(self, dag_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The DAG's runs, newest first (at most ``limit``)."""
        path = f"/dags/{self._q(dag_id)}/dagRuns?limit={limit}&order_by=-run_after"
        return self.request("GET", path)["dag_runs"]

    def count_task_instances(self, dag_id: str, run_id: str, task_id: str, state: str) -> int:
        """How many task instances of ``task_id`` (all its mapped ones) are in ``state``."""
        path = f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances"
        query = f"?task_id={self._q(task_id)}&state={self._q(state)}&limit=1"
        return int(self.request("GET", path + query)["total_entries"])

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        path = f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances"
        return {ti["task_id"]: ti for ti in self.request("GET", path)["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value, deserialized."""
        path = (
            f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
            f"/xcomEntries/{self._q(key)}?deserialize=true"
        )
        value = self.request("GET", path)["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value

    def asset_events(self, source_dag_id: str, source_run_id: str) -> list[dict[str, Any]]:
        """The asset events a run emitted."""
        query = urllib.parse.urlencode({"source_dag_id": source_dag_id, "source_run_id": source_run_id})
        return self.request("GET", f"/assets/events?{query}")["asset_events"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log of one try, as text (one line per event)."""
        path = (
            f"/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
            f"/logs/{try_number}?full_content=true"
        )
        content = self.request("GET", path).get("content") or []
        lines = []
        for item in content if isinstance(content, list) else [content]:
            if isinstance(item, dict):
                extra = {k: v for k, v in item.items() if k not in ("timestamp", "event", "level", "logger")}
                lines.append(f"{item.get('level', '')} {item.get('event', '')} {extra if extra else ''}".rstrip())
            else:
                lines.append(str(item))
        return "\n".join(lines)

    # ---- connections ----------------------------------------------------------------------
    def event_logs(self, dag_id: str, run_id: str, event_prefix: str = "") -> list[dict[str, Any]]:
        """Airflow's audit log (the UI's Browse -> Audit Log) for one run, oldest first."""
        path = f"/eventLogs?dag_id={self._q(dag_id)}&run_id={self._q(run_id)}&order_by=id&limit=100"
        logs = self.request("GET", path)["event_logs"]
        return [e for e in logs if e["event"].startswith(event_prefix)]

    def set_connection(self, conn_id: str, conn_type: str, **fields: Any) -> None:
        """Create or replace a Connection (``extra`` may be a dict)."""
        body = {"connection_id": conn_id, "conn_type": conn_type, **fields}
        if isinstance(body.get("extra"), dict):
            body["extra"] = json.dumps(body["extra"])
        answer = self.request("POST", "/connections", body, ok=(409,))
        if answer and "connection_id" not in answer:  # 409: it exists
            self.request("PATCH", f"/connections/{self._q(conn_id)}", body)

    def connections(self) -> dict[str, str]:
        """Every Connection's id -> its type."""
        answer = self.request("GET", "/connections?limit=1000")
        return {c["connection_id"]: c["conn_type"] for c in answer["connections"]}

    def delete_connection(self, conn_id: str) -> None:
        self.request("DELETE", f"/connections/{self._q(conn_id)}", ok=(404,))
