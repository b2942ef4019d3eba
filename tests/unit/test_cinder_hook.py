"""CinderHook: session from a Connection, retries only on transient faults, no secrets in logs.

The fake is at one boundary: the keystoneauth session's ``request``.
"""

from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk import Connection
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity import v3

from include.migration.errors import CinderError
from plugins.hooks.cinder import API_VERSION, CinderHook

SECRET = "s3cret-pa55"


class FakeResponse:
    def __init__(self, status: int, body: dict | None = None):
        self.status_code = status
        self.content = b"" if body is None else json.dumps(body).encode()
        self._body = body

    def json(self):
        return self._body


class ScriptedSession:
    """Answers each request with the next item: a FakeResponse, or an exception to raise."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def request(self, url, method, **kwargs):
        self.calls.append((method, url, kwargs))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        if item.status_code >= 400:
            raise http_error(item.status_code, item._body)
        return item


def http_error(status, body):
    cls = ks_exc.HttpError
    for sub in (ks_exc.BadRequest, ks_exc.NotFound, ks_exc.Conflict, ks_exc.ServiceUnavailable,
                ks_exc.InternalServerError, ks_exc.Forbidden):  # fmt: skip
        if sub.http_status == status:
            cls = sub
    exc = cls(message=f"HTTP {status}", http_status=status)
    exc.response = FakeResponse(status, body)
    return exc


def make_hook(script, **extra):
    hook = CinderHook("cinder_lab", retry_attempts=4, retry_seconds=30)
    hook.__dict__["_conn"] = Connection(
        conn_id="cinder_lab",
        conn_type="openstack_cinder",
        host="http://127.0.0.1:5000/v3",
        login="admin",
        password=SECRET,
        extra=json.dumps({"project_name": "admin", **extra}),
    )
    hook.__dict__["session"] = ScriptedSession(script)
    return hook


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda s: None)


def test_session_from_connection_password_and_application_credential():
    hook = CinderHook("x")
    hook.__dict__["_conn"] = Connection(
        conn_id="x", conn_type="openstack_cinder", host="http://ks/v3", login="u", password=SECRET,
        extra=json.dumps({"project_name": "p", "ca_file": "/etc/ca.pem", "region_name": "R", "interface": "internal"}),
    )  # fmt: skip
    assert isinstance(hook.session.auth, v3.Password)
    assert hook.session.verify == "/etc/ca.pem"
    assert hook.endpoint_filter == {"service_type": "block-storage", "interface": "internal", "region_name": "R"}
    app = CinderHook("y")
    app.__dict__["_conn"] = Connection(
        conn_id="y", conn_type="openstack_cinder", host="http://ks/v3", password=SECRET,
        extra=json.dumps({"application_credential_id": "abc", "insecure": True}),
    )  # fmt: skip
    assert isinstance(app.session.auth, v3.ApplicationCredential)
    assert app.session.verify is False


def test_pinned_microversion_and_action_body():
    hook = make_hook([FakeResponse(202)])
    hook.begin_migration("vol-1", "lab@beta#pool1")
    method, url, kwargs = hook.session.calls[0]
    assert (method, url) == ("POST", "/volumes/vol-1/action")
    assert kwargs["json"] == {"os-async_migration_begin": {"host": "lab@beta#pool1"}}
    assert kwargs["headers"] == {"OpenStack-API-Version": f"volume {API_VERSION}"}


def test_4xx_is_raised_at_once_with_cinder_message():
    hook = make_hook([FakeResponse(409, {"conflictingRequest": {"message": "volume is migrating", "code": 409}})])
    with pytest.raises(CinderError, match="HTTP 409: volume is migrating") as err:
        hook.finish_migration("vol-1")
    assert err.value.status == 409
    assert len(hook.session.calls) == 1


def test_transient_faults_are_retried_then_succeed(caplog):
    caplog.set_level(logging.WARNING)
    hook = make_hook(
        [
            ks_exc.ConnectFailure("connection refused"),
            http_error(503, {"message": "restarting"}),
            http_error(500, None),
            FakeResponse(200, {"volume": {"id": "vol-1", "status": "available"}}),
        ]
    )
    assert hook.get_volume("vol-1")["status"] == "available"
    assert len(hook.session.calls) == 4
    assert "retrying" in caplog.text
    assert SECRET not in caplog.text


def test_retries_are_bounded():
    hook = make_hook([ks_exc.ConnectFailure("refused")] * 10)
    with pytest.raises(CinderError, match="unreachable after retries") as err:
        hook.get_volume("vol-1")
    assert len(hook.session.calls) == 4
    assert SECRET not in str(err.value)


def test_a_500_on_post_is_not_retried_but_a_503_is():
    hook = make_hook([http_error(500, {"message": "driver failed"})])
    with pytest.raises(CinderError, match="HTTP 500"):
        hook.request("POST", "/attachments", {"attachment": {}})
    assert len(hook.session.calls) == 1
    hook = make_hook([http_error(503, None), FakeResponse(202)])
    hook.begin_migration("vol-1", "lab@alpha#pool1")
    assert len(hook.session.calls) == 2


def test_token_cache_names_each_credential_by_a_file_name_even_when_its_digest_holds_a_slash(tmp_path):
    """keystoneauth's cache id is standard base64: a "/" in it once made the token unsaveable (a login per task)."""
    from plugins.hooks.cinder import TokenCache

    def password(secret):
        return v3.Password(auth_url="http://127.0.0.1:5000/v3", username="admin", password=secret,
                           project_name="admin", user_domain_id="default", project_domain_id="default")  # fmt: skip

    secret = next(f"pw-{i}" for i in range(200) if "/" in password(f"pw-{i}").get_cache_id())
    slashed = password(secret)
    body = {"token": {"expires_at": "2999-01-01T00:00:00.000000Z", "issued_at": "2026-01-01T00:00:00.000000Z",
                      "methods": ["password"]}}  # fmt: skip
    slashed.set_auth_state(json.dumps({"auth_token": "tok-slashed", "body": body}))
    folder = tmp_path / "keystone-tokens"
    TokenCache(folder).save(slashed)
    (kept,) = folder.iterdir()
    assert kept.parent == folder and (kept.stat().st_mode & 0o777, folder.stat().st_mode & 0o777) == (0o600, 0o700)

    again = password(secret)  # the next task's process: same credential, no token yet
    TokenCache(folder).load(again)
    assert again.get_auth_state() == slashed.get_auth_state()
    other = password(secret + "-rotated")  # a new password is another file: its token is not handed over
    TokenCache(folder).load(other)
    assert other.get_auth_state() is None
