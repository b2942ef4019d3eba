"""Airflow hook for OpenStack Cinder: the Connection, a Keystone session, bounded retries.

The calls themselves (volumes, the async-migration extension) are
``include.migration.cinder_api.CinderApi``'s, built on this hook's ``request``.

The Airflow Connection (type ``openstack_cinder``) holds:

* ``host``: the Keystone URL (``http://127.0.0.1:5000/v3``);
* ``login`` / ``password``: user name and password, or, with
  ``extra.application_credential_id``, ``password`` is the application
  credential's secret;
* ``extra`` (JSON): ``project_name``, ``user_domain_name`` (default
  ``Default``), ``project_domain_name`` (default ``Default``),
  ``region_name``, ``interface`` (default ``public``), ``ca_file`` or
  ``insecure``, ``api_version`` (default the pinned microversion).

Calls are retried with tenacity only when the fault is transient (connection
refused or reset, timeouts, 502/503/504 while a service restarts, and any 5xx
of an idempotent call), a bounded number of times within a bounded time; a
4xx is raised at once.
Credentials never appear in log lines or exception messages.

With ``token_cache`` (a folder), the Keystone token is kept there between
processes (``TokenCache``): the tasks of a run, and the runs of a bulk
rebalance, log in once per token lifetime instead of once per task.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import tenacity
from airflow.sdk import BaseHook
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError
from plugins.provider_info import CINDER_CONN_TYPE, CINDER_HOOK_NAME

log = logging.getLogger(__name__)

API_VERSION = "3.71"  # the highest microversion of Cinder 29, pinned
SERVICE_TYPE = "block-storage"
RETRY_ATTEMPTS = 8
RETRY_SECONDS = 120.0


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
NOT_PROCESSED = frozenset({502, 503, 504})  # the request did not reach a working service


def is_transient(exc: BaseException, method: str = "GET") -> bool:
    """Faults worth retrying: the service is restarting or the network hiccupped.

    Any 5xx is retried for idempotent methods; a POST only when the answer
    says the request was not processed (502, 503, 504), since a 500 may come
    after a side effect (an attachment reserved, say).
    """
    if isinstance(exc, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.RetriableConnectionFailure)):
        return True
    if isinstance(exc, ks_exc.HttpError):
        status = exc.http_status or 0
        return status in NOT_PROCESSED or (status >= 500 and method.upper() in IDEMPOTENT)
    return isinstance(exc, ConnectionError)  # e.g. a reset the session did not wrap


class TokenCache:
    """Keystone tokens kept on disk between processes: one file per credential, readable by its owner only.

    ``load`` installs the token a process before this one got (keystoneauth uses
    it while it is not about to expire, and logs in again by itself when
    Keystone refuses it, a revoked token say); ``save`` keeps the token this
    process holds, when it is a new one. The file is named after keystoneauth's
    digest of the credential in URL-safe base64 (a new password is a new file) and holds a live
    token: the folder is the workers' state folder, 0700. Every fault of the
    cache is logged and ignored: it costs a login, never a call.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._held: str | None = None

    def _path(self, auth: Any) -> Path | None:
        key = auth.get_cache_id()  # standard base64: may hold "/", which is no file name
        return self.folder / f"{key.replace('/', '_').replace('+', '-')}.json" if key else None

    def load(self, auth: Any) -> None:
        path = self._path(auth)
        if path is None:
            return
        try:
            state = path.read_text()
            auth.set_auth_state(state)
            self._held = state
        except FileNotFoundError:
            pass
        except Exception as exc:  # unreadable or not a token: log in as if there were none
            log.warning("Keystone token cache %s ignored: %s", path.name, type(exc).__name__)

    def save(self, auth: Any) -> None:
        state = auth.get_auth_state()
        path = self._path(auth)
        if not state or state == self._held or path is None:
            return
        tmp = None
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".token-")  # 0600
            with os.fdopen(fd, "w") as f:
                f.write(state)
            os.replace(tmp, path)
            self._held = state
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            log.warning("Keystone token not cached in %s: %s", self.folder, exc.strerror or type(exc).__name__)


