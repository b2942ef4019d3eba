"""Airflow hook for a storage array's management API: which adapter serves a Cinder backend.

One Airflow Connection per Cinder backend, with the id ``storage_array_<backend>``
(``backend`` as in ``host@backend#pool``), type ``storage_array``:

* ``host``: the array's management URL (``http://127.0.0.1:18101``);
* ``password``: its API token;
* ``extra``: ``{"kind": "reference" | "plain", "array": "<array name>"}``
  (``array`` defaults to the backend name).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from include.backends.array_api import ArrayApiBackend, PlainArrayBackend, ReferenceArrayBackend
from plugins.provider_info import STORAGE_ARRAY_CONN_TYPE, STORAGE_ARRAY_HOOK_NAME

ADAPTERS: dict[str, type[ArrayApiBackend]] = {"reference": ReferenceArrayBackend, "plain": PlainArrayBackend}


def conn_id_for(backend: str) -> str:
    """The Connection id that describes a Cinder backend's array."""
    return f"storage_array_{backend}"


def adapter_from_connection(conn: Any) -> ArrayApiBackend:
    """Build the adapter a ``storage_array`` Connection describes; ValueError when it is incomplete."""
    conn_id = conn.conn_id
    extra = conn.extra_dejson or {}
    kind = extra.get("kind")
    if kind not in ADAPTERS:
        raise ValueError(f"connection {conn_id}: extra.kind must be one of {', '.join(ADAPTERS)}, got {kind!r}")
    if not conn.host or not conn.password:
        raise ValueError(f"connection {conn_id} needs host (the API URL) and password (token)")
    name = extra.get("array") or conn_id.removeprefix("storage_array_")
    return ADAPTERS[kind](name, conn.host, conn.password)


class StorageArrayHook(BaseHook):
    conn_name_attr = "storage_array_conn_id"
    conn_type = STORAGE_ARRAY_CONN_TYPE
    hook_name = STORAGE_ARRAY_HOOK_NAME

    def __init__(self, storage_array_conn_id: str) -> None:
        super().__init__()
        self.storage_array_conn_id = storage_array_conn_id

    @classmethod
    def for_backend(cls, backend: str) -> StorageArrayHook:
        return cls(conn_id_for(backend))

    @cached_property
    def adapter(self) -> ArrayApiBackend:
        """The backend driver adapter for this array; ValueError when the Connection is incomplete."""
        return adapter_from_connection(self.get_connection(self.storage_array_conn_id))

    async def aadapter(self) -> ArrayApiBackend:
        """The same, for a trigger's event loop (the connection is fetched asynchronously)."""
        return adapter_from_connection(await self.aget_connection(self.storage_array_conn_id))

    def get_conn(self) -> ArrayApiBackend:
        return self.adapter
