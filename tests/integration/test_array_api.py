"""Bad input gets a clear error from the arrays and changes nothing; LUN lifecycle and pool moves."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from include.backends.array_api import ReferenceArrayBackend
from include.backends.base import Destination, GiB, MiB, Volume
from include.backends.errors import BackendError, Conflict, InvalidRequest, NotFound, PoolFull, Unauthorized
from lab import procutil, verify
from tests.conftest import finish_and_remove

pytestmark = pytest.mark.integration


def snapshot(backend):
    caps = backend.capabilities()
    return caps.pools, backend.list_luns()


@pytest.fixture(params=["alpha", "gamma"])
def array(request, lab):
    return request.param, lab.backend(request.param)


def refused(backend, error, match, call, *args):
    before = snapshot(backend)
    with pytest.raises(error, match=match):
        call(*args)
    assert snapshot(backend) == before, "a refused request changed the array"


def test_unknown_lun_and_pool(array, lun_name):
    _, backend = array
    refused(backend, NotFound, "no LUN named", backend.delete_lun, lun_name)
    refused(backend, NotFound, "no LUN named", backend.extend_lun, lun_name, GiB)
    refused(backend, NotFound, "no LUN named", backend.export_lun, lun_name)
    refused(backend, NotFound, "no LUN named", backend.export_for_takeover, lun_name, "alpha")
    refused(backend, NotFound, "no pool 'nope'", backend.create_lun, lun_name, GiB, "nope")


def test_full_pool(array, lun_name):
    _, backend = array
    free = backend.capabilities().pool("pool1").free_bytes
    refused(backend, PoolFull, "pool pool1 .* bytes free", backend.create_lun, lun_name, free + GiB, "pool1")


def test_malformed_requests(array, lun_name):
    _, backend = array
    refused(backend, InvalidRequest, "'size' must be a positive", backend.create_lun, lun_name, -1, "pool1")
    refused(backend, InvalidRequest, "multiple of 512", backend.create_lun, lun_name, 1000, "pool1")
    refused(backend, InvalidRequest, "'name' must be", backend.create_lun, "bad name/..", MiB, "pool1")
    refused(
        backend, InvalidRequest, "'pool' must be", backend.request, "POST", "/v1/luns", {"name": lun_name, "size": MiB}
    )
    refused(backend, NotFound, "no such API path", backend.request, "GET", "/v1/nothing")
    # a body that is not JSON at all
    req = urllib.request.Request(backend.url + "/v1/luns", data=b"{not json", method="POST")
    req.add_header("Authorization", f"Bearer {backend._token}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    assert "not valid JSON" in json.loads(err.value.read())["message"]


def test_wrong_or_missing_credential(array, lab, lun_name):
    name, backend = array
    for token in ("wrong-token", ""):
        intruder = type(backend)(name, backend.url, token)
        with pytest.raises(Unauthorized, match="API token"):
            intruder.create_lun(lun_name, MiB, "pool1")
        with pytest.raises(Unauthorized):
            intruder.list_luns()
    assert all(lun["name"] != lun_name for lun in backend.list_luns())


def test_unreachable_array_is_a_clear_error():
    backend = ReferenceArrayBackend("nowhere", "http://127.0.0.1:9", "token", timeout=2)
    with pytest.raises(BackendError, match="array nowhere at http://127.0.0.1:9 is unreachable"):
        backend.capabilities()


def test_lun_under_takeover_is_protected(lab, make_lun, lun_name):
    gamma, alpha, beta = lab.backend("gamma"), lab.backend("alpha"), lab.backend("beta")
    make_lun("gamma", lun_name, 16 * MiB)
    volume = Volume(lun_name, 16 * MiB)
    alpha.migrate_volume_target(volume, gamma, pool="pool1", speed_bps=MiB)
    # the source: no delete, no extend, no second takeover by another array
    refused(gamma, Conflict, "exported for takeover by array alpha", gamma.delete_lun, lun_name)
    refused(gamma, Conflict, "exported for takeover by array alpha", gamma.extend_lun, lun_name, 32 * MiB)
    refused(
        gamma, Conflict, "already exported for takeover by array alpha", gamma.export_for_takeover, lun_name, "beta"
    )
    with pytest.raises(Conflict, match="already exported for takeover"):
        beta.migrate_volume_target(volume, gamma, pool="pool1")
    assert all(lun["name"] != lun_name for lun in beta.list_luns())
    refused(gamma, Conflict, "being taken over by array alpha", gamma.export_lun, lun_name)
    # the target: no extend, delete or move while the data is copied
    refused(alpha, Conflict, "still being copied", alpha.extend_lun, lun_name, 32 * MiB)
    refused(alpha, Conflict, "still being copied", alpha.delete_lun, lun_name)
    refused(
        alpha, Conflict, "still being copied", alpha.request, "POST", f"/v1/luns/{lun_name}/move", {"pool": "pool2"}
    )
    # a takeover with a size that does not match the source LUN
    refused(
        beta, InvalidRequest, "source LUN is", beta.request, "POST", "/v1/takeovers",
        {"name": "other", "pool": "pool1", "size": 8 * MiB,
         "source": {"host": "127.0.0.1", "port": lab.config("gamma").nbd_port, "export": lun_name, "array": "gamma"}},
    )  # fmt: skip
    finish_and_remove(alpha, volume)


def test_create_extend_export_delete(array, lun_name):
    _, backend = array
    backend.create_lun(lun_name, 8 * MiB, "pool1")
    try:
        refused(backend, Conflict, "already has a LUN", backend.create_lun, lun_name, 8 * MiB, "pool1")
        refused(backend, InvalidRequest, "shrinking", backend.extend_lun, lun_name, 4 * MiB)
        assert backend.extend_lun(lun_name, 16 * MiB)["size"] == 16 * MiB
        info = backend.export_lun(lun_name)
        assert backend.export_lun(lun_name) == info  # idempotent
        handle = verify.connect(info.uri)
        assert handle.get_size() == 16 * MiB
        handle.pwrite(b"x" * 4096, 15 * MiB)
        handle.flush()
        handle.shutdown()
        refused(backend, Conflict, "exported to a server", backend.delete_lun, lun_name)
        refused(backend, Conflict, "exported to a server", backend.export_for_takeover, lun_name, "beta")
        backend.unexport_lun(lun_name)
        backend.unexport_lun(lun_name)  # idempotent
    finally:
        backend.delete_lun(lun_name)
    assert all(lun["name"] != lun_name for lun in backend.list_luns())


def test_pool_move_keeps_data_and_serves_during_move(lab, make_lun, lun_name):
    alpha = lab.backend("alpha")
    data = make_lun("alpha", lun_name, 32 * MiB, pool="pool1")
    before = {p.name: p.free_bytes for p in alpha.capabilities().pools}
    handle = verify.connect(alpha.export_lun(lun_name).uri)
    moved, update = alpha.migrate_volume(Volume(lun_name, 32 * MiB), Destination("alpha", "pool2"))
    assert moved and update["pool"] == "pool2"
    # the server export followed the move: same connection, same data
    assert verify.read_all(handle, 32 * MiB) == data
    handle.shutdown()
    after = {p.name: p.free_bytes for p in alpha.capabilities().pools}
    assert after["pool1"] == before["pool1"] + 32 * MiB and after["pool2"] == before["pool2"] - 32 * MiB
    images = list((lab.config("alpha").state_dir / "pools").glob(f"*/{lun_name}.*.qcow2"))
    assert [p.parent.name for p in images] == ["pool2"]
    # another array, or the pool it is already in: not this backend's move
    assert alpha.migrate_volume(Volume(lun_name, 32 * MiB), Destination("beta", "pool1")) == (False, None)
    refused(alpha, InvalidRequest, "already in pool pool2", alpha.request, "POST", f"/v1/luns/{lun_name}/move",
            {"pool": "pool2"})  # fmt: skip
    alpha.unexport_lun(lun_name)


def test_plain_array_has_no_migration_features(lab, lun_name):
    gamma, alpha = lab.backend("gamma"), lab.backend("alpha")
    caps = gamma.capabilities()
    assert (caps.takeover, caps.pool_move) == (False, False)
    volume = Volume(lun_name, MiB)
    assert gamma.migrate_volume(volume, Destination("gamma", "pool1")) == (False, None)
    assert gamma.migrate_volume_target(volume, alpha, pool="pool1") == (False, False, None)


def test_reference_array_opens_its_images_with_o_direct(lab, lun_name):
    """direct_io (the default): the daemon's file descriptor of a LUN's image bypasses the page cache."""
    alpha = lab.backend("alpha")
    alpha.create_lun(lun_name, 64 * MiB, "pool1")
    try:
        daemon = procutil.descendant_named(lab.pid("alpha"), ("qemu-storage",))
        image = lab.array_dir("alpha") / "pools" / "pool1" / f"{lun_name}.0.qcow2"
        fds = [fd for fd in os.listdir(f"/proc/{daemon}/fd") if os.readlink(f"/proc/{daemon}/fd/{fd}") == str(image)]
        assert fds, f"qemu-storage-daemon {daemon} has no descriptor of {image}"
        for fd in fds:
            info = Path(f"/proc/{daemon}/fdinfo/{fd}").read_text().splitlines()
            flags = next(line for line in info if line.startswith("flags:"))
            assert int(flags.split()[1], 8) & os.O_DIRECT, f"{image} opened without O_DIRECT: {flags.strip()}"
    finally:
        alpha.delete_lun(lun_name)
