"""The lab's Cinder configured as a cloud is (issue 24, item 2): a volume created with neither zone nor type is
served (by the default zone: Ceph's pools); Cinder's own ``resource_filters.json`` is installed, so a member's
listing filtered by name is filtered at the oldest microversion and at a recent one (without it, unfiltered
below 3.33 and refused from 3.33 on); each backend's volume type places a volume on it, and a volume whose type
pins its backend is refused a move elsewhere by the project as by Cinder's own scheduler."""

from __future__ import annotations

import json
import uuid

import pytest

from include.migration import validation
from include.migration.errors import MigrationRefused
from include.migration.flow import backend_of
from lab.env import HOST
from lab.localhttp import http_call
from lab.procutil import wait_until
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import DEFAULT_TYPE, DEFAULT_ZONE
from tests.integration.conftest import wait_status

pytestmark = pytest.mark.integration


def as_member(services, method, path, body=None, microversion="3.0"):
    token, scope = services.token("member")
    url = f"http://{HOST}:{services.cinder_api_port}/v3/{scope['project']['id']}{path}"
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": f"volume {microversion}"}
    status, _, raw = http_call(method, url, headers=headers, body=body, timeout=60)
    assert status in (200, 202), f"{method} {path} at {microversion}: HTTP {status}: {raw[:300]!r}"
    return json.loads(raw) if raw else None


def test_a_members_listing_filters_by_name_at_every_microversion(services, admin):
    names = [f"cloud-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    body = [{"volume": {"size": 1, "name": n, "availability_zone": "gamma"}} for n in names]
    ids = [as_member(services, "POST", "/volumes", b)["volume"]["id"] for b in body]
    try:
        assert wait_until(lambda: all(admin.get_volume(i)["status"] == "available" for i in ids), 120, 0.5)
        for microversion in ("3.0", "3.33", "3.60"):
            listed = as_member(services, "GET", f"/volumes?name={names[0]}", microversion=microversion)["volumes"]
            assert [v["id"] for v in listed] == ids[:1], (microversion, listed)
    finally:
        for vid in ids:
            admin.request("DELETE", f"/volumes/{vid}")


def test_a_members_volume_without_zone_or_type_lands_on_ceph_in_the_default_zone(services, admin):
    vid = as_member(services, "POST", "/volumes", {"volume": {"size": 1, "name": "cloud-no-zone"}})["volume"]["id"]
    try:
        made = wait_status(admin, vid, "available", timeout=120)
        assert (made["availability_zone"], made["volume_type"]) == (DEFAULT_ZONE, DEFAULT_TYPE)
        assert backend_of(made["os-vol-host-attr:host"]) in CEPH_POOLS, made
    finally:
        admin.request("DELETE", f"/volumes/{vid}")


def test_a_volume_whose_type_pins_its_backend_is_refused_a_move_elsewhere_before_anything_changes(admin):
    vid = admin.request("POST", "/volumes", {"volume": {"size": 1, "volume_type": "beta"}})["volume"]["id"]
    try:
        made = wait_status(admin, vid, "available", timeout=120)
        assert (backend_of(made["os-vol-host-attr:host"]), made["availability_zone"]) == ("beta", "beta")
        conf = {"volume_id": vid, "dest_host": "lab@alpha#pool1"}
        with pytest.raises(MigrationRefused, match="its volume type beta pins backend beta, the destination is alpha"):
            validation.validate_and_lock(conf, "run-pinned", admin)
        after = admin.get_volume(vid)
        assert (after["status"], after["migration_status"], after["os-vol-host-attr:host"]) == (
            "available", None, made["os-vol-host-attr:host"])  # fmt: skip
    finally:
        admin.request("DELETE", f"/volumes/{vid}")
