"""StorageArrayHook: a Cinder backend's array adapter from an Airflow Connection (env var backend)."""

from __future__ import annotations

import json

import pytest

from include.backends.array_api import PlainArrayBackend, ReferenceArrayBackend
from plugins.hooks.storage_array import StorageArrayHook, conn_id_for


def set_conn(monkeypatch, backend, **conn):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id_for(backend).upper()}", json.dumps(conn))


def test_adapter_from_connection(monkeypatch):
    set_conn(monkeypatch, "alpha", conn_type="storage_array", host="http://127.0.0.1:1", password="tok-123456",
             extra={"kind": "reference"})  # fmt: skip
    set_conn(monkeypatch, "gamma", conn_type="storage_array", host="http://127.0.0.1:2", password="tok-654321",
             extra={"kind": "plain", "array": "gamma-1"})  # fmt: skip
    alpha = StorageArrayHook.for_backend("alpha").adapter
    assert isinstance(alpha, ReferenceArrayBackend) and (alpha.name, alpha.url) == ("alpha", "http://127.0.0.1:1")
    gamma = StorageArrayHook.for_backend("gamma").get_conn()
    assert isinstance(gamma, PlainArrayBackend) and gamma.name == "gamma-1"
    assert "tok-654321" not in repr(gamma)


def test_incomplete_connection_is_a_clear_error(monkeypatch):
    set_conn(monkeypatch, "beta", conn_type="storage_array", host="http://127.0.0.1:3", password="tok-000000")
    with pytest.raises(ValueError, match="extra.kind must be one of reference, plain"):
        StorageArrayHook.for_backend("beta").get_conn()
    set_conn(monkeypatch, "beta", conn_type="storage_array", extra={"kind": "plain"})
    with pytest.raises(ValueError, match="needs host"):
        StorageArrayHook.for_backend("beta").get_conn()
