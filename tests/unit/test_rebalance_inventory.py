"""What Cinder answers (pools, services, volumes, snapshots, types) read as the planner's data, on canned JSON."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from include.backends.base import GiB
from include.cinder_plugin.names import ASYNC_TARGET_CAPABILITY, ASYNC_TARGET_SOURCES, RESOURCE
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError
from include.migration.inventory import (
    UNKNOWN_POOL,
    Cloud,
    InFlight,
    in_flight_from,
    pinned_backends,
    pools_from,
    read_cloud,
    volumes_and_locks,
    volumes_from,
)
from include.migration.planner import PoolState, VolumeState


def pool_json(name, total, free, **caps):
    return {"name": name, "capabilities": {"total_capacity_gb": total, "free_capacity_gb": free, **caps}}


def service(host, status="enabled", state="up"):
    return {"binary": "cinder-volume", "host": host, "status": status, "state": state}


def volume_json(vid, size, host, **kw):
    return {
        "id": vid,
        "size": size,
        "os-vol-host-attr:host": host,
        "status": "available",
        "migration_status": None,
        "attachments": [],
        **kw,
    }


LOCK = "_lock"  # the test's own key: the lock that GET /os-async-migration lists for the volume


def lock(source, dest, owner="rebalance__x"):
    return {LOCK: {"source_host": source, "dest_host": dest, "owner": owner}}


def locks_of(volumes):
    """What ``CinderApi.migration_locks`` answers for these volumes."""
    return {v["id"]: {"volume_id": v["id"], **v[LOCK]} for v in volumes if LOCK in v}


SERVICES = [service("lab@alpha"), service("lab@beta")]


# ---- pools ------------------------------------------------------------------------


def test_capacities_in_gib_become_bytes():
    [p] = pools_from(
        [pool_json("lab@alpha#pool1", 100.5, 20.25, provisioned_capacity_gb=90, max_over_subscription_ratio=2.5)],
        SERVICES,
    )
    assert p == PoolState(
        name="lab@alpha#pool1",
        total_bytes=int(100.5 * GiB),
        free_bytes=int(20.25 * GiB),
        provisioned_bytes=90 * GiB,
        max_over_subscription_ratio=2.5,
        up=True,
        takeover=False,
        volume_backend_name=None,
    )


def test_allocated_capacity_stands_in_for_provisioned_and_free_never_exceeds_total():
    [p] = pools_from([pool_json("lab@alpha#pool1", 10, 50, allocated_capacity_gb=4)], SERVICES)
    assert p.provisioned_bytes == 4 * GiB
    assert p.free_bytes == p.total_bytes == 10 * GiB


@pytest.mark.parametrize("total", ["infinite", "unknown", None, 0])
def test_pools_without_a_finite_capacity_are_dropped(total):
    pools = pools_from([pool_json("lab@alpha#pool1", total, "infinite"), pool_json("lab@beta#pool1", 10, 5)], SERVICES)
    assert [p.name for p in pools] == ["lab@beta#pool1"]


@pytest.mark.parametrize(
    ("status", "state", "up"),
    [("enabled", "up", True), ("disabled", "up", False), ("enabled", "down", False), ("disabled", "down", False)],
)
def test_a_pool_is_up_when_its_backend_service_is_enabled_and_up(status, state, up):
    pools = pools_from(
        [pool_json("lab@alpha#pool1", 10, 5), pool_json("lab@alpha#pool2", 10, 5), pool_json("lab@beta#pool1", 10, 5)],
        [service("lab@alpha", status, state), service("lab@beta")],
    )
    assert {p.name: p.up for p in pools} == {"lab@alpha#pool1": up, "lab@alpha#pool2": up, "lab@beta#pool1": True}


def test_a_pool_without_a_volume_service_is_down():
    [p] = pools_from([pool_json("lab@gamma#pool1", 10, 5)], SERVICES)
    assert not p.up


def test_the_async_target_capability_means_takeover_and_the_backend_name_is_kept():
    pools = pools_from(
        [
            pool_json("lab@alpha#pool1", 10, 5, **{ASYNC_TARGET_CAPABILITY: True, "volume_backend_name": "fast"}),
            pool_json("lab@beta#pool1", 10, 5, **{ASYNC_TARGET_CAPABILITY: False}),
        ],
        SERVICES,
    )
    assert [(p.takeover, p.volume_backend_name) for p in pools] == [(True, "fast"), (False, None)]
    assert pools[0].serves("fast") and not pools[0].serves("alpha")


@pytest.mark.parametrize(("reported", "ratio"), [("20.0", 20.0), (1.5, 1.5), ("auto", 1.0), (None, 1.0), ("0", 1.0)])
def test_the_over_subscription_ratio_as_drivers_report_it(reported, ratio):
    # drivers pass cinder.conf's max_over_subscription_ratio on as it is: a string, possibly "auto"
    [p] = pools_from([pool_json("lab@alpha#pool1", 10, 5, max_over_subscription_ratio=reported)], SERVICES)
    assert p.max_over_subscription_ratio == ratio


# ---- volume types -----------------------------------------------------------------


def test_types_that_pin_a_backend_by_id_and_by_name():
    pins = pinned_backends(
        [
            {"id": "t-1", "name": "gold", "extra_specs": {"volume_backend_name": "alpha"}},
            {"id": "t-2", "name": "silver", "extra_specs": {"other": "x"}},
            {"id": "t-3", "name": "bronze", "extra_specs": None},
            {"id": "t-4", "name": "lead"},
        ]
    )
    assert pins == {"t-1": "alpha", "gold": "alpha"}


# ---- volumes ----------------------------------------------------------------------


def test_a_volume_read_as_the_planner_sees_it():
    [v] = volumes_from(
        [
            volume_json(
                "v1",
                3,
                "lab@alpha#pool1",
                volume_type="gold",
                group_id="g1",
                attachments=[{"server_id": "s1"}, {"server_id": "s2"}],
                status="in-use",
            )
        ],
        {"v1"},
        {"gold": "alpha"},
        {},
    )
    assert v == VolumeState(
        id="v1",
        size_bytes=3 * GiB,
        pool="lab@alpha#pool1",
        status="in-use",
        volume_type="gold",
        pinned_backend="alpha",
        has_snapshots=True,
        group_id="g1",
        migration_status=None,
        migration_dest=None,
        attachments=2,
    )
    assert not v.migrating


def test_the_type_pins_by_id_first_and_a_consistency_group_counts_as_a_group():
    [by_id, by_name, free] = volumes_from(
        [
            volume_json("v1", 1, "lab@alpha#pool1", volume_type="gold", volume_type_id="t-1"),
            volume_json("v2", 1, "lab@alpha#pool1", volume_type="gold", consistencygroup_id="cg"),
            volume_json("v3", 1, "lab@alpha#pool1", volume_type="plain"),
        ],
        set(),
        {"t-1": "alpha", "gold": "alpha"},
        {},
    )
    assert (by_id.pinned_backend, by_name.pinned_backend, free.pinned_backend) == ("alpha", "alpha", None)
    assert (by_id.group_id, by_name.group_id) == (None, "cg")
    assert not any(v.has_snapshots for v in (by_id, by_name, free))


def test_a_migrating_volume_counts_on_its_lock_source_and_goes_to_the_lock_host():
    # once attachable, Cinder's host is already the destination: the lock still names the source
    volume = volume_json(
        "v1", 2, "lab@beta#pool1", migration_status="migrating_attachable", **lock("lab@alpha#pool1", "lab@beta#pool1")
    )
    [v] = volumes_from([volume], set(), {}, locks_of([volume]))
    assert v.migrating
    assert (v.pool, v.migration_dest, v.migration_status) == (
        "lab@alpha#pool1",
        "lab@beta#pool1",
        "migrating_attachable",
    )


def test_a_settled_volume_has_no_destination():
    for status in (None, "", "success", "error"):
        [v] = volumes_from([volume_json("v1", 1, "lab@alpha#pool1", migration_status=status)], set(), {}, {})
        assert not v.migrating and v.migration_dest is None


def test_a_volume_without_size_or_host():
    [v] = volumes_from([{"id": "v1"}], set(), {}, {})
    assert (v.size_bytes, v.pool, v.status, v.attachments) == (0, "", "", 0)


# ---- migrations in flight ---------------------------------------------------------


def test_only_migrating_volumes_are_in_flight_with_the_locks_pools_and_owner():
    volumes = [
        volume_json("settled", 1, "lab@alpha#pool1"),
        volume_json("done", 1, "lab@beta#pool1", migration_status="success"),
        volume_json("failed", 1, "lab@alpha#pool1", migration_status="error"),
        volume_json("blank", 1, "lab@alpha#pool1", migration_status=""),
        volume_json(
            "ours",
            1,
            "lab@alpha#pool1",
            migration_status="starting",
            **lock("lab@alpha#pool1", "lab@beta#pool1", owner="rebalance__ours"),
        ),
        volume_json(
            "attachable",
            1,
            "lab@beta#pool1",
            migration_status="migrating_attachable",
            **lock("lab@alpha#pool2", "lab@beta#pool1", owner="operator"),
        ),
    ]
    assert in_flight_from(volumes, locks_of(volumes)) == [
        InFlight("ours", "lab@alpha#pool1", "lab@beta#pool1", "rebalance__ours", "starting"),
        InFlight("attachable", "lab@alpha#pool2", "lab@beta#pool1", "operator", "migrating_attachable"),
    ]


def test_cinder_own_migration_counts_once_on_the_volume_not_on_its_temporary_target():
    volumes = [
        volume_json("v1", 1, "lab@alpha#pool1", migration_status="migrating"),
        volume_json("t1", 1, "lab@beta#pool1", migration_status="target:v1"),
        volume_json("v2", 1, "lab@alpha#pool1", migration_status="deleting"),
    ]
    assert [f.volume_id for f in in_flight_from(volumes, {})] == ["v1"]


def test_a_migration_without_our_lock_counts_on_its_current_host_to_an_unknown_pool():
    # Cinder's own os-migrate_volume: no lock of the extension
    [f] = in_flight_from([volume_json("v1", 1, "lab@alpha#pool1", migration_status="migrating")], {})
    assert f == InFlight("v1", "lab@alpha#pool1", UNKNOWN_POOL, None, "migrating")
    [f] = in_flight_from([{"id": "v2", "migration_status": "starting"}], {})
    assert (f.source, f.destination) == (UNKNOWN_POOL, UNKNOWN_POOL)


# ---- read_cloud through a CinderApi ------------------------------------------------


class CannedCinder(CinderApi):
    """A CinderApi whose ``request`` answers canned JSON by path, paging the listings by limit and marker."""

    def __init__(self, pools=(), services=(), volumes=(), snapshots=(), types=()) -> None:
        self.pools, self.services = list(pools), list(services)
        self.listings = {"volumes": sorted(volumes, key=lambda v: v["id"]), "snapshots": list(snapshots)}
        self.types = list(types)
        self.paths: list[str] = []

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert method == "GET" and body is None
        self.paths.append(path)
        if path.startswith("/scheduler-stats/get_pools"):
            return {"pools": self.pools}
        if path.startswith("/os-services"):
            return {"services": self.services}
        if path.startswith("/types"):
            return {"volume_types": self.types}
        if path == f"/{RESOURCE}":
            return {"async_migrations": list(locks_of(self.listings["volumes"]).values())}
        for kind, items in self.listings.items():
            if path.startswith(f"/{kind}/detail"):
                query = parse_qs(urlsplit(path).query)
                limit = int(query["limit"][0])
                after = query.get("marker", [None])[0]
                start = 0 if after is None else [i["id"] for i in items].index(after) + 1
                return {kind: items[start : start + limit]}
        raise CinderError(f"no canned answer for {path}", 404)


class LocksChanging(CannedCinder):
    """The locks' answers in turn, one per read: migrations that begin and end while the volumes are listed."""

    def __init__(self, lock_reads, **kw) -> None:
        super().__init__(**kw)
        self.lock_reads = list(lock_reads)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if path == f"/{RESOURCE}":
            self.paths.append(path)
            return {"async_migrations": self.lock_reads.pop(0)}
        return super().request(method, path, body)