class CinderHook(BaseHook, CinderApi):
    """Keystone session and Cinder client from an Airflow Connection; the calls are ``CinderApi``'s."""

    conn_name_attr = "cinder_conn_id"
    default_conn_name = "cinder_default"
    conn_type = CINDER_CONN_TYPE
    hook_name = CINDER_HOOK_NAME

    def __init__(self, cinder_conn_id: str = default_conn_name, *, retry_attempts: int = RETRY_ATTEMPTS,
                 retry_seconds: float = RETRY_SECONDS, token_cache: Path | None = None) -> None:  # fmt: skip
        super().__init__()
        self.cinder_conn_id = cinder_conn_id
        self.retry_attempts = retry_attempts
        self.retry_seconds = retry_seconds
        self.tokens = TokenCache(token_cache) if token_cache else None

    # ---- connection -----------------------------------------------------------------
    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.cinder_conn_id)

    async def aconnect(self) -> None:
        """Fetch the Connection from a trigger's event loop; the calls after it (in a thread) reuse it."""
        self.__dict__["_conn"] = await self.aget_connection(self.cinder_conn_id)

    @cached_property
    def _extra(self) -> dict[str, Any]:
        return self._conn.extra_dejson or {}

    @cached_property
    def session(self) -> ks_session.Session:
        conn, extra = self._conn, self._extra
        auth_url = conn.host or extra.get("auth_url")
        if not auth_url:
            raise CinderError(f"connection {self.cinder_conn_id} has no Keystone URL (host)")
        common = {
            "auth_url": auth_url,
            "project_name": extra.get("project_name"),
            "project_domain_name": extra.get("project_domain_name", "Default"),
        }
        if extra.get("application_credential_id"):
            auth = v3.ApplicationCredential(
                auth_url=auth_url,
                application_credential_id=extra["application_credential_id"],
                application_credential_secret=conn.password,
            )
        else:
            auth = v3.Password(
                username=conn.login,
                password=conn.password,
                user_domain_name=extra.get("user_domain_name", "Default"),
                **common,
            )
        if self.tokens:
            self.tokens.load(auth)
        verify: bool | str = True
        if extra.get("ca_file"):
            verify = extra["ca_file"]
        elif str(extra.get("insecure", "")).lower() in ("1", "true", "yes"):
            verify = False
        return ks_session.Session(auth=auth, verify=verify)

    @cached_property
    def endpoint_filter(self) -> dict[str, Any]:
        return {
            "service_type": SERVICE_TYPE,
            "interface": self._extra.get("interface", "public"),
            "region_name": self._extra.get("region_name"),
        }

    @cached_property
    def api_version(self) -> str:
        return str(self._extra.get("api_version") or API_VERSION)

    @cached_property
    def client(self) -> Any:
        """A python-cinderclient Client at the pinned microversion, on the same session."""
        from cinderclient import client as cinder_client

        return cinder_client.Client(
            self.api_version,
            session=self.session,
            interface=self.endpoint_filter["interface"],
            region_name=self.endpoint_filter["region_name"],
        )

    def get_conn(self) -> Any:
        return self.client

    # ---- transport --------------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """``CinderApi.request``, with bounded retries on transient faults."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: is_transient(exc, method)),
            stop=tenacity.stop_after_attempt(self.retry_attempts) | tenacity.stop_after_delay(self.retry_seconds),
            wait=tenacity.wait_exponential(multiplier=0.5, max=10),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            response = retrying(self._send, method, path, body)
        except ks_exc.HttpError as exc:
            raise CinderError(
                f"{method} {path}: HTTP {exc.http_status}: {self._detail(exc)}", exc.http_status
            ) from None
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.RetriableConnectionFailure) as exc:
            raise CinderError(f"{method} {path}: Cinder unreachable after retries: {type(exc).__name__}") from None
        finally:
            self._keep_token()
        return response.json() if response.content else None

    def _keep_token(self) -> None:
        session = self.__dict__.get("session")
        if self.tokens and session is not None:
            self.tokens.save(session.auth)

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        return self.session.request(
            path,
            method,
            json=body,
            endpoint_filter=self.endpoint_filter,
            headers={"OpenStack-API-Version": f"volume {self.api_version}"},
            raise_exc=True,
        )

    @staticmethod
    def _detail(exc: ks_exc.HttpError) -> str:
        try:
            body = exc.response.json()
            inner = next(iter(body.values())) if isinstance(body, dict) and body else body
            return str(inner.get("message", inner)) if isinstance(inner, dict) else str(inner)
        except Exception:  # not JSON
            return exc.message or "no detail"

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "http_status", None)
        log.warning(
            "Cinder call failed (%s%s), attempt %d of %d; retrying",
            type(exc).__name__,
            f" HTTP {status}" if status else "",
            state.attempt_number,
            self.retry_attempts,
        )
