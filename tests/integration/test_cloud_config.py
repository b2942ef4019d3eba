"""The lab's Cinder configured as a cloud is (issue 24, item 2): Cinder's own ``resource_filters.json`` is
installed, so a member's listing filtered by name is filtered at the oldest microversion and at a recent one
(without it, unfiltered below 3.33 and refused from 3.33 on)."""

from __future__ import annotations

import json
import uuid

import pytest

from lab.env import HOST
from lab.localhttp import http_call
from lab.procutil import wait_until

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