def test_a_migration_that_begins_or_ends_while_the_volumes_are_listed_keeps_its_lock():
    ending = {"volume_id": "v1", "source_host": "lab@beta#pool1", "dest_host": "lab@alpha#pool1", "owner": "a"}
    beginning = {"volume_id": "v2", "source_host": "lab@beta#pool2", "dest_host": "lab@alpha#pool2", "owner": "b"}
    cinder = LocksChanging(
        [[ending], [beginning]],  # v1's lock is released, and v2's taken, while the volumes are read
        volumes=[
            volume_json("v1", 1, "lab@alpha#pool1", migration_status="migrating_attachable"),
            volume_json("v2", 1, "lab@beta#pool2", migration_status="starting"),
        ],
    )
    flights = in_flight_from(*volumes_and_locks(cinder))
    assert {(f.volume_id, f.source, f.destination) for f in flights} == {
        ("v1", "lab@beta#pool1", "lab@alpha#pool1"),
        ("v2", "lab@beta#pool2", "lab@alpha#pool2"),
    }
    assert [p.partition("?")[0] for p in cinder.paths] == [f"/{RESOURCE}", "/volumes/detail", f"/{RESOURCE}"]


def test_read_cloud_puts_the_answers_together():
    cinder = CannedCinder(
        pools=[
            pool_json("lab@alpha#pool1", 100, 10, volume_backend_name="alpha"),
            pool_json("lab@beta#pool1", 100, 90, **{ASYNC_TARGET_CAPABILITY: True}),
            pool_json("lab@gamma#pool1", "infinite", "infinite"),
        ],
        services=[service("lab@alpha"), service("lab@beta", state="down")],
        volumes=[
            volume_json("v1", 5, "lab@alpha#pool1", volume_type="gold"),
            volume_json("v2", 7, "lab@alpha#pool1"),
            volume_json(
                "v3",
                2,
                "lab@beta#pool1",
                migration_status="migrating_attachable",
                **lock("lab@alpha#pool1", "lab@beta#pool1"),
            ),
        ],
        snapshots=[{"id": "s1", "volume_id": "v2"}, {"id": "s2", "volume_id": "v2"}],
        types=[{"id": "t-1", "name": "gold", "extra_specs": {"volume_backend_name": "alpha"}}],
    )
    cloud = read_cloud(cinder)
    assert isinstance(cloud, Cloud)
    assert cloud.pool_names == ["lab@alpha#pool1", "lab@beta#pool1"]
    assert {p.name: (p.up, p.takeover) for p in cloud.pools} == {
        "lab@alpha#pool1": (True, False),
        "lab@beta#pool1": (False, True),
    }
    assert [v.id for v in cloud.volumes] == ["v1", "v2", "v3"]
    assert cloud.volume("v1").pinned_backend == "alpha"
    assert cloud.volume("v2").has_snapshots and not cloud.volume("v1").has_snapshots
    assert cloud.volume("v3").pool == "lab@alpha#pool1"
    assert cloud.volume("gone") is None
    assert cloud.in_flight == (
        InFlight("v3", "lab@alpha#pool1", "lab@beta#pool1", "rebalance__x", "migrating_attachable"),
    )
    assert {p.partition("?")[0] for p in cinder.paths} == {
        "/scheduler-stats/get_pools",
        "/os-services",
        "/volumes/detail",
        f"/{RESOURCE}",
        "/snapshots/detail",
        "/types",
    }
    # the volumes are read once: in flight and states come from the same answer
    assert sum(p.startswith("/volumes/detail") for p in cinder.paths) == 1


