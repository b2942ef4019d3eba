"""What of Cinder's internals the plugin relies on, checked against the Cinder the project installs (``.venv-cinder``):
when Cinder moves it, this fails before a migration does.

* ``AsyncMigrationManager._connect_device`` (``include/cinder_plugin/manager.py``): ``VolumeManager``'s
  ``_connect_device(self, conn)`` returns ``{"conn", "device", "connector"}`` and is called by ``_attach_volume``;
  ``_detach_volume`` calls ``attach_info["connector"].disconnect_volume(conn data, attach_info["device"], ...)``.
* ``os-async_migration_begin`` (``include/cinder_plugin/extension.py``) writes the lock's state and keys in one
  transaction: ``cinder.db.api.main_context_manager`` is the enginefacade whose writers ``conditional_update``,
  ``volume_admin_metadata_update`` and ``volume_admin_metadata_delete`` are, so they join the transaction it opens.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lab.services.cinder import CINDER_VENV

pytestmark = pytest.mark.integration

PROBE = """
import inspect, json
from cinder import objects
objects.register_all()
from cinder.volume import manager
from cinder.db import api as db_api
vm = manager.VolumeManager
print(json.dumps({
    "params": list(inspect.signature(vm._connect_device).parameters),
    "connect": inspect.getsource(vm._connect_device),
    "attach": inspect.getsource(vm._attach_volume),
    "detach": inspect.getsource(vm._detach_volume),
    "db": inspect.getsource(db_api),
    "facade": type(db_api.main_context_manager).__name__,
}))
"""


def test_cinders_connect_and_detach_keep_the_contract_the_plugin_extends():
    run = subprocess.run([str(CINDER_VENV / "bin" / "python"), "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["params"] == ["self", "conn"]
    assert "return {'conn': conn, 'device': vol_handle, 'connector': connector}" in found["connect"]
    assert "self._connect_device(conn)" in found["attach"]
    assert "connector = attach_info['connector']" in found["detach"]
    assert "connector.disconnect_volume(attach_info['conn']['data'],\n" in found["detach"]
    assert "attach_info['device'], force=force)" in found["detach"]
    assert found["facade"] == "_TransactionContextManager"
    for writer in ("conditional_update(", "volume_admin_metadata_update(", "volume_admin_metadata_delete("):
        assert f"@main_context_manager.writer\ndef {writer}" in found["db"], writer