def test_list_volumes_pages_with_limit_and_marker():
    fake = CannedCinder(volumes=[volume_json(f"v{i}", 1, "lab@alpha#pool1") for i in (1, 2, 3)])
    assert [v["id"] for v in fake.list_volumes(page=2)] == ["v1", "v2", "v3"]
    first, second = fake.paths
    assert "limit=2" in first and "marker=" not in first
    assert "limit=2" in second and second.endswith("&marker=v2")
    assert "all_tenants=1" in first


def test_a_listing_that_fills_its_last_page_asks_once_more():
    fake = CannedCinder(volumes=[volume_json(f"v{i}", 1, "lab@alpha#pool1") for i in (1, 2, 3, 4)])
    assert len(fake.list_volumes(page=2)) == 4
    assert [p.rpartition("marker=")[2] if "marker=" in p else None for p in fake.paths] == [None, "v2", "v4"]


def test_a_listing_longer_than_max_pages_stops_with_an_error():
    fake = CannedCinder(volumes=[volume_json(f"v{i}", 1, "lab@alpha#pool1") for i in range(5)])
    with pytest.raises(CinderError, match="more than 4 volumes"):
        fake.list_volumes(page=2, max_pages=2)


def test_a_pool_says_its_protocol_and_the_sources_it_takes_over():
    caps = {"storage_protocol": "ceph", ASYNC_TARGET_CAPABILITY: True, ASYNC_TARGET_SOURCES: ["rbd"]}
    [p] = pools_from([pool_json("lab@ceph-ssd#ceph-ssd", 10, 5, **caps)], [service("lab@ceph-ssd")])
    assert (p.protocol, p.takeover, p.takeover_from) == ("rbd", True, ("rbd",))
